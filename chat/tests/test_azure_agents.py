"""The azure_agents backend: the real SDK over loopback HTTP against the emulator,
driven through POST /api/chat. What it shares with the other backends (faults, time
limits, stopping, follow-ups, lost and deleted threads, citations, a missing agent,
credential checks) is in test_backend_contract.py; here is what the classic Agents
API does its own way: threads, runs and their configuration, and finishing a run
whose stream was lost (`resume_reply`), straight through the backend."""

import asyncio
import logging
from contextlib import aclosing

import orjson
import pytest
from django.test import AsyncClient

from chat.backends import azure_agents, get_backend
from chat.backends.base import (
    RUN_FAILED,
    THREAD_NOT_FOUND,
    BackendError,
    ChatBackend,
    Citation,
    Completed,
    Delta,
    Event,
    FileOutput,
    ReplyRequest,
    Resumption,
    RunStarted,
    ThreadReady,
    ToolProgress,
)
from chat.models import Owner
from chat.tools import Tool, ToolBox
from emulator import AgentsEmulator
from emulator.stream import CITATION_FILE_ID, CITATION_URL, IMAGE_FILE_ID
from testing.replies import astored_reply
from testing.sse import chat, reply_of
from testing.upstream import token_text
from testing.waiting import await_until

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


async def lose_stream(backend: ChatBackend, deltas: int) -> Resumption:
    """Streams a reply and drops it after `deltas` pieces of text, as a process
    that dies does; the Resumption holds what its log would."""
    thread_id = run_id = None
    text, seen = "", 0
    async with aclosing(backend.stream_reply(ReplyRequest(message="hi"))) as events:
        async for event in events:
            match event:
                case ThreadReady(thread_id=thread_id):
                    pass
                case RunStarted(run_id=run_id):
                    pass
                case Delta(text=piece):
                    text, seen = text + piece, seen + 1
            if seen == deltas:
                break
    assert thread_id and run_id
    return Resumption(thread_id, run_id, cursor=None, text=text)


async def resumed(backend: ChatBackend, resumption: Resumption) -> list[Event]:
    return [event async for event in backend.resume_reply(resumption)]


def runs_polled(emulator: AgentsEmulator) -> int:
    return sum(r.operation == "runs.get" for r in emulator.requests)


async def test_a_lost_stream_resumes_with_exactly_the_rest(
    azure: AgentsEmulator,
) -> None:
    backend = get_backend()
    assert backend.resumable
    azure.push(tokens=8, hold_after=3)
    lost = await lose_stream(backend, 3)
    assert lost.text == token_text(3)
    azure.release()
    *rest, completed = await resumed(backend, lost)
    assert rest == [Delta(token_text(8)[len(lost.text) :])]
    assert completed == Completed(usage=azure.runs[lost.run_id].usage)
    assert completed.usage["completion_tokens"] == 8


async def test_a_resume_waits_for_a_run_still_going(azure: AgentsEmulator) -> None:
    backend = get_backend()
    azure.push(tokens=5, hold_after=2)
    lost = await lose_stream(backend, 2)
    before = runs_polled(azure)
    resume = asyncio.create_task(resumed(backend, lost))
    await await_until(lambda: runs_polled(azure) >= before + 2)
    assert not resume.done()
    assert azure.runs[lost.run_id].status == "in_progress"
    azure.release()
    events = await resume
    assert lost.text + events[0].text == token_text(5)
    assert events[1:] == [Completed(usage=azure.runs[lost.run_id].usage)]


async def test_a_run_cancelled_meanwhile_resumes_as_cancelled(
    azure: AgentsEmulator,
) -> None:
    backend = get_backend()
    azure.push(tokens=6, hold_after=4)
    lost = await lose_stream(backend, 2)
    # The run went on without its stream to the hold, then someone stopped it.
    message = azure.threads[lost.thread_id].messages[-1]
    await await_until(lambda: message.text == token_text(4))
    await backend.cancel(lost.thread_id, lost.run_id)
    events = await resumed(backend, lost)
    assert events == [
        Delta(token_text(4)[len(lost.text) :]),
        Completed(usage=azure.runs[lost.run_id].usage, cancelled=True),
    ]


