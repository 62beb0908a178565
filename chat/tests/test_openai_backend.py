"""The openai backend: the openai client's chat completions over loopback HTTP
against the emulator, driven through POST /api/chat. The service keeps no state,
so the history goes with every request. What it shares with the other backends
(faults, time limits, stopping) is in test_backend_contract.py."""

import pytest
from django.test import AsyncClient

from emulator import AgentsEmulator
from testing.replies import astored_reply
from testing.sse import reply_of

pytestmark = pytest.mark.django_db(transaction=True)


def sent_messages(emulator: AgentsEmulator) -> list[dict[str, str]]:
    return emulator.requests[-1].body["messages"]


async def test_it_streams_the_models_reply(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    data = await reply_of(async_client, "Say hello")
    assert data[0]["type"] == "metadata"
    assert (data[0]["backend"], data[0]["agent"]) == ("openai", "emulated-model")
    assert data[0]["thread_id"].startswith("oa_")
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == "You said: Say hello"
    assert data[-1]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
    }
    reply = await astored_reply()
    assert (reply.status, reply.content) == ("complete", "You said: Say hello")
    assert reply.upstream_run_id.startswith("chatcmpl-")
    [request] = openai_backend.requests
    assert (request.path, request.operation) == (
        "/v1/chat/completions",
        "chat.completions.create",
    )
    assert request.headers["Authorization"] == "Bearer test-key"
    assert request.body == {
        "messages": [{"role": "user", "content": "Say hello"}],
        "model": "emulated-model",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_it_sends_the_history_with_each_message(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    settings.OPENAI_SYSTEM_PROMPT = "Be brief."
    first = await reply_of(async_client, "one")
    second = await reply_of(
        async_client, "two", conversation_id=first[0]["conversation_id"]
    )
    assert second[0]["thread_id"] == first[0]["thread_id"]
    assert second[-1]["full_response"] == "You said: two"
    assert sent_messages(openai_backend) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "You said: one"},
        {"role": "user", "content": "two"},
    ]


async def test_it_keeps_the_newest_turns_within_the_budget(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    conversation_id = (await reply_of(async_client, "a" * 40))[0]["conversation_id"]
    for message in ("b" * 40, "c" * 40):
        await reply_of(async_client, message, conversation_id=conversation_id)
    # Room for the new message and the last exchange, but not a turn more.
    settings.OPENAI_HISTORY_CHARS = 4 + 40 + len("You said: " + "c" * 40) + 10
    await reply_of(async_client, "next", conversation_id=conversation_id)
    assert sent_messages(openai_backend) == [
        {"role": "user", "content": "c" * 40},
        {"role": "assistant", "content": "You said: " + "c" * 40},
        {"role": "user", "content": "next"},
    ]
    # A budget that cuts between a question and its answer drops the answer too:
    # the conversation sent starts with the user.
    settings.OPENAI_HISTORY_CHARS = 4 + len("You said: next") + 3
    await reply_of(async_client, "last", conversation_id=conversation_id)
    assert sent_messages(openai_backend) == [{"role": "user", "content": "last"}]


async def test_it_leaves_empty_replies_out_of_the_history(
    async_client: AsyncClient, openai_backend: AgentsEmulator
) -> None:
    openai_backend.push(fault="http_500_json")
    first = await reply_of(async_client, "one")
    assert first[-1]["code"] == "upstream_unavailable"
    await reply_of(async_client, "two", conversation_id=first[0]["conversation_id"])
    assert sent_messages(openai_backend) == [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]


async def test_it_takes_azure_openais_path(
    async_client: AsyncClient, openai_backend: AgentsEmulator, settings
) -> None:
    settings.OPENAI_BASE_URL = f"{openai_backend.base_url}/openai/v1"
    data = await reply_of(async_client)
    assert data[-1]["full_response"] == "You said: Say hello"
    assert openai_backend.requests[0].path == "/openai/v1/chat/completions"


@pytest.mark.parametrize(
    ("key", "credential", "authorization"),
    [
        # The emulator standing in for Azure OpenAI: an Entra token provider.
        ("", "dev", "Bearer dev-token"),
        # A local server without authentication.
        ("", "default", "Bearer none"),
        ("sk-local", "dev", "Bearer sk-local"),
    ],
)
async def test_it_authenticates_with_a_key_a_token_or_nothing(
    async_client: AsyncClient,
    openai_backend: AgentsEmulator,
    settings,
    key: str,
    credential: str,
    authorization: str,
) -> None:
    settings.OPENAI_API_KEY = key
    settings.AZURE_AI_CREDENTIAL = credential
    assert (await reply_of(async_client))[-1]["type"] == "done"
    assert openai_backend.requests[0].headers["Authorization"] == authorization


@pytest.mark.parametrize(
    ("url", "key", "credential", "problem"),
    [
        ("", "", "default", "set OPENAI_BASE_URL"),
        ("ftp://127.0.0.1/v1", "", "default", "http(s)"),
        ("http://models.example.com/v1", "sk-x", "default", "https"),
        ("http://x.openai.azure.com/openai/v1", "", "default", "https"),
        ("https://x.openai.azure.com/openai/v1", "", "dev", "loopback"),
    ],
)
def test_it_refuses_unsafe_setups(
    settings, url: str, key: str, credential: str, problem: str
) -> None:
    from chat.backends.openai_compat import OpenAIBackend

    settings.OPENAI_BASE_URL = url
    settings.OPENAI_API_KEY = key
    settings.OPENAI_MODEL = "gpt-4o"
    settings.AZURE_AI_CREDENTIAL = credential
    problems = OpenAIBackend().configuration_problems()
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    "url",
    ["http://vllm:8000/v1", "http://127.0.0.1:11434/v1", "https://api.openai.com/v1"],
)
def test_it_accepts_plain_http_to_servers_without_a_key(settings, url: str) -> None:
    from chat.backends.openai_compat import OpenAIBackend

    settings.OPENAI_BASE_URL = url
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_MODEL = "llama3.2"
    settings.AZURE_AI_CREDENTIAL = "default"
    assert OpenAIBackend().configuration_problems() == []


def test_it_uses_an_entra_token_for_azure_endpoints_without_a_key(settings) -> None:
    from chat.backends.openai_compat import OpenAIBackend

    settings.OPENAI_BASE_URL = "https://x.openai.azure.com/openai/v1"
    settings.OPENAI_API_KEY = ""
    assert OpenAIBackend()._uses_entra()
    settings.OPENAI_API_KEY = "azure-key"
    assert not OpenAIBackend()._uses_entra()
