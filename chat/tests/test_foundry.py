"""The foundry backend: azure-ai-projects 2.x and the openai client over loopback
HTTP against the emulator's Responses API, driven through POST /api/chat. What it
shares with the other backends (faults, time limits, stopping) is in
test_backend_contract.py; here is what the Responses API does its own way:
conversations, agent references and their configuration."""

import pytest
from django.test import AsyncClient

from chat.models import Conversation
from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator
from testing.replies import astored_reply
from testing.sse import reply_of

pytestmark = pytest.mark.django_db(transaction=True)


def operations(emulator: AgentsEmulator) -> list[str | None]:
    return [r.operation for r in emulator.requests]


async def test_it_streams_the_agents_reply(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    data = await reply_of(async_client, "Say hello")
    assert data[0]["type"] == "metadata"
    assert data[0]["backend"] == "foundry"
    assert data[0]["agent"] == FOUNDRY_AGENT_NAME
    assert data[0]["thread_id"].startswith("conv_")
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == "You said: Say hello"
    assert data[-1]["usage"]["total_tokens"] == data[-1]["usage"]["prompt_tokens"] + 4
    reply = await astored_reply()
    assert (reply.status, reply.content) == ("complete", "You said: Say hello")
    assert reply.upstream_run_id.startswith("resp_")
    assert operations(foundry) == ["conversations.create", "responses.create"]
    create = foundry.requests[1]
    assert create.path == "/api/projects/emulator/openai/v1/responses"
    assert create.headers["Authorization"] == "Bearer dev-token"
    assert create.body == {
        "stream": True,
        "conversation": data[0]["thread_id"],
        "input": "Say hello",
        "agent_reference": {"name": FOUNDRY_AGENT_NAME, "type": "agent_reference"},
    }


async def test_it_names_the_agent_version_when_configured(
    async_client: AsyncClient, foundry: AgentsEmulator, settings
) -> None:
    settings.AZURE_AI_AGENT_VERSION = "1"
    data = await reply_of(async_client)
    assert data[-1]["type"] == "done"
    assert data[0]["agent"] == f"{FOUNDRY_AGENT_NAME} (version 1)"
    reference = foundry.requests[-1].body["agent_reference"]
    assert reference["version"] == "1"


async def test_it_needs_one_upstream_call_per_follow_up(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    before = len(foundry.requests)
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_id"] == first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    calls = foundry.requests[before:]
    assert [r.operation for r in calls] == ["responses.create"]
    assert calls[0].body["input"] == "two"
    conversation = foundry.conversations[first[0]["thread_id"]]
    assert [m.role for m in conversation.messages] == ["user", "assistant"] * 2


async def test_it_passes_citations_through(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    foundry.configure(annotations=True)
    data = await reply_of(async_client)
    citations = [d for d in data if d["type"] == "annotation"]
    assert [c["kind"] for c in citations] == ["url_citation", "file_citation"]
    url, file = citations
    assert url["url"].startswith("https://") and url["title"]
    assert file["file_id"] and file["title"] == "agents-overview.md"
    assert data[-1]["full_response"] == "You said: Say hello"
    reply = await astored_reply()
    assert reply.annotations == [
        {k: v for k, v in c.items() if k != "type"} for c in citations
    ]


async def test_it_starts_a_new_conversation_when_the_old_one_is_gone(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    first = await reply_of(async_client, "one")
    del foundry.conversations[first[0]["thread_id"]]
    second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
    assert second[0]["thread_reset"] is True
    assert second[0]["previous_thread_id"] == first[0]["thread_id"]
    assert second[0]["thread_id"] != first[0]["thread_id"]
    assert second[0]["thread_id"] in foundry.conversations
    assert second[-1]["full_response"] == "You said: two"
    conversation = await Conversation.objects.aget()
    assert conversation.upstream_thread_id == second[0]["thread_id"]


async def test_it_fails_the_run_when_the_agent_does_not_exist(
    async_client: AsyncClient, foundry: AgentsEmulator, settings
) -> None:
    settings.AZURE_AI_AGENT_NAME = "nobody"
    data = await reply_of(async_client)
    assert data[-1]["code"] == "run_failed"
    assert "nobody" in data[-1]["message"]
    # The new conversation is kept, so a retry does not make another.
    conversation = await Conversation.objects.aget()
    assert conversation.upstream_thread_id in foundry.conversations


async def test_it_deletes_the_upstream_conversation_with_the_conversation(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    data = await reply_of(async_client)
    response = await async_client.delete(
        f"/api/conversations/{data[0]['conversation_id']}"
    )
    assert response.status_code == 204
    assert data[0]["thread_id"] not in foundry.conversations
    assert await Conversation.objects.acount() == 0


@pytest.mark.parametrize(
    ("endpoint", "credential", "problem"),
    [
        ("https://x.services.ai.azure.com/api/projects/p", "dev", "loopback"),
        ("http://127.0.0.1:1/api/projects/p", "default", "needs AZURE_AI_CREDENTIAL"),
        ("http://example.com/api/projects/p", "default", "https"),
    ],
)
def test_it_refuses_unsafe_credential_setups(
    settings, endpoint: str, credential: str, problem: str
) -> None:
    from chat.backends.foundry import FoundryBackend

    settings.AZURE_AI_PROJECT_ENDPOINT = endpoint
    settings.AZURE_AI_AGENT_NAME = "my-agent"
    settings.AZURE_AI_AGENT_VERSION = ""
    settings.AZURE_AI_CREDENTIAL = credential
    problems = FoundryBackend().configuration_problems()
    assert any(problem in p for p in problems)
