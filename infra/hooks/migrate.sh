#!/bin/sh
# azd postdeploy hook for the `web` service: run `manage.py migrate` once per deployment.
# Points the migrate job at the image the container app now runs, starts one execution
# and waits for it, so a failed migration fails `azd deploy` / `azd up`.
# Needs the az CLI (logged in) and the outputs azd stored from infra/main.bicep.
set -eu

: "${AZURE_RESOURCE_GROUP:?run through azd, or export the infra outputs}"
: "${SERVICE_WEB_NAME:?}"
: "${AZURE_MIGRATE_JOB_NAME:?}"
timeout_seconds="${MIGRATE_TIMEOUT_SECONDS:-1800}"

image=$(az containerapp show -g "$AZURE_RESOURCE_GROUP" -n "$SERVICE_WEB_NAME" \
  --query "properties.template.containers[0].image" -o tsv)
echo "Migrating with $image"

az containerapp job update -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_MIGRATE_JOB_NAME" \
  --image "$image" --output none
execution=$(az containerapp job start -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_MIGRATE_JOB_NAME" \
  --query name -o tsv)
echo "Started job execution $execution"

waited=0
while :; do
  status=$(az containerapp job execution show -g "$AZURE_RESOURCE_GROUP" \
    -n "$AZURE_MIGRATE_JOB_NAME" --job-execution-name "$execution" \
    --query properties.status -o tsv)
  case "$status" in
    Succeeded)
      echo "Migrations applied."
      exit 0
      ;;
    Failed | Stopped | Degraded)
      echo "Migration job execution $execution ended: $status." >&2
      echo "Its logs: portal > $AZURE_MIGRATE_JOB_NAME > Execution history, or docs/deploy.md, Troubleshooting." >&2
      exit 1
      ;;
  esac
  if [ "$waited" -ge "$timeout_seconds" ]; then
    echo "Migration job execution $execution still $status after ${timeout_seconds}s." >&2
    exit 1
  fi
  sleep 10
  waited=$((waited + 10))
done
