"""Background responses on the emulator, driven through the real openai client: they
run whoever listens, their events can be streamed again from any sequence number,
and the cancel endpoint stops them."""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openai import APIConnectionError, AsyncOpenAI, BadRequestError

from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator
from testing.waiting import await_until

pytestmark = pytest.mark.no_database

AGENT = {"agent_reference": {"name": FOUNDRY_AGENT_NAME, "type": "agent_reference"}}
DELTA = "response.output_text.delta"


@pytest.fixture
async def client(emulator: AgentsEmulator) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(
        base_url=f"{emulator.endpoint}/openai/v1", api_key="k", max_retries=0
    )
    yield client
    await client.close()


async def start(client: AsyncOpenAI, text: str = "x", **kwargs: Any) -> Any:
    """A background response to `text` in a new conversation, streamed."""
    conversation = (await client.conversations.create()).id
    return await client.responses.create(
        conversation=conversation,
        input=text,
        background=True,
        stream=True,
        extra_body=AGENT,
        **kwargs,
    )


async def read_deltas(stream: Any, count: int) -> list[Any]:
    """The events of `stream` up to its `count`th delta, then closes it."""
    events: list[Any] = []
    async with stream:
        async for event in stream:
            events.append(event)
            if sum(e.type == DELTA for e in events) == count:
                break
    return events


async def follow(
    client: AsyncOpenAI, response_id: str, after: int | None = None
) -> list[Any]:
    """Every event of a response after sequence number `after`, to the end."""
    if after is None:
        stream = await client.responses.retrieve(response_id, stream=True)
    else:
        stream = await client.responses.retrieve(
            response_id, stream=True, starting_after=after
        )
    async with stream:
        return [event async for event in stream]


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == DELTA)


def answered(emulator: AgentsEmulator, operation: str) -> list[int | None]:
    return [r.status for r in emulator.requests if r.operation == operation]


