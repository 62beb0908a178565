"""The Azure credential and Foundry project endpoint, shared by the backends that
speak to Azure (azure_agents, foundry, and openai on an Azure endpoint).

Only azure-core is imported here, so a backend that needs none of the Azure AI
SDKs does not load them by importing this module.
"""

import time
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken
from django.conf import settings

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def project_endpoint() -> str:
    """AZURE_AI_PROJECT_ENDPOINT, or the one the earlier service derived from
    AZURE_AI_ENDPOINT (…cognitiveservices.azure.com) and AZURE_AI_PROJECT_NAME."""
    if settings.AZURE_AI_PROJECT_ENDPOINT:
        return settings.AZURE_AI_PROJECT_ENDPOINT.rstrip("/")
    if settings.AZURE_AI_ENDPOINT and settings.AZURE_AI_PROJECT_NAME:
        base = settings.AZURE_AI_ENDPOINT.rstrip("/").replace(
            ".cognitiveservices.azure.com", ".services.ai.azure.com"
        )
        return f"{base}/api/projects/{settings.AZURE_AI_PROJECT_NAME}"
    return ""


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOOPBACK_HOSTS


def project_endpoint_problems(endpoint: str) -> list[str]:
    """What is wrong with a Foundry project endpoint and the credential setting:
    a dev token only for loopback (the emulator), and DefaultAzureCredential never
    for it (its managed-identity probe must not run off Azure)."""
    if not endpoint:
        return [
            "set AZURE_AI_PROJECT_ENDPOINT (or AZURE_AI_ENDPOINT and "
            "AZURE_AI_PROJECT_NAME)"
        ]
    problems = []
    loopback = is_loopback(endpoint)
    if settings.AZURE_AI_CREDENTIAL == "dev" and not loopback:
        problems.append(
            "AZURE_AI_CREDENTIAL=dev is only accepted for a loopback endpoint"
        )
    if settings.AZURE_AI_CREDENTIAL == "default" and loopback:
        problems.append(
            "a loopback endpoint (the emulator) needs AZURE_AI_CREDENTIAL=dev"
        )
    if endpoint.startswith("http://") and not loopback:
        problems.append("AZURE_AI_PROJECT_ENDPOINT must use https")
    return problems


class DevTokenCredential:
    """A static bearer token, accepted only for loopback endpoints (the emulator)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("dev-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> "DevTokenCredential":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def credential() -> Any:
    """The credential AZURE_AI_CREDENTIAL names: a static dev token, or
    DefaultAzureCredential (the managed identity chosen by AZURE_CLIENT_ID)."""
    if settings.AZURE_AI_CREDENTIAL == "dev":
        return DevTokenCredential()
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(
        managed_identity_client_id=settings.AZURE_CLIENT_ID or None
    )
