"""Function tools run by the site (chat/tools.py): the agent asks, the producer
runs them and the same reply goes on, through the real SDKs against the emulator:
a classic run's requires_action (azure_agents), a response's function_call items
answered by a follow-up response (foundry)."""

import asyncio
import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from chat.models import Owner
from chat.tools import Tool, ToolError
from emulator import AgentsEmulator
from posts.models import Post
from testing.replies import astored_reply
from testing.sse import chat, chunks_text, data_frames, parse_sse, reply_of
from testing.upstream import answer_through
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

HERE = "chat.tests.test_tools"
callers: list[Owner] = []
meeting: dict[str, asyncio.Barrier] = {}


async def add(a: int, b: int, caller: Owner) -> dict[str, int]:
    """Adds two numbers."""
    callers.append(caller)
    return {"sum": a + b}


def shout(text: str, times: int = 1) -> str:
    """Says it louder (a sync tool)."""
    return " ".join([text.upper()] * times)


async def meet(name: str) -> dict[str, str]:
    """Returns once the other call to it has started too."""
    await meeting["barrier"].wait()
    return {"met": name}


async def forever() -> None:
    """Never answers."""
    await asyncio.Event().wait()


def broken() -> None:
    """Fails with something the agent must not see."""
    raise RuntimeError("the database password is hunter2")


def refusing() -> None:
    """Fails with a message meant for the agent."""
    raise ToolError("only signed-in users may ask this")


@pytest.fixture(params=["azure_agents", "foundry"])
def agent(
    request: pytest.FixtureRequest, settings: Settings, emulator: AgentsEmulator
) -> AgentsEmulator:
    answer_through(settings, request.param, emulator)
    names = ("add", "shout", "meet", "forever", "broken", "refusing")
    settings.CHAT_TOOLS = [f"{HERE}.{name}" for name in names]
    callers.clear()
    return emulator


def tool_frames(data: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["name"], d["status"]) for d in data if d["type"] == "tool"]


def outputs(emulator: AgentsEmulator) -> list[Any]:
    """The outputs the agent got, in the order it asked for the calls."""
    if emulator.runs:
        (run,) = emulator.runs.values()
        assert not run.to_dict()["required_action"], "the run no longer waits"
        given = run.tool_outputs or {}
    else:
        (conversation,) = emulator.conversations.values()
        assert not conversation.pending_calls, "the conversation no longer waits"
        given = conversation.tool_outputs
    return [_parsed(output) for output in given.values()]


def _parsed(output: str) -> Any:
    # A tool's string is given as it is; anything else as JSON.
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        return output


async def test_it_runs_a_function_and_goes_on_with_the_reply(
    agent: AgentsEmulator, async_client: AsyncClient
) -> None:
    agent.configure(function_calls=['add {"a": 2, "b": 3}'])
    data = await reply_of(async_client)
    assert tool_frames(data) == [("add", "in_progress"), ("add", "completed")]
    assert {d["kind"] for d in data if d["type"] == "tool"} == {"function"}
    assert data[-1]["type"] == "done"
    assert chunks_text(data) == data[-1]["full_response"] == "You said: Say hello"
    assert outputs(agent) == [{"sum": 5}]
    (caller,) = callers
    assert isinstance(caller, Owner) and caller.user_id is None
    assert (await astored_reply()).status == "complete"


async def test_it_runs_the_calls_of_one_turn_at_once(
    agent: AgentsEmulator, async_client: AsyncClient
) -> None:
    # Each call returns only once the other has started: one after the other,
    # the first would wait for ever (and time out).
    meeting["barrier"] = asyncio.Barrier(2)
    agent.configure(
        function_calls=['meet {"name": "a"}', 'meet {"name": "b"}', "shout"]
    )
    data = await reply_of(async_client)
    assert outputs(agent) == [
        {"met": "a"},
        {"met": "b"},
        {"error": "bad arguments for shout: text: Field required"},
    ]
    assert tool_frames(data) == [
        ("meet", "in_progress"),
        ("meet", "in_progress"),
        ("shout", "in_progress"),
        ("meet", "completed"),
        ("meet", "completed"),
        ("shout", "failed"),
    ]
    assert data[-1]["type"] == "done"


async def test_it_gives_the_agent_an_error_for_a_call_that_takes_too_long(
    agent: AgentsEmulator, async_client: AsyncClient, settings: Settings
) -> None:
    settings.CHAT_TOOL_TIMEOUT_SECONDS = 0.05
    agent.configure(function_calls=["forever", 'shout {"text": "hi", "times": 2}'])
    data = await reply_of(async_client)
    assert outputs(agent) == [
        {"error": "forever took longer than 0.05 seconds"},
        "HI HI",
    ]
    assert tool_frames(data)[-2:] == [("forever", "failed"), ("shout", "completed")]
    assert data[-1]["type"] == "done"


async def test_it_gives_the_agent_an_error_for_a_call_that_raises(
    agent: AgentsEmulator, async_client: AsyncClient
) -> None:
    agent.configure(function_calls=["broken", "refusing"])
    data = await reply_of(async_client)
    assert outputs(agent) == [
        {"error": "broken failed unexpectedly"},
        {"error": "only signed-in users may ask this"},
    ]
    assert "hunter2" not in json.dumps(data)
    assert data[-1]["type"] == "done"


