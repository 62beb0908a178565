"""The foundry backend: azure-ai-projects 2.x and the openai client over loopback HTTP
against the emulator's Responses API. What it shares with the other backends
(faults, time limits, stopping, follow-ups, lost and deleted conversations,
citations, a missing agent, credential checks) is in test_backend_contract.py; here
is what the Responses API does its own way: conversations, agent references and
their configuration, driven through POST /api/chat; and background mode (cursors,
resuming a response whose stream was lost, cancelling one), driven through the
backend itself."""

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from uuid import UUID

import pytest
from django.test import AsyncClient

from chat import relay
from chat.backends import get_backend
from chat.backends.base import (
    BackendError,
    Citation,
    Completed,
    Delta,
    Event,
    ReplyRequest,
    Resumption,
    RunStarted,
    ThreadReady,
    ToolProgress,
)
from chat.backends.foundry import FoundryBackend
from chat.models import Conversation, Owner
from chat.tools import Tool, ToolBox
from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator
from testing.replies import astored_reply
from testing.sse import chat, data_frames, parse_sse, reply_of
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)


def operations(emulator: AgentsEmulator) -> list[str | None]:
    return [r.operation for r in emulator.requests]


def foundry_backend() -> FoundryBackend:
    backend = get_backend()
    assert isinstance(backend, FoundryBackend)
    return backend


async def read_until(events: AsyncIterator[Event], deltas: int) -> list[Event]:
    """The events of a reply up to its `deltas`th Delta; the reply stays open."""
    seen: list[Event] = []
    async for event in events:
        seen.append(event)
        if sum(type(e) is Delta for e in seen) == deltas:
            break
    return seen


async def read_until_tool(events: AsyncIterator[Event]) -> list[Event]:
    """The events of a reply up to its first ToolProgress; the reply stays open."""
    seen: list[Event] = []
    async for event in events:
        seen.append(event)
        if type(event) is ToolProgress:
            break
    return seen


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if type(e) is Delta)


async def dropped_reply(deltas: int) -> tuple[Resumption, FoundryBackend]:
    """A reply streamed up to its `deltas`th delta and then dropped, as when its
    process dies, with what its log holds to resume it."""
    backend = foundry_backend()
    reply = backend.stream_reply(ReplyRequest("x"))
    seen = await read_until(reply, deltas)
    await reply.aclose()
    thread = next(e for e in seen if type(e) is ThreadReady)
    run = next(e for e in seen if type(e) is RunStarted)
    last = [e for e in seen if type(e) is Delta][-1]
    return Resumption(thread.thread_id, run.run_id, last.cursor, text_of(seen)), backend


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
        "background": True,
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


async def test_it_gives_each_delta_and_citation_its_sequence_number_for_cursor(
    foundry: AgentsEmulator,
) -> None:
    foundry.configure(annotations=True)
    backend = foundry_backend()
    events = await collect(backend.stream_reply(ReplyRequest("hi")))
    run = next(e for e in events if type(e) is RunStarted)
    stream = await backend.client().responses.retrieve(run.run_id, stream=True)
    async with stream:
        upstream = {event.sequence_number: event async for event in stream}
    deltas = [e for e in events if type(e) is Delta]
    assert [upstream[d.cursor].delta for d in deltas] == [d.text for d in deltas]
    citations = [e for e in events if type(e) is Citation]
    assert len(citations) == 2
    for citation in citations:
        assert upstream[citation.cursor].type == "response.output_text.annotation.added"


@pytest.mark.parametrize("with_cursor", [True, False], ids=["cursor", "no-cursor"])
async def test_resume_gives_exactly_the_rest_of_a_dropped_reply(
    foundry: AgentsEmulator, with_cursor: bool
) -> None:
    foundry.configure(annotations=True)
    foundry.push(tokens=6, hold_after=3)
    logged, backend = await dropped_reply(deltas=3)
    # Without a cursor (a log written without them) the text alone tells where.
    resumption = logged if with_cursor else dataclasses.replace(logged, cursor=None)
    resumed = asyncio.create_task(collect(backend.resume_reply(resumption)))
    # Released once the resumed stream follows the response: the rest comes live.
    await await_until(lambda: "responses.get" in operations(foundry))
    foundry.release()
    rest = await resumed
    assert (logged.text, text_of(rest)) == ("tok0 tok1 tok2", " tok3 tok4 tok5")
    assert [type(e) for e in rest] == [Delta] * 3 + [Citation] * 2 + [Completed]
    assert not rest[-1].cancelled
    cursors = [e.cursor for e in rest if type(e) in (Delta, Citation)]
    assert cursors == sorted(set(cursors))
    assert cursors[0] > logged.cursor
    assert foundry.cancelled_runs == []


async def test_a_resume_can_itself_be_resumed_after_its_stream_breaks(
    foundry: AgentsEmulator,
) -> None:
    foundry.push(tokens=5, hold_after=2, fault="disconnect", fault_after=3)
    logged, backend = await dropped_reply(deltas=1)
    resumed = backend.resume_reply(logged)
    seen = await read_until(resumed, deltas=1)
    foundry.release()
    with pytest.raises(BackendError) as error:
        async for event in resumed:
            seen.append(event)
    assert error.value.code == "upstream_disconnected"
    last = [e for e in seen if type(e) is Delta][-1]
    again = Resumption(logged.thread_id, logged.run_id, last.cursor, "")
    rest = await collect(backend.resume_reply(again))
    assert (logged.text, text_of(seen), text_of(rest)) == (
        "tok0",
        " tok1 tok2",
        " tok3 tok4",
    )
    assert type(rest[-1]) is Completed


