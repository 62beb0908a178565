"""The azure_agents backend: the real SDK over loopback HTTP against the emulator,
driven through POST /api/chat. What it shares with the other backends (faults, time
limits, stopping, follow-ups, lost and deleted threads, citations, a missing agent,
credential checks) is in test_backend_contract.py; here is what the classic Agents
API does its own way: threads, runs and their configuration."""

import pytest
from django.test import AsyncClient

from emulator import AgentsEmulator
from testing.replies import astored_reply
from testing.sse import chat, reply_of

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_reports_usage_and_the_run_with_the_dev_token(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    # The reply itself, as every backend streams it, is the contract's.
    data = await reply_of(async_client)
    assert data[0]["backend"] == "azure_agents"
    assert data[-1]["usage"]["total_tokens"] > 0
    assert (await astored_reply()).upstream_run_id.startswith("run_")
    assert azure.requests[0].headers["Authorization"] == "Bearer dev-token"


async def test_it_never_sends_a_foreign_thread_upstream(
    azure: AgentsEmulator, django_user_model
) -> None:
    alice, mallory = AsyncClient(), AsyncClient()
    await alice.aforce_login(await django_user_model.objects.acreate_user("alice"))
    await mallory.aforce_login(await django_user_model.objects.acreate_user("mallory"))
    thread_id = (await reply_of(alice))[0]["thread_id"]
    before = len(azure.requests)
    response = await chat(mallory, "steal", thread_id=thread_id)
    assert response.status_code == 404
    assert len(azure.requests) == before


def test_it_derives_the_project_endpoint_like_the_old_service(settings) -> None:
    from chat.backends.azure_agents import project_endpoint

    settings.AZURE_AI_PROJECT_ENDPOINT = ""
    settings.AZURE_AI_ENDPOINT = "https://cog-x.cognitiveservices.azure.com/"
    settings.AZURE_AI_PROJECT_NAME = "project-x"
    assert project_endpoint() == (
        "https://cog-x.services.ai.azure.com/api/projects/project-x"
    )