async def test_it_streams_every_event_with_its_sequence_number(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    events = [event async for event in await start(client, "hello")]
    types = [event.type for event in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].response.status == "queued"
    assert events[0].response.background is True
    assert text_of(events) == "You said: hello"
    response_id = events[0].response.id
    stored = await client.responses.retrieve(response_id)
    assert (stored.status, stored.output_text) == ("completed", "You said: hello")
    # Streamed again, a finished response gives the same events.
    assert await follow(client, response_id) == events


async def test_retrieve_starting_after_gives_exactly_the_remaining_events(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    emulator.push(tokens=5, hold_after=2)
    seen = await read_deltas(await start(client), 2)
    response_id, last = seen[0].response.id, seen[-1].sequence_number
    stream = await client.responses.retrieve(
        response_id, stream=True, starting_after=last
    )
    emulator.release()
    async with stream:
        rest = [event async for event in stream]
    assert [e.sequence_number for e in rest] == list(
        range(last + 1, last + 1 + len(rest))
    )
    assert (text_of(seen), text_of(rest)) == ("tok0 tok1", " tok2 tok3 tok4")
    assert rest[-1].type == "response.completed"
    assert seen + rest == await follow(client, response_id)
    assert await follow(client, response_id, after=rest[-1].sequence_number) == []


async def test_a_background_response_goes_on_when_its_client_leaves(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    emulator.push(tokens=4, hold_after=1)
    seen = await read_deltas(await start(client), 1)
    response_id = seen[0].response.id
    # The stream's request is answered once the emulator saw its client go.
    await await_until(lambda: answered(emulator, "responses.create") == [200])
    assert (await client.responses.retrieve(response_id)).status == "in_progress"
    emulator.release()
    rest = await follow(client, response_id, after=seen[-1].sequence_number)
    assert text_of(seen + rest) == "tok0 tok1 tok2 tok3"
    assert rest[-1].response.status == "completed"
    assert emulator.cancelled_runs == []
    assert [d.text for d in emulator.deltas] == ["tok0", " tok1", " tok2", " tok3"]


async def test_it_answers_a_background_response_queued_then_polls_it(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    emulator.push(hold_start=True, hold_after=1, tokens=3)
    created = await client.responses.create(
        input="x", background=True, extra_body=AGENT
    )
    assert (created.status, created.background) == ("queued", True)
    assert (await client.responses.retrieve(created.id)).status == "queued"
    stream = await client.responses.retrieve(created.id, stream=True)
    emulator.release()
    await read_deltas(stream, 1)
    held = await client.responses.retrieve(created.id)
    assert (held.status, held.output_text) == ("in_progress", "tok0")
    emulator.release()
    events = await follow(client, created.id)
    finished = await client.responses.retrieve(created.id)
    assert (finished.status, finished.output_text) == ("completed", "tok0 tok1 tok2")
    assert events[-1].response.usage.output_tokens == 3


async def test_cancel_ends_the_response_and_every_stream_following_it(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    emulator.push(tokens=5, hold_after=2)
    async with await start(client) as first:
        seen: list[Any] = []
        async for event in first:
            seen.append(event)
            if text_of(seen) == "tok0 tok1":
                break
        response_id = seen[0].response.id
        after_first = next(e for e in seen if e.type == DELTA).sequence_number
        second = await client.responses.retrieve(
            response_id, stream=True, starting_after=after_first
        )
        cancelled = await client.responses.cancel(response_id)
        assert (cancelled.status, cancelled.output_text) == ("cancelled", "tok0 tok1")
        seen += [event async for event in first]
    async with second:
        followed = [event async for event in second]
    assert (text_of(seen), text_of(followed)) == ("tok0 tok1", " tok1")
    for events in (seen, followed):
        assert events[-1].type == "response.failed"
        assert events[-1].response.status == "cancelled"
        assert events[-1].response.error is None
    assert emulator.cancelled_runs == [response_id]
    conversation_id = emulator.responses[response_id].conversation_id
    last = emulator.conversations[conversation_id].messages[-1]
    assert (last.text, last.status) == ("tok0 tok1", "incomplete")
    # A cancel is idempotent; a finished response cannot be cancelled.
    assert (await client.responses.cancel(response_id)).status == "cancelled"
    assert emulator.cancelled_runs == [response_id]
    done = [event async for event in await start(client)]
    with pytest.raises(BadRequestError):
        await client.responses.cancel(done[0].response.id)


async def test_a_disconnect_cuts_the_stream_but_not_the_response(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    emulator.push(fault="disconnect", tokens=4)
    seen: list[Any] = []
    with pytest.raises(APIConnectionError):
        async with await start(client) as stream:
            async for event in stream:
                seen.append(event)
    assert text_of(seen) == "tok0 tok1"
    rest = await follow(client, seen[0].response.id, seen[-1].sequence_number)
    assert text_of(rest) == " tok2 tok3"
    assert rest[-1].type == "response.completed"


async def test_an_incomplete_stream_ends_early_while_the_response_goes_on(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    emulator.push(fault="incomplete", fault_after=1, tokens=3)
    seen = [event async for event in await start(client)]
    assert seen[-1].type == DELTA
    rest = await follow(client, seen[0].response.id, seen[-1].sequence_number)
    assert text_of(seen + rest) == "tok0 tok1 tok2"


async def test_it_refuses_what_the_service_refuses(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    with pytest.raises(BadRequestError):
        await client.responses.create(
            input="x", background=True, store=False, extra_body=AGENT
        )
    foreground = await client.responses.create(input="x", extra_body=AGENT)
    # Only background responses can be streamed again or cancelled.
    with pytest.raises(BadRequestError):
        await client.responses.retrieve(foreground.id, stream=True)
    with pytest.raises(BadRequestError):
        await client.responses.cancel(foreground.id)
    background = await client.responses.create(
        input="x", background=True, extra_body=AGENT
    )
    url = f"{emulator.endpoint}/openai/v1/responses/{background.id}"
    async with aiohttp.ClientSession() as http:
        for after in ("-1", "x"):
            query = {"stream": "true", "starting_after": after}
            async with http.get(url, params=query) as response:
                assert response.status == 400


async def test_the_stream_is_framed_like_the_services(
    emulator: AgentsEmulator, client: AsyncOpenAI
) -> None:
    created = await client.responses.create(
        input="x", background=True, extra_body=AGENT
    )
    await follow(client, created.id)
    url = f"{emulator.endpoint}/openai/v1/responses/{created.id}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, params={"stream": "true", "starting_after": "5"}) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Transfer-Encoding"] == "chunked"
        raw = (await response.read()).decode()
    blocks = raw.removesuffix("\n\n").split("\n\n")
    assert blocks[0].startswith("event: response.output_text.delta\ndata: {")
    assert '"sequence_number":6' in blocks[0]
    assert blocks[-1].startswith("event: response.completed\n")
