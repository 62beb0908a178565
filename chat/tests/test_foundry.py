"""The foundry backend: azure-ai-projects 2.x and the openai client over loopback HTTP
against the emulator's Responses API, driven through POST /api/chat. What it shares
with the other backends (faults, time limits, stopping, follow-ups, lost and deleted
conversations, citations, a missing agent, credential checks) is in
test_backend_contract.py; here is what the Responses API does its own way:
conversations, agent references and their configuration."""

import pytest
from django.test import AsyncClient

from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator
from testing.replies import astored_reply
from testing.sse import reply_of

pytestmark = pytest.mark.django_db(transaction=True)


def operations(emulator: AgentsEmulator) -> list[str | None]:
    return [r.operation for r in emulator.requests]


async def test_it_makes_a_conversation_then_a_response_naming_the_agent(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    # The reply itself, as every backend streams it, is the contract's.
    data = await reply_of(async_client, "Say hello")
    assert data[0]["backend"] == "foundry"
    assert data[0]["agent"] == FOUNDRY_AGENT_NAME
    assert data[-1]["usage"]["total_tokens"] == data[-1]["usage"]["prompt_tokens"] + 4
    assert (await astored_reply()).upstream_run_id.startswith("resp_")
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


async def test_it_cites_by_position_with_the_file_name_for_title(
    async_client: AsyncClient, foundry: AgentsEmulator
) -> None:
    foundry.configure(annotations=True)
    data = await reply_of(async_client)
    # Unlike classic runs, no citation marker is left in the text.
    assert data[-1]["full_response"] == "You said: Say hello"
    file = next(d for d in data if d.get("kind") == "file_citation")
    assert file["text"] is None
    assert file["title"] == "agents-overview.md"
