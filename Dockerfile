# syntax=docker/dockerfile:1
# chatsite: one uvicorn/Django ASGI container for Azure Container Apps (docs/deploy.md).
# The base tag pins Python 3.13 on Debian 13; pin a digest (@sha256:...) as well when a
# bot keeps it current.

# --- build: dependencies into a venv, static files collected ---------------------------
FROM python:3.13-slim-trixie AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

WORKDIR /app
COPY . .

# Settings refuse to load without a secret key when debug is off. This throwaway value
# exists only in this RUN of the build stage; the runtime image never sees it.
RUN DJANGO_DEBUG=0 DJANGO_SECRET_KEY=collectstatic-build-only-not-a-secret \
    python manage.py collectstatic --noinput -v 0 \
 && rm -rf var \
 && python -m compileall -q .

# --- runtime: the venv, the code and the collected static files, run as a non-root user --
FROM python:3.13-slim-trixie

# TRUSTED_PROXY_HOPS: the Container Apps ingress appends the client's address to
# X-Forwarded-For; the app takes that one, not what the client wrote before it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_DEBUG=0 \
    WEB_CONCURRENCY=1 \
    TRUSTED_PROXY_HOPS=1

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# Code stays root-owned and read-only to the app; var/ is the only writable place
# (the SQLite fallback lives there when DATABASE_URL is unset).
RUN install -d -o app -g app /app/var

USER 10001:10001
EXPOSE 8000

# Docker and local `docker run` only: Container Apps ignores HEALTHCHECK and uses the
# probes in infra/modules/web.bicep. Host: localhost is in every DJANGO_ALLOWED_HOSTS.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:8000/api/health', headers={'Host': 'localhost'}), timeout=4)"]

# Exec form: uvicorn is PID 1 and receives SIGTERM itself. uvicorn reads the worker
# count from $WEB_CONCURRENCY (1 above; the Bicep sets it). On SIGTERM open replies
# may finish for CHAT_DRAIN_SECONDS (60 in Azure) before the app ends them cleanly;
# 90 s is the backstop after which uvicorn cancels what is left and the lifespan
# handler stores it, all inside the 120 s Container Apps termination grace period.
# The client's address comes from the app (TRUSTED_PROXY_HOPS), not from uvicorn's
# proxy headers, which take the leftmost X-Forwarded-For entry: the client's own.
# chatsite/serving.py: the loop is uvloop accepting every waiting connection at
# once, with an accept queue of 4,096 (a burst of 1,000 connects is accepted
# within 0.12 s, bench/README.md); the HTTP protocol is httptools bounding the
# request head at 64 KiB (above Envoy's 60 KiB default). No `server: uvicorn` header.
CMD ["uvicorn", "chatsite.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--loop", "chatsite.serving:new_event_loop", "--backlog", "4096", "--http", "chatsite.serving:HttpToolsProtocol", "--no-proxy-headers", "--no-server-header", "--timeout-graceful-shutdown", "90", "--no-access-log"]