async def test_a_failed_run_resumes_into_the_error_its_stream_ends_with(
    azure: AgentsEmulator,
) -> None:
    backend = get_backend()
    azure.push(tokens=6, fault="run_failed", fault_after=4)
    with pytest.raises(BackendError) as streamed:
        async for _ in backend.stream_reply(ReplyRequest(message="hello")):
            pass
    azure.push(tokens=6, fault="run_failed", fault_after=4, hold_after=2)
    lost = await lose_stream(backend, 2)
    azure.release()
    events = []
    with pytest.raises(BackendError) as resumed_error:
        async for event in backend.resume_reply(lost):
            events.append(event)
    # What the run wrote before it failed is not lost either.
    assert events == [Delta(token_text(4)[len(lost.text) :])]
    assert resumed_error.value.code == streamed.value.code == RUN_FAILED
    assert resumed_error.value.message == streamed.value.message


@pytest.mark.parametrize(
    ("status", "details", "says"),
    [
        ("expired", None, "expired"),
        ("incomplete", {"reason": "max_completion_tokens"}, "max_completion_tokens"),
    ],
)
async def test_a_run_that_expired_or_stopped_early_resumes_into_run_failed(
    azure: AgentsEmulator, status: str, details: dict[str, str] | None, says: str
) -> None:
    backend = get_backend()
    azure.push(tokens=3, hold_after=1)
    lost = await lose_stream(backend, 1)
    run = azure.runs[lost.run_id]
    # The emulator plays neither ending: the held run is given it, then let go.
    run.status, run.incomplete_details = status, details
    try:
        with pytest.raises(BackendError) as error:
            await resumed(backend, lost)
    finally:
        azure.release()
    assert error.value.code == RUN_FAILED
    assert says in error.value.message


