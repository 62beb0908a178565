"""The azure_agents backend: the real SDK over loopback HTTP against the emulator,
driven through POST /api/chat. What it shares with the other backends (faults,
time limits, stopping) is in test_backend_contract.py; here is what the classic
Agents API does its own way: threads, runs and their configuration."""

import pytest
from django.test import AsyncClient

from chat.models import Conversation
from emulator import AgentsEmulator
from testing.replies import astored_reply
from testing.sse import chat, reply_of

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_streams_the_agents_reply(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    data = await reply_of(async_client, "Say hello")
    assert data[0]["type"] == "metadata"
    assert data[0]["backend"] == "azure_agents"
    assert data[0]["thread_id"].startswith("thread_")
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == "You said: Say hello"
    assert data[-1]["usage"]["total_tokens"] > 0
    reply = await astored_reply()
    assert (reply.status, reply.content) == ("complete", "You said: Say hello")
    assert reply.upstream_run_id.startswith("run_")
    auth = azure.requests[0].headers["Authorization"]
    assert auth == "Bearer dev-token"


async def test_it_needs_two_upstream_calls_per_reply(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    before = len(azure.requests)
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_id"] == first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    calls = [r for r in azure.requests[before:] if r.operation != "agents.get"]
    assert [r.operation for r in calls] == ["runs.create"]
    assert calls[0].body["additional_messages"] == [{"role": "user", "content": "two"}]
    thread = azure.threads[first[0]["thread_id"]]
    assert [m.role for m in thread.messages] == ["user", "assistant"] * 2


async def test_it_passes_citations_through(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    azure.configure(annotations=True)
    data = await reply_of(async_client)
    citations = [d for d in data if d["type"] == "annotation"]
    kinds = {c["kind"] for c in citations}
    assert kinds == {"url_citation", "file_citation"}
    url = next(c for c in citations if c["kind"] == "url_citation")
    assert url["url"].startswith("http")
    reply = await astored_reply()
    assert len(reply.annotations) == len(citations)


async def test_it_starts_a_new_thread_when_the_old_one_is_gone(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    azure.push(fault="http_404")
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_reset"] is True
    assert second[0]["previous_thread_id"] == first[0]["thread_id"]
    assert second[0]["thread_id"] != first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    conversation = await Conversation.objects.aget()
    assert conversation.upstream_thread_id == second[0]["thread_id"]


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


async def test_it_deletes_the_upstream_thread_with_the_conversation(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    data = await reply_of(async_client)
    response = await async_client.delete(
        f"/api/conversations/{data[0]['conversation_id']}"
    )
    assert response.status_code == 204
    assert data[0]["thread_id"] not in azure.threads
    assert await Conversation.objects.acount() == 0


@pytest.mark.parametrize(
    ("endpoint", "credential", "problem"),
    [
        ("https://x.services.ai.azure.com/api/projects/p", "dev", "loopback"),
        ("http://127.0.0.1:1/api/projects/p", "default", "needs AZURE_AI_CREDENTIAL"),
        ("http://example.com/api/projects/p", "default", "https"),
    ],
)
async def test_it_refuses_unsafe_credential_setups(
    settings, endpoint: str, credential: str, problem: str
) -> None:
    from chat.backends.azure_agents import AzureAgentsBackend

    settings.AZURE_AI_PROJECT_ENDPOINT = endpoint
    settings.AZURE_AI_AGENT_ID = "asst_x"
    settings.AZURE_AI_CREDENTIAL = credential
    problems = AzureAgentsBackend().configuration_problems()
    assert any(problem in p for p in problems)


def test_it_derives_the_project_endpoint_like_the_old_service(settings) -> None:
    from chat.backends.azure_agents import project_endpoint

    settings.AZURE_AI_PROJECT_ENDPOINT = ""
    settings.AZURE_AI_ENDPOINT = "https://cog-x.cognitiveservices.azure.com/"
    settings.AZURE_AI_PROJECT_NAME = "project-x"
    assert project_endpoint() == (
        "https://cog-x.services.ai.azure.com/api/projects/project-x"
    )
