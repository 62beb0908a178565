"""OpenTelemetry traces and metrics to Azure Monitor, when
APPLICATIONINSIGHTS_CONNECTION_STRING is set; otherwise nothing is loaded.

Django's own instrumentation is a sync middleware (a thread hop per request), so the
ASGI middleware wraps the application instead, without per-message send/receive
spans: a streamed reply is one request span, with the agent call inside it as a
`chat.reply` span and the SDK's HTTP calls below that.
"""

import os
from typing import Any

from django.conf import settings


def configure(application: Any) -> Any:
    """Returns `application`, wrapped for tracing when telemetry is configured."""
    connection_string = settings.APPLICATIONINSIGHTS_CONNECTION_STRING
    if not connection_string:
        return application
    # Only detectors that read environment variables: the VM detector would probe
    # the instance metadata endpoint, which means nothing in Container Apps.
    os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_app_service")
    os.environ.setdefault("OTEL_SERVICE_NAME", "chatsite")
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    configure_azure_monitor(
        connection_string=connection_string,
        instrumentation_options={
            "django": {"enabled": False},
            "flask": {"enabled": False},
            "fastapi": {"enabled": False},
            "psycopg2": {"enabled": False},
        },
        enable_live_metrics=False,
    )
    return OpenTelemetryMiddleware(application, exclude_spans=["receive", "send"])