async def test_citations_come_with_the_text_their_marker_ends_in(
    azure: AgentsEmulator,
) -> None:
    backend = get_backend()
    azure.push(tokens=2, annotations=True, hold_after=2)
    lost = await lose_stream(backend, 2)
    azure.release()
    events = await resumed(backend, lost)
    assert [type(e) for e in events] == [Delta, Citation, Citation, Completed]
    assert events[1].data["url"] == CITATION_URL
    assert events[2].data["file_id"] == CITATION_FILE_ID
    # A log that already holds the first marker already holds its citation.
    first_marker = events[0].text[: len(events[0].text) // 2]
    later = Resumption(lost.thread_id, lost.run_id, None, lost.text + first_marker)
    events = await resumed(backend, later)
    assert [type(e) for e in events] == [Delta, Citation, Completed]
    assert events[1].data["file_id"] == CITATION_FILE_ID


async def test_a_log_that_parts_from_the_service_resumes_where_they_part(
    azure: AgentsEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    backend = get_backend()
    azure.push(tokens=4, hold_after=3)
    lost = await lose_stream(backend, 3)
    azure.release()
    differing = Resumption(lost.thread_id, lost.run_id, None, "tok0 tokX tok2")
    with caplog.at_level(logging.WARNING, logger="chat.backends.azure_agents"):
        events = await resumed(backend, differing)
    assert events[0] == Delta(token_text(4)[len("tok0 tok") :])
    assert "differ from character 8 of 14" in caplog.text


async def test_a_run_or_thread_gone_upstream_cannot_be_resumed(
    azure: AgentsEmulator,
) -> None:
    backend = get_backend()
    azure.push(tokens=2)
    lost = await lose_stream(backend, 1)
    unknown_run = Resumption(lost.thread_id, "run_gone", None, lost.text)
    with pytest.raises(BackendError) as error:
        await resumed(backend, unknown_run)
    assert error.value.code == RUN_FAILED
    await backend.delete_thread(lost.thread_id)
    with pytest.raises(BackendError) as error:
        await resumed(backend, lost)
    assert error.value.code == THREAD_NOT_FOUND


async def wait() -> None:
    """Never answers."""
    await asyncio.Event().wait()


async def test_a_resume_of_a_run_waiting_for_function_outputs_ends_it_as_lost(
    azure: AgentsEmulator,
) -> None:
    backend = get_backend()
    azure.push(function_calls=["wait"])
    request = ReplyRequest("hi", tools=ToolBox({"wait": Tool(wait)}, Owner()))
    async with aclosing(backend.stream_reply(request)) as events:
        seen = []
        async for event in events:
            seen.append(event)
            if type(event) is ToolProgress:
                # The producer dies with the call: who asked is gone with it.
                break
    (thread,) = [e for e in seen if type(e) is ThreadReady]
    (run,) = [e for e in seen if type(e) is RunStarted]
    assert azure.runs[run.run_id].status == "requires_action"
    lost = Resumption(thread.thread_id, run.run_id, cursor=None, text="")
    with pytest.raises(BackendError) as error:
        await resumed(backend, lost)
    assert error.value.code == "producer_lost"
    assert azure.cancelled_runs == [run.run_id]


async def test_a_resumed_reply_gives_the_files_the_run_made(
    azure: AgentsEmulator,
) -> None:
    backend = get_backend()
    azure.push(tokens=4, hold_after=2, image=True)
    lost = await lose_stream(backend, 2)
    azure.release()
    *rest, completed = await resumed(backend, lost)
    assert rest == [
        Delta(token_text(4)[len(lost.text) :]),
        FileOutput(IMAGE_FILE_ID, "image"),
    ]
    assert type(completed) is Completed


# Texts a model writes that JSON escapes, or that need more than one UTF-8 byte.
TRICKY_TOKENS = [
    "Line one",
    "\n",
    'a "quoted" word',
    " back\\slash",
    "\ttab",
    " café",
    " 😀",
    "\u2028",
    " </script>",
    "\x7f",
]


def _delta_event(text_part: dict, **fields: object) -> bytes:
    data = {"id": "msg_1", "object": "thread.message.delta"} | fields
    data["delta"] = {"content": [text_part]}
    return b"event: thread.message.delta\ndata: " + orjson.dumps(data)


def _as_parsed_whole(event: bytes) -> list[Event]:
    """What the events of a delta are when its JSON is parsed as a whole."""
    _, data = event.split(b"\ndata: ", 1)
    delta = azure_agents._plain_delta(orjson.loads(data))
    return [delta] if delta else azure_agents._delta_events(orjson.loads(data))


@pytest.mark.parametrize("text", TRICKY_TOKENS)
def test_a_plain_delta_read_on_its_bytes_is_the_delta_its_json_gives(
    text: str,
) -> None:
    # The service's shape, with and without its empty annotations.
    for part in (
        {"index": 0, "type": "text", "text": {"value": text}},
        {"index": 1, "type": "text", "text": {"value": text, "annotations": []}},
    ):
        event = _delta_event(part)
        assert azure_agents.PLAIN_DELTA.fullmatch(event)
        name, delta = azure_agents._parse_event(event)
        assert name == "thread.message.delta"
        assert [delta] == _as_parsed_whole(event) == [Delta(text)]


@pytest.mark.parametrize(
    "event",
    [
        # Annotations, another key order, an empty text, two parts, an image.
        _delta_event(
            {
                "index": 0,
                "type": "text",
                "text": {
                    "value": "【1†source】",
                    "annotations": [
                        {
                            "type": "url_citation",
                            "text": "【1†source】",
                            "url_citation": {
                                "url": "https://example.com",
                                "title": "Example",
                            },
                        }
                    ],
                },
            }
        ),
        b'event: thread.message.delta\ndata: {"object":"thread.message.delta",'
        b'"id":"msg_1","delta":{"content":[{"index":0,"type":"text",'
        b'"text":{"value":"hi"}}]}}',
        _delta_event({"index": 0, "type": "text", "text": {"value": ""}}),
        b'event: thread.message.delta\ndata: {"id":"msg_1",'
        b'"object":"thread.message.delta","delta":{"content":[{"index":0,'
        b'"type":"text","text":{"value":"a"}},'
        b'{"index":1,"type":"text","text":{"value":"b"}}]}}',
        _delta_event(
            {"index": 0, "type": "image_file", "image_file": {"file_id": "f"}}
        ),
    ],
)
def test_any_other_delta_is_parsed_as_a_whole(event: bytes) -> None:
    assert not azure_agents.PLAIN_DELTA.fullmatch(event)
    name, data = azure_agents._parse_event(event)
    assert name == "thread.message.delta"
    assert isinstance(data, dict)


def test_a_plain_looking_delta_that_is_not_valid_text_is_parsed_as_a_whole() -> None:
    # Not UTF-8, and an escape JSON does not have: the bytes say nothing sure.
    for value in (b"\xff\xfe", b"\\q"):
        event = (
            b'event: thread.message.delta\ndata: {"id":"msg_1","object":'
            b'"thread.message.delta","delta":{"content":[{"index":0,"type":"text",'
            b'"text":{"value":"' + value + b'"}}]}}'
        )
        assert azure_agents.PLAIN_DELTA.fullmatch(event)
        name, data = azure_agents._parse_event(event)
        assert name == "thread.message.delta"
        assert not isinstance(data, Delta)


async def test_text_that_json_escapes_streams_and_is_stored_as_the_agent_wrote_it(
    async_client: AsyncClient, azure: AgentsEmulator
) -> None:
    azure.push(reply=TRICKY_TOKENS)
    data = await reply_of(async_client)
    expected = "".join(TRICKY_TOKENS)
    assert "".join(d["content"] for d in data if d["type"] == "chunk") == expected
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == expected
    assert (await astored_reply()).content == expected
