"""The Agents emulator, driven through the real azure-ai-agents SDK."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import aiohttp
import pytest
from azure.ai.agents import AgentsClient as SyncAgentsClient
from azure.ai.agents.aio import AgentsClient
from azure.ai.agents.models import (
    ListSortOrder,
    MessageDeltaChunk,
    MessageDeltaTextFileCitationAnnotation,
    MessageDeltaTextUrlCitationAnnotation,
    MessageTextFileCitationAnnotation,
    MessageTextUrlCitationAnnotation,
    RunStep,
    RunStepBingGroundingToolCall,
    RunStepCodeInterpreterLogOutput,
    RunStepCodeInterpreterToolCall,
    RunStepDeltaChunk,
    RunStepDeltaCodeInterpreterToolCall,
    RunStepDeltaFileSearchToolCall,
    RunStepFileSearchToolCall,
    ThreadRun,
)
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
)
from azure.core.pipeline.policies import (
    AsyncBearerTokenCredentialPolicy,
    BearerTokenCredentialPolicy,
)

from emulator import AgentsEmulator, EmulatorConfig, EmulatorThread

pytestmark = pytest.mark.no_database

SCOPE = "https://ai.azure.com/.default"
TERMINAL = ("thread.run.completed", "thread.run.failed", "thread.run.cancelled")


class StaticAsyncTokenCredential:
    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("dev-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass


class StaticTokenCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("dev-token", int(time.time()) + 3600)

    def close(self) -> None:
        pass


class LoopbackAsyncBearer(AsyncBearerTokenCredentialPolicy):
    async def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False
        await super().on_request(request)


class LoopbackBearer(BearerTokenCredentialPolicy):
    def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False
        super().on_request(request)


def make_client(emulator: AgentsEmulator, retry_total: int = 0) -> AgentsClient:
    credential = StaticAsyncTokenCredential()
    return AgentsClient(
        endpoint=emulator.endpoint,
        credential=credential,  # type: ignore[arg-type]
        authentication_policy=LoopbackAsyncBearer(credential, SCOPE),  # type: ignore[arg-type]
        retry_total=retry_total,
    )


@pytest.fixture
async def client(emulator: AgentsEmulator) -> AsyncIterator[AgentsClient]:
    async with make_client(emulator) as client:
        yield client


async def new_thread(client: AgentsClient, text: str = "hello world") -> str:
    thread = await client.threads.create(messages=[{"role": "user", "content": text}])
    return thread.id


async def stream_events(
    client: AgentsClient, thread_id: str, agent_id: str, **kwargs: Any
) -> list[tuple[str, Any]]:
    stream = await client.runs.stream(thread_id=thread_id, agent_id=agent_id, **kwargs)
    async with stream as events:
        return [(name, data) async for name, data, _ in events]


def reply_text(events: list[tuple[str, Any]]) -> str:
    return "".join(d.text for _, d in events if isinstance(d, MessageDeltaChunk))


async def wait_for_status(
    client: AgentsClient, thread_id: str, run_id: str, status: str
) -> ThreadRun:
    for _ in range(200):
        run = await client.runs.get(thread_id, run_id)
        if run.status == status:
            return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} is still {run.status}, not {status}")


async def test_it_creates_gets_and_deletes_threads(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread = await client.threads.create(
        messages=[{"role": "user", "content": "first"}], metadata={"user": "u1"}
    )
    assert thread.id.startswith("thread_")
    fetched = await client.threads.get(thread.id)
    assert (fetched.id, fetched.metadata) == (thread.id, {"user": "u1"})
    deleted = await client.threads.delete(thread.id)
    assert deleted is None or deleted.deleted
    with pytest.raises(ResourceNotFoundError):
        await client.threads.get(thread.id)
    assert [r.status for r in emulator.requests] == [200, 200, 200, 404]


async def test_it_pages_messages_until_last_id_is_null(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client, "m0")
    for i in range(1, 5):
        message = await client.messages.create(thread_id, role="user", content=f"m{i}")
        assert message.id.startswith("msg_")
    listed = client.messages.list(thread_id, order=ListSortOrder.ASCENDING, limit=2)
    texts = [m.text_messages[0].text.value async for m in listed]
    assert texts == ["m0", "m1", "m2", "m3", "m4"]
    pages = [r.query for r in emulator.requests if r.operation == "messages.list"]
    # 2 + 2 + 1, then the SDK asks for what follows the last id and gets nothing.
    assert len(pages) == 4
    assert "after" not in pages[0] and all(page["after"] for page in pages[1:])

    url = f"{emulator.endpoint}/threads/{thread_id}/messages"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params={"order": "asc"}) as response:
            last_id = (await response.json())["last_id"]
        async with http.get(url, params={"order": "asc", "after": last_id}) as response:
            end = await response.json()
    assert end == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


async def test_it_streams_a_run_the_sdk_parses(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client)
    events = await stream_events(client, thread_id, emulator.agent_id)
    names = [name for name, _ in events]
    deltas = names.count("thread.message.delta")
    assert names == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.message.created",
        "thread.message.in_progress",
        *["thread.message.delta"] * deltas,
        "thread.message.completed",
        "thread.run.step.completed",
        "thread.run.completed",
        "done",
    ]
    assert deltas == 4
    assert reply_text(events) == "You said: hello world"
    completed = events[-2][1]
    assert isinstance(completed, ThreadRun)
    assert completed.status == "completed"
    assert completed.agent_id == emulator.agent_id
    assert completed.usage.completion_tokens == 4
    assert completed.usage.total_tokens == completed.usage.prompt_tokens + 4
    assert [(d.index, d.text) for d in emulator.deltas] == [
        (0, "You"),
        (1, " said:"),
        (2, " hello"),
        (3, " world"),
    ]

    messages = client.messages.list(thread_id, order=ListSortOrder.ASCENDING)
    stored = [(m.role, m.status, m.text_messages[0].text.value) async for m in messages]
    assert stored[-1] == ("assistant", "completed", "You said: hello world")
    assert emulator.requests[-3].body == {
        "assistant_id": "asst_emulator",
        "stream": True,
    }


async def test_it_frames_the_stream_as_chunked_lf_sse(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client)
    url = f"{emulator.endpoint}/threads/{thread_id}/runs?api-version=v1"
    async with aiohttp.ClientSession() as http:
        body = {"assistant_id": emulator.agent_id, "stream": True}
        async with http.post(url, json=body) as response:
            assert response.status == 200
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert "Content-Length" not in response.headers
            raw = await response.read()
    text = raw.decode()
    assert "\r" not in text
    assert text.endswith("event: done\ndata: [DONE]\n\n")
    for block in text.removesuffix("\n\n").split("\n\n"):
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")


async def test_it_runs_without_streaming(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client, "quiet")
    run = await client.runs.create(thread_id, agent_id=emulator.agent_id)
    assert run.status == "queued"
    done = await wait_for_status(client, thread_id, run.id, "completed")
    assert done.usage.completion_tokens == 3
    last = await client.messages.get_last_message_text_by_role(thread_id, "assistant")
    assert last.text.value == "You said: quiet"

    created = await client.create_thread_and_run(
        agent_id=emulator.agent_id,
        thread={"messages": [{"role": "user", "content": "both at once"}]},
    )
    assert created.thread_id in emulator.threads
    await wait_for_status(client, created.thread_id, created.id, "completed")
    assert emulator.threads[created.thread_id].messages[-1].text == (
        "You said: both at once"
    )


async def test_it_appends_additional_messages_before_the_run(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client, "first")
    events = await stream_events(
        client,
        thread_id,
        emulator.agent_id,
        additional_messages=[{"role": "user", "content": "second"}],
    )
    assert reply_text(events) == "You said: second"
    roles = [(m.role, m.text) for m in emulator.threads[thread_id].messages]
    assert roles == [
        ("user", "first"),
        ("user", "second"),
        ("assistant", "You said: second"),
    ]


async def test_it_streams_tool_call_steps_the_sdk_parses(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.configure(tools=["file_search", "code_interpreter", "web_search"])
    thread_id = await new_thread(client)
    events = await stream_events(client, thread_id, emulator.agent_id)
    steps = [
        (name, data) for name, data in events if name.startswith("thread.run.step")
    ]
    assert [name.removeprefix("thread.run.step.") for name, _ in steps] == [
        *["created", "in_progress", "delta", "completed"],
        *["created", "in_progress", "delta", "delta", "completed"],
        *["created", "in_progress", "delta", "completed"],
        "created",
        "completed",
    ]
    assert all(isinstance(d, RunStep | RunStepDeltaChunk) for _, d in steps)
    deltas = [d for name, d in steps if name == "thread.run.step.delta"]
    first_calls = [d.delta.step_details.tool_calls[0] for d in deltas]
    assert isinstance(first_calls[0], RunStepDeltaFileSearchToolCall)
    assert isinstance(first_calls[1], RunStepDeltaCodeInterpreterToolCall)
    assert first_calls[2].code_interpreter.input == "print(sum(range(10)))"
    completed = [d for name, d in steps if name == "thread.run.step.completed"]
    assert [step.type for step in completed] == ["tool_calls"] * 3 + [
        "message_creation"
    ]
    calls = [step.step_details.tool_calls[0] for step in completed[:3]]
    search, code, web = calls
    assert isinstance(search, RunStepFileSearchToolCall)
    assert search.id == first_calls[0].id and search.id.startswith("call_")
    assert isinstance(code, RunStepCodeInterpreterToolCall)
    assert code.code_interpreter.input == "print(sum(range(10)))"
    (logs,) = code.code_interpreter.outputs
    assert isinstance(logs, RunStepCodeInterpreterLogOutput) and logs.logs == "45\n"
    assert isinstance(web, RunStepBingGroundingToolCall)
    assert web.bing_grounding["requesturl"].startswith("https://")
    assert reply_text(events) == "You said: hello world"
    assert events[-2][1].status == "completed"


async def test_it_streams_annotations_the_sdk_parses(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.configure(annotations=True, reply="See the docs.")
    thread_id = await new_thread(client)
    events = await stream_events(client, thread_id, emulator.agent_id)
    annotations = [
        annotation
        for _, data in events
        if isinstance(data, MessageDeltaChunk)
        for part in data.delta.content
        for annotation in part.text.annotations or []
    ]
    url, file = annotations
    assert isinstance(url, MessageDeltaTextUrlCitationAnnotation)
    assert url.url_citation.url.startswith("https://")
    assert url.url_citation.title
    assert isinstance(file, MessageDeltaTextFileCitationAnnotation)
    assert file.file_citation.file_id and file.file_citation.quote
    assert file.text == "【4:1†source】"
    text = reply_text(events)
    assert text[url.start_index : url.end_index] == "【4:0†source】"
    assert text[file.start_index : file.end_index] == "【4:1†source】"

    messages = client.messages.list(thread_id, order=ListSortOrder.DESCENDING)
    reply, *_ = [m async for m in messages]
    stored = reply.text_messages[0].text.annotations
    assert isinstance(stored[0], MessageTextUrlCitationAnnotation)
    assert isinstance(stored[1], MessageTextFileCitationAnnotation)
    assert stored[0].text == "【4:0†source】"


async def test_it_cancels_a_run_mid_stream(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    # Held after two deltas: whatever the machine's load, a third can only come
    # from a cancel that did not stop the run.
    emulator.push(tokens=100, hold_after=2)
    thread_id = await new_thread(client)
    stream = await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)
    names: list[str] = []
    async with stream as events:
        async for name, data, _ in events:
            names.append(name)
            if name == "thread.run.created":
                run_id = data.id
            if names.count("thread.message.delta") == 2 and name.endswith("delta"):
                run = await client.runs.cancel(thread_id, run_id)
                assert run.status == "cancelling"
            if name == "thread.run.cancelled":
                assert data.status == "cancelled" and data.cancelled_at
    assert names[-2:] == ["thread.run.cancelled", "done"]
    assert names.count("thread.message.delta") == 2
    assert emulator.cancelled_runs == [run_id]
    assert (await client.runs.get(thread_id, run_id)).status == "cancelled"
    partial = emulator.threads[thread_id].messages[-1]
    assert partial.status == "incomplete"
    assert partial.text.startswith("tok0 tok1")

    with pytest.raises(HttpResponseError) as error:
        await client.runs.cancel(thread_id, run_id)
    assert error.value.status_code == 400
    assert "Cannot cancel run with status 'cancelled'" in str(error.value.message)


async def test_a_thread_has_one_active_run(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(hold_after=0)
    thread_id = await new_thread(client)
    stream = await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)
    async with stream as events:
        async for name, _data, _ in events:
            if name == "thread.message.in_progress":
                with pytest.raises(HttpResponseError) as error:
                    await client.runs.create(thread_id, agent_id=emulator.agent_id)
                assert error.value.status_code == 400
                assert error.value.error.code == "thread_run_active"
                run_id = emulator.threads[thread_id].runs[0].id
                assert error.value.error.message == (
                    f"Thread {thread_id} already has an active run {run_id}."
                )
                with pytest.raises(HttpResponseError):
                    await client.messages.create(thread_id, role="user", content="x")
                emulator.release()
            last = name
    assert last == "done"


@pytest.mark.parametrize(
    ("fault", "exception", "status"),
    [
        ("http_401", ClientAuthenticationError, 401),
        ("http_403", HttpResponseError, 403),
        ("http_404", ResourceNotFoundError, 404),
        ("http_429", HttpResponseError, 429),
        ("http_429_retry_after", HttpResponseError, 429),
        ("http_500_json", HttpResponseError, 500),
    ],
)
async def test_http_faults_raise_what_the_sdk_documents(
    emulator: AgentsEmulator,
    client: AgentsClient,
    fault: str,
    exception: type[Exception],
    status: int,
) -> None:
    thread_id = await new_thread(client)
    emulator.push(fault=fault, retry_after=3)
    with pytest.raises(exception) as error:
        await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)
    assert isinstance(error.value, HttpResponseError)
    assert error.value.status_code == status
    assert error.value.error is not None and error.value.error.code
    retry_after = error.value.response.headers.get("Retry-After")
    assert retry_after == ("3" if fault == "http_429_retry_after" else None)
    # One-shot: the next run is normal.
    events = await stream_events(client, thread_id, emulator.agent_id)
    assert events[-2][0] == "thread.run.completed"


async def test_an_html_500_is_a_json_decode_error(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client)
    emulator.push(fault="http_500_html")
    with pytest.raises(json.JSONDecodeError):
        await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)


async def test_a_retried_request_meets_the_next_override(
    emulator: AgentsEmulator,
) -> None:
    emulator.push(fault="http_429_retry_after", retry_after=0)
    async with make_client(emulator, retry_total=1) as client:
        thread_id = await new_thread(client)
        events = await stream_events(client, thread_id, emulator.agent_id)
    assert events[-2][0] == "thread.run.completed"
    runs = [r.status for r in emulator.requests if r.operation == "runs.create"]
    assert runs == [429, 200]


async def test_a_fault_can_target_another_operation(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(fault="http_500_json", fault_operation="threads.create")
    with pytest.raises(HttpResponseError) as error:
        await new_thread(client)
    assert error.value.status_code == 500
    thread_id = await new_thread(client)
    assert reply_text(await stream_events(client, thread_id, emulator.agent_id))


async def test_unknown_ids_are_404(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    agent = await client.get_agent(emulator.agent_id)
    assert (agent.id, agent.name) == ("asst_emulator", "Emulated agent")
    with pytest.raises(ResourceNotFoundError):
        await client.get_agent("asst_nope")
    with pytest.raises(ResourceNotFoundError):
        await client.runs.stream(thread_id="thread_nope", agent_id=emulator.agent_id)
    thread_id = await new_thread(client)
    with pytest.raises(ResourceNotFoundError) as error:
        await client.runs.stream(thread_id=thread_id, agent_id="asst_nope")
    assert "No assistant found with id 'asst_nope'." in str(error.value.message)


async def test_a_failed_run_is_a_thread_run_with_last_error(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(fault="run_failed")
    events = await stream_events(client, await new_thread(client), emulator.agent_id)
    name, run = events[-2]
    assert name == "thread.run.failed"
    assert run.status == "failed"
    assert run.last_error.code == "server_error" and run.last_error.message
    assert events[-1][0] == "done"
    assert reply_text(events) == "You said:"  # fault_after=2 deltas by default


async def test_an_error_event_is_yielded_as_a_string(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(fault="error_event", fault_after=0)
    thread_id = await new_thread(client)
    events = await stream_events(client, thread_id, emulator.agent_id)
    assert [name for name, _ in events][-2:] == ["error", "done"]
    assert isinstance(events[-2][1], str) and "server_error" in events[-2][1]
    assert emulator.threads[thread_id].runs[0].status == "failed"


async def test_a_disconnect_raises_incomplete_read_after_the_deltas(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(fault="disconnect", fault_after=2, tokens=10)
    thread_id = await new_thread(client)
    stream = await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)
    received: list[str] = []
    with pytest.raises(IncompleteReadError):
        async with stream as events:
            async for _, data, _ in events:
                if isinstance(data, MessageDeltaChunk):
                    received.append(data.text)
    assert received == ["tok0", " tok1"]
    # The run lives on upstream, as on the service.
    run = emulator.threads[thread_id].runs[0]
    await wait_for_status(client, thread_id, run.id, "completed")


async def test_a_run_outlives_a_client_that_goes_away(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(tokens=5, token_interval=0.02)
    thread_id = await new_thread(client)
    url = f"{emulator.endpoint}/threads/{thread_id}/runs"
    async with aiohttp.ClientSession() as http:
        body = {"assistant_id": emulator.agent_id, "stream": True}
        async with http.post(url, json=body) as response:
            await response.content.readuntil(b"event: thread.message.delta")
    run = emulator.threads[thread_id].runs[0]
    await wait_for_status(client, thread_id, run.id, "completed")
    assert emulator.threads[thread_id].messages[-1].text == "tok0 tok1 tok2 tok3 tok4"
    assert len(emulator.deltas) < 5  # the rest had nobody to go to


async def test_a_hang_sends_nothing_until_cancelled(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(fault="hang", fault_after=1)
    thread_id = await new_thread(client)
    stream = await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)
    names: list[str] = []
    async with stream as events:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                async for name, _, _ in events:
                    names.append(name)
        assert names.count("thread.message.delta") == 1
        run = emulator.threads[thread_id].runs[0]
        assert run.status == "in_progress"
        await client.runs.cancel(thread_id, run.id)
    await wait_for_status(client, thread_id, run.id, "cancelled")


async def test_an_incomplete_stream_ends_without_a_terminal_event(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(fault="incomplete", fault_after=1)
    events = await stream_events(client, await new_thread(client), emulator.agent_id)
    names = [name for name, _ in events]
    assert names[-1] == "thread.message.delta"
    assert not {"done", *TERMINAL} & set(names)


async def test_hold_keeps_the_rest_until_released(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    emulator.push(hold_after=1, tokens=3)
    stream = await client.runs.stream(
        thread_id=await new_thread(client), agent_id=emulator.agent_id
    )
    texts: list[str] = []
    async with stream as events:
        async for _, data, _ in events:
            if isinstance(data, MessageDeltaChunk):
                texts.append(data.text)
                if len(texts) == 1:
                    await asyncio.sleep(0.05)
                    assert len(emulator.deltas) == 1  # nothing buffered behind it
                    emulator.release()
    assert texts == ["tok0", " tok1", " tok2"]
    assert emulator.deltas[1].time - emulator.deltas[0].time >= 0.05


async def test_message_directives_choose_the_reply_and_faults(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    thread_id = await new_thread(client, "hi [emulator:tokens=3,interval=0.001]")
    assert reply_text(await stream_events(client, thread_id, emulator.agent_id)) == (
        "tok0 tok1 tok2"
    )
    thread_id = await new_thread(client, "hi [emulator:delay=0] there")
    events = await stream_events(client, thread_id, emulator.agent_id)
    assert reply_text(events) == "You said: hi  there"

    thread_id = await new_thread(client, "[emulator:fault=http_429]")
    with pytest.raises(HttpResponseError) as error:
        await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)
    assert error.value.status_code == 429

    thread_id = await new_thread(client, "[emulator:fault=nope]")
    with pytest.raises(HttpResponseError) as error:
        await client.runs.stream(thread_id=thread_id, agent_id=emulator.agent_id)
    assert error.value.status_code == 400
    assert error.value.error.code == "invalid_emulator_directive"


async def test_the_control_api_works_over_http(
    emulator: AgentsEmulator, client: AgentsClient
) -> None:
    control = f"{emulator.base_url}/_emulator"
    async with aiohttp.ClientSession() as http:
        health = await (await http.get(f"{control}/health")).json()
        assert health["endpoint"] == emulator.endpoint
        response = await http.post(f"{control}/config", json={"reply": "Hi there."})
        assert (await response.json())["reply"] == "Hi there."
        response = await http.post(f"{control}/config", json={"fault": "nope"})
        assert response.status == 400
        response = await http.post(f"{control}/push", json={"tokens": 2})
        assert await response.json() == {"queued": 1}

        thread_id = await new_thread(client)
        events = await stream_events(client, thread_id, emulator.agent_id)
        assert reply_text(events) == "tok0 tok1"
        assert reply_text(
            await stream_events(client, thread_id, emulator.agent_id)
        ) == ("Hi there.")

        requests = (await (await http.get(f"{control}/requests")).json())["requests"]
        assert requests[0]["operation"] == "threads.create"
        assert requests[0]["headers"]["Authorization"] == "Bearer dev-token"
        assert "azsdk-python-ai-agents" in requests[0]["headers"]["User-Agent"]
        assert requests[0]["query"] == {"api-version": "v1"}
        deltas = (await (await http.get(f"{control}/deltas")).json())["deltas"]
        assert [d["text"] for d in deltas] == ["tok0", " tok1", "Hi", " there."]
        assert deltas[0]["time"] <= time.time() and deltas[0]["monotonic"] > 0

        await http.post(f"{control}/push", json={"hold_after": 0, "tokens": 1})
        stream = await client.runs.stream(
            thread_id=thread_id, agent_id=emulator.agent_id
        )
        async with stream as events:
            async for name, _, _ in events:
                if name == "thread.message.in_progress":
                    released = await (await http.post(f"{control}/release")).json()
                    assert released == {"released": 1}

        run_id = emulator.threads[thread_id].runs[-1].id
        emulator.cancelled_runs.append(run_id)
        cancelled = await (await http.get(f"{control}/cancelled")).json()
        assert cancelled == {"cancelled_runs": [run_id]}
        assert (await (await http.post(f"{control}/reset")).json()) == {"reset": True}
        requests = (await (await http.get(f"{control}/requests")).json())["requests"]
        assert requests == []
        assert emulator.config == EmulatorConfig()


def test_emulator_thread_serves_sync_code() -> None:
    config = EmulatorConfig(token_interval=0.05, tokens=3)
    with EmulatorThread(config=config) as emu:
        credential = StaticTokenCredential()
        client = SyncAgentsClient(
            endpoint=emu.endpoint,
            credential=credential,  # type: ignore[arg-type]
            authentication_policy=LoopbackBearer(credential, SCOPE),  # type: ignore[arg-type]
            retry_total=0,
        )
        with client:
            thread = client.threads.create(messages=[{"role": "user", "content": "x"}])
            first_seen = None
            with client.runs.stream(thread_id=thread.id, agent_id=emu.agent_id) as run:
                for _, data, _ in run:
                    if isinstance(data, MessageDeltaChunk) and first_seen is None:
                        first_seen = time.time()
            # Chunked and flushed: the first delta arrived before the last was sent.
            assert first_seen is not None and first_seen < emu.deltas[-1].time
            emu.push(fault="http_403")
            with pytest.raises(HttpResponseError):
                client.runs.create(thread_id=thread.id, agent_id=emu.agent_id)
        assert [r.status for r in emu.requests][-1] == 403
        emu.reset()
        assert emu.requests == [] and emu.threads == {}


async def test_it_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        await AgentsEmulator().start(host="0.0.0.0")


ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {
    "module": [sys.executable, "-m", "emulator"],
    "manage.py": [sys.executable, "manage.py", "agent_emulator"],
}


@pytest.mark.parametrize("command", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_it_serves_from_the_command_line_until_sigterm(command: list[str]) -> None:
    env = {**os.environ, "DJANGO_DEBUG": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*command, "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(16)]
        endpoint = lines[3].strip().removeprefix("AZURE_AI_PROJECT_ENDPOINT=")
        base = endpoint.removesuffix("/api/projects/emulator")
        with urlopen(f"{base}/_emulator/health", timeout=5) as response:
            assert json.loads(response.read())["agent_id"] == "asst_emulator"
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    settings = [line.strip() for line in lines if line.startswith("  ")]
    for backend in ("azure_agents", "foundry", "openai"):
        assert f"CHAT_BACKEND={backend}" in settings
    assert "AZURE_AI_AGENT_NAME=emulator-agent" in settings
    assert f"OPENAI_BASE_URL={base}/v1" in settings
    assert "Emulator stopped." in out

    refused = subprocess.run(
        [*command, "--host", "0.0.0.0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "--allow-remote" in refused.stderr


def test_the_management_command_says_when_the_emulator_is_absent() -> None:
    # As in the production image, which leaves the emulator out.
    absent = (
        "import runpy, sys; sys.modules['emulator'] = None; "
        "sys.argv = ['manage.py', 'agent_emulator']; "
        "runpy.run_path('manage.py', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", absent],
        cwd=ROOT,
        env={**os.environ, "DJANGO_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "CommandError: The emulator is not available" in result.stderr