async def test_resume_of_a_response_cancelled_meanwhile_ends_cancelled(
    foundry: AgentsEmulator,
) -> None:
    foundry.push(tokens=6, hold_after=2)
    logged, backend = await dropped_reply(deltas=2)
    # A stop that reached the service from another replica.
    await backend.cancel(logged.thread_id, logged.run_id)
    assert await collect(backend.resume_reply(logged)) == [Completed(cancelled=True)]
    assert foundry.cancelled_runs == [logged.run_id]


async def test_resume_raises_what_the_service_answers(foundry: AgentsEmulator) -> None:
    backend = foundry_backend()
    foundry.push(fault="http_429", fault_operation="responses.get")
    lost = Resumption("conv_gone", "resp_gone", None, "")
    with pytest.raises(BackendError) as error:
        await collect(backend.resume_reply(lost))
    assert error.value.code == "rate_limited"
    # A response the service no longer has: the reply cannot be finished.
    with pytest.raises(BackendError) as error:
        await collect(backend.resume_reply(lost))
    assert error.value.code == "producer_lost"


async def test_cancel_stops_a_running_response_and_ends_its_stream(
    foundry: AgentsEmulator,
) -> None:
    foundry.push(tokens=6, hold_after=2)
    backend = foundry_backend()
    reply = backend.stream_reply(ReplyRequest("x"))
    seen = await read_until(reply, deltas=2)
    thread = next(e for e in seen if type(e) is ThreadReady)
    run = next(e for e in seen if type(e) is RunStarted)
    await backend.cancel(thread.thread_id, run.run_id)
    assert await collect(reply) == [Completed(cancelled=True)]
    upstream = foundry.responses[run.run_id]
    assert (upstream.status, upstream.text) == ("cancelled", "tok0 tok1")
    assert foundry.cancelled_runs == [run.run_id]
    # A response that has ended is left alone, without an error.
    await backend.cancel(thread.thread_id, run.run_id)
    done = await collect(backend.stream_reply(ReplyRequest("y")))
    finished = next(e for e in done if type(e) is RunStarted).run_id
    await backend.cancel(thread.thread_id, finished)
    assert foundry.responses[finished].status == "completed"


async def double(n: int) -> dict[str, int]:
    """Doubles a number."""
    return {"double": 2 * n}


async def test_a_reply_after_function_calls_resumes_on_the_follow_up_response(
    async_client: AsyncClient, foundry: AgentsEmulator, settings
) -> None:
    settings.CHAT_TOOLS = [f"{__name__}.double"]
    # The follow-up holds before its text: the log's cursor is then its start,
    # not the asking response's last (its file search's) position.
    foundry.push(
        tokens=4,
        hold_after=0,
        tools=["file_search"],
        function_calls=['double {"n": 2}'],
    )
    response = await chat(async_client, "x")
    stream = aiter(response.streaming_content)
    raw = await anext(stream)
    reply = relay.find(UUID(parse_sse(raw)[0]["data"]["conversation_id"]))
    await await_until(lambda: len(foundry.responses) == 2)
    asking, answering = foundry.responses
    assert foundry.responses[asking].calls_functions
    await await_until(lambda: reply.log.run_id == answering)

    async def recorded() -> bool:
        # Where a stop from another replica finds the run to cancel (here, on
        # one replica, once the turn is stored: a request for it would begin it).
        await relay.turns_stored(conversation_id=reply.conversation_id)
        row = await Conversation.objects.aget(pk=reply.conversation_id)
        return row.active_run_id == answering

    await await_until(recorded)
    (conversation,) = foundry.conversations.values()
    assert list(conversation.tool_outputs.values()) == ['{"double": 4}']
    # What a process taking the reply over would find in its log.
    log = reply.log
    logged = Resumption(conversation.id, log.run_id, log.cursor, log.text)
    resumed = asyncio.create_task(collect(foundry_backend().resume_reply(logged)))
    await await_until(lambda: "responses.get" in operations(foundry))
    foundry.release()
    assert text_of(await resumed) == "tok0 tok1 tok2 tok3"
    raw += b"".join([part async for part in stream])
    data = data_frames(parse_sse(raw))
    assert [d["kind"] for d in data if d["type"] == "tool"] == ["file_search"] * 2 + [
        "function"
    ] * 2
    assert data[-1]["full_response"] == "tok0 tok1 tok2 tok3"
    assert (await astored_reply()).upstream_run_id == answering


async def test_a_reply_lost_while_its_tools_ran_ends_as_lost_and_answers_them(
    foundry: AgentsEmulator,
) -> None:
    foundry.push(function_calls=['double {"n": 2}'])
    box = ToolBox({"double": Tool(double)}, Owner())
    reply = foundry_backend().stream_reply(ReplyRequest("x", tools=box))
    seen = await read_until_tool(reply)
    # The producer died as the calls began: nobody will give their outputs.
    await reply.aclose()
    thread = next(e for e in seen if type(e) is ThreadReady)
    run = next(e for e in seen if type(e) is RunStarted)
    lost = Resumption(thread.thread_id, run.run_id, run.cursor, "")
    with pytest.raises(BackendError) as error:
        await collect(foundry_backend().resume_reply(lost))
    assert error.value.code == "producer_lost"
    (conversation,) = foundry.conversations.values()
    assert not conversation.pending_calls
    (output,) = conversation.tool_outputs.values()
    assert json.loads(output) == {"error": "the server running the tools stopped"}