async def test_it_ends_with_an_error_when_the_agent_wants_a_tool_the_site_lacks(
    agent: AgentsEmulator, async_client: AsyncClient
) -> None:
    agent.configure(function_calls=["add", "delete_everything"])
    data = await reply_of(async_client)
    assert (data[-1]["type"], data[-1]["code"]) == ("error", "unknown_tool")
    assert "delete_everything" in data[-1]["message"]
    assert tool_frames(data) == []
    reply = await astored_reply()
    assert (reply.status, reply.error_code) == ("failed", "unknown_tool")
    await _assert_the_calls_were_given_up(agent, reply.upstream_run_id)


async def _assert_the_calls_were_given_up(agent: AgentsEmulator, run_id: str) -> None:
    """A classic run is cancelled; a conversation gets an error for each call
    (it would refuse its next message otherwise) and no follow-up response."""
    if agent.runs:
        await await_until(lambda: agent.cancelled_runs)
        assert agent.cancelled_runs == [run_id]
        (run,) = agent.runs.values()
        await await_until(lambda: run.status == "cancelled")
    else:
        given = outputs(agent)
        assert given and all(set(output) == {"error"} for output in given)
        assert len(agent.responses) == 1


async def test_a_stop_during_a_call_cancels_the_run(
    agent: AgentsEmulator, async_client: AsyncClient
) -> None:
    agent.configure(function_calls=["forever"])
    response = await chat(async_client, "stop me")
    stream = aiter(response.streaming_content)
    raw = b""
    while b'"tool"' not in raw:
        raw += await anext(stream)
    conversation_id = parse_sse(raw)[0]["data"]["conversation_id"]
    stopped = await async_client.post(f"/api/chat/{conversation_id}/stop")
    assert stopped.status_code == 200
    raw += b"".join([part async for part in stream])
    data = data_frames(parse_sse(raw))
    assert (data[-1]["type"], data[-1]["status"]) == ("done", "cancelled")
    reply = await astored_reply()
    await _assert_the_calls_were_given_up(agent, reply.upstream_run_id)
    # The conversation goes on.
    agent.configure(function_calls=[])
    data = await reply_of(async_client, "again", conversation_id=conversation_id)
    assert data[-1]["type"] == "done"


def test_its_schema_comes_from_the_signature() -> None:
    definition = Tool(shout).definition()
    assert definition == {
        "type": "function",
        "function": {
            "name": "shout",
            "description": "Says it louder (a sync tool).",
            "parameters": {
                "type": "object",
                "properties": {
                    "text": {"title": "Text", "type": "string"},
                    "times": {"default": 1, "title": "Times", "type": "integer"},
                },
                "required": ["text"],
                "additionalProperties": False,
            },
        },
    }
    # Who asks is not the agent's to say.
    assert "caller" not in Tool(add).parameters()["properties"]


async def test_the_example_tool_finds_published_posts_for_the_agent(
    agent: AgentsEmulator, async_client: AsyncClient, settings: Settings
) -> None:
    settings.CHAT_TOOLS = ["posts.tools.search_posts"]
    author = await User.objects.acreate(username="writer")
    shown = await Post.objects.acreate(
        title="Streaming replies", body="SSE all the way", author=author, published=True
    )
    await Post.objects.acreate(title="Streaming draft", body="-", author=author)
    agent.configure(function_calls=['search_posts {"query": "streaming"}'])
    data = await reply_of(async_client)
    assert tool_frames(data)[-1] == ("search_posts", "completed")
    (found,) = outputs(agent)
    assert found == {
        "posts": [
            {
                "id": shown.id,
                "title": "Streaming replies",
                "path": f"/api/posts/{shown.id}",
                "excerpt": "SSE all the way",
            }
        ]
    }


def test_the_command_prints_the_definitions_to_give_the_agent(
    settings: Settings,
) -> None:
    settings.CHAT_TOOLS = ["posts.tools.search_posts", f"{HERE}.shout"]
    out = io.StringIO()
    call_command("chat_tools", stdout=out)
    search, shouting = json.loads(out.getvalue())
    assert search["function"]["name"] == "search_posts"
    assert search["function"]["parameters"]["properties"]["limit"]["maximum"] == 10
    assert shouting == Tool(shout).definition()
    out = io.StringIO()
    call_command("chat_tools", "--responses", stdout=out)
    assert json.loads(out.getvalue())[1] == Tool(shout).response_definition()


async def test_the_offline_agent_calls_the_example_tool_when_asked_to_search(
    async_client: AsyncClient, settings: Settings
) -> None:
    settings.CHAT_BACKEND = "local"
    settings.CHAT_LOCAL_DELAY_MS = 0
    settings.CHAT_TOOLS = ["posts.tools.search_posts"]
    author = await User.objects.acreate(username="writer")
    post = await Post.objects.acreate(
        title="Streaming replies", body="SSE", author=author, published=True
    )
    data = await reply_of(async_client, "Please search posts for streaming?")
    assert tool_frames(data) == [
        ("search_posts", "in_progress"),
        ("search_posts", "completed"),
    ]
    assert data[-1]["full_response"] == (
        "I found these posts for *streaming*:\n\n"
        f"- [Streaming replies](/api/posts/{post.id})"
    )
    data = await reply_of(async_client, "search posts about nothing like it")
    assert data[-1]["full_response"] == "No published post matches *nothing like it*."
    # Without the tool, the demo agent only talks.
    settings.CHAT_TOOLS = []
    data = await reply_of(async_client, "search posts for streaming")
    assert tool_frames(data) == []
    assert data[-1]["full_response"].startswith("Hello! I am the **offline demo")
