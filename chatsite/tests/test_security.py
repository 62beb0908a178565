"""Deployment security: Django's deploy checks, proxies, CORS, no debug endpoints."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import AsyncClient, Client

from chatsite.checks import check_security_middleware

BASE_DIR = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "DJANGO_SSL_REDIRECT": "1",
    "DJANGO_HSTS_SECONDS": "31536000",
    "DATABASE_URL": "postgres://app:secret@db.example.com:5432/chatsite",
}


def test_it_passes_djangos_deploy_checks_with_production_settings() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env={**os.environ, **PRODUCTION_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_it_warns_when_a_security_middleware_is_missing(settings) -> None:
    settings.MIDDLEWARE = [
        m for m in settings.MIDDLEWARE if not m.endswith(".CsrfViewMiddleware")
    ]
    assert [w.id for w in check_security_middleware()] == ["chatsite.W003"]


def test_our_middleware_satisfies_the_check(settings) -> None:
    assert check_security_middleware() == []


@pytest.mark.django_db
def test_it_has_no_environment_dump(admin_client: Client) -> None:
    # The earlier service exposed /api/debug/env publicly; this one has none.
    for client in (Client(), admin_client):
        response = client.get("/api/debug/env")
        assert response.status_code == 404
        assert b"SECRET" not in response.content


@pytest.mark.django_db
async def test_it_redirects_http_but_trusts_the_proxys_scheme(settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    client = AsyncClient()
    response = await client.get("/api/posts")
    assert response.status_code == 301
    assert response["Location"].startswith("https://")
    response = await client.get("/api/posts", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    # Probes speak plain http to the container.
    assert (await client.get("/api/health")).status_code == 200


async def test_it_answers_cors_preflight_only_for_configured_origins(settings) -> None:
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    client = AsyncClient()
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-csrftoken",
    }
    response = await client.options(
        "/api/chat", headers={"Origin": "https://app.example.com", **preflight}
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "x-csrftoken" in response["Access-Control-Allow-Headers"]
    response = await client.options(
        "/api/chat", headers={"Origin": "https://evil.example.com", **preflight}
    )
    assert "Access-Control-Allow-Origin" not in response


async def test_it_sends_no_cors_headers_by_default() -> None:
    response = await AsyncClient().get(
        "/api/health", headers={"Origin": "https://app.example.com"}
    )
    assert "Access-Control-Allow-Origin" not in response
