"""The emulator's OpenAI protocols, driven through the real openai client: the
Responses API of new Foundry agents (reached through azure-ai-projects 2.x) and
chat completions."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from azure.ai.projects.aio import AIProjectClient
from openai import (
    APIConnectionError,
    APIError,
    AsyncOpenAI,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from openai.types.responses import (
    ResponseCodeInterpreterCallCodeDeltaEvent,
    ResponseCodeInterpreterToolCall,
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFileSearchToolCall,
    ResponseFunctionToolCall,
    ResponseFunctionWebSearch,
    ResponseIncompleteEvent,
)

from chat.backends._azure import DevTokenCredential
from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator

pytestmark = pytest.mark.no_database

AGENT = {"agent_reference": {"name": FOUNDRY_AGENT_NAME, "type": "agent_reference"}}
RESPONSE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
RESPONSE_END = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
async def project(emulator: AgentsEmulator) -> AsyncIterator[AsyncOpenAI]:
    """The openai client that azure-ai-projects 2.x hands out for a project."""
    client = AIProjectClient(
        endpoint=emulator.endpoint, credential=DevTokenCredential()
    )
    openai = client.get_openai_client(max_retries=0)
    yield openai
    await openai.close()
    await client.close()


@pytest.fixture
async def chat_client(emulator: AgentsEmulator) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(
        base_url=f"{emulator.base_url}/v1", api_key="test-key", max_retries=0
    )
    yield client
    await client.close()


async def open_response(
    client: AsyncOpenAI,
    text: str = "hello world",
    conversation: str | None = None,
    **kwargs: Any,
) -> tuple[str, Any]:
    """A streamed response to `text` in `conversation` (by default a new one): the
    conversation's id and the stream, still to be read."""
    if conversation is None:
        conversation = (await client.conversations.create()).id
    stream = await client.responses.create(
        conversation=conversation, input=text, stream=True, extra_body=AGENT, **kwargs
    )
    return conversation, stream


async def respond(
    client: AsyncOpenAI, text: str = "hello world", **kwargs: Any
) -> list[Any]:
    """Every event of a response to `text` (`open_response`'s keywords apply)."""
    _conversation, stream = await open_response(client, text, **kwargs)
    async with stream:
        return [event async for event in stream]


async def respond_with(client: AsyncOpenAI, **overrides: Any) -> list[Any]:
    """A response to a message with `[emulator:...]` directives."""
    text = ",".join(f"{key}={value}" for key, value in overrides.items())
    return await respond(client, f"x [emulator:{text}]")


def response_text(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def complete(client: AsyncOpenAI, text: str = "hello world") -> list[Any]:
    stream = await client.chat.completions.create(
        model="any-model",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        return [chunk async for chunk in stream]


def completion_text(chunks: list[Any]) -> str:
    return "".join(
        choice.delta.content or "" for chunk in chunks for choice in chunk.choices
    )


# -- Responses -------------------------------------------------------------------


async def test_it_creates_gets_and_deletes_conversations(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    conversation = await project.conversations.create(
        items=[{"type": "message", "role": "user", "content": "first"}],
        metadata={"user": "u1"},
    )
    assert conversation.id.startswith("conv_")
    fetched = await project.conversations.retrieve(conversation.id)
    assert fetched.metadata == {"user": "u1"}
    assert [m.text for m in emulator.conversations[conversation.id].messages] == [
        "first"
    ]
    deleted = await project.conversations.delete(conversation.id)
    assert deleted.deleted
    with pytest.raises(NotFoundError):
        await project.conversations.retrieve(conversation.id)
    assert emulator.requests[0].path == "/api/projects/emulator/openai/v1/conversations"
    assert emulator.requests[0].headers["Authorization"] == "Bearer dev-token"


async def test_it_adds_items_to_a_conversation_twenty_at_a_time(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    def said(role: str, text: str) -> dict[str, str]:
        return {"type": "message", "role": role, "content": text}

    items = [said("user", f"q{i}") for i in range(21)]
    with pytest.raises(BadRequestError):
        await project.conversations.create(items=items)
    conversation = await project.conversations.create(items=items[:20])
    added = await project.conversations.items.create(
        conversation.id, items=[items[20], said("assistant", "a20")]
    )
    assert [(item.role, item.content[0].text) for item in added.data] == [
        ("user", "q20"),
        ("assistant", "a20"),
    ]
    messages = emulator.conversations[conversation.id].messages
    assert [m.text for m in messages] == [f"q{i}" for i in range(21)] + ["a20"]
    with pytest.raises(BadRequestError):
        await project.conversations.items.create(conversation.id, items=items)


async def test_it_streams_a_response_the_client_parses(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    events = await respond(project)
    types = [event.type for event in events]
    assert types == [
        *RESPONSE_EVENTS,
        *["response.output_text.delta"] * 4,
        *RESPONSE_END,
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert response_text(events) == "You said: hello world"
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    response = completed.response
    assert response.status == "completed"
    assert response.output_text == "You said: hello world"
    assert response.usage is not None and response.usage.output_tokens == 4
    assert response.usage.total_tokens == response.usage.input_tokens + 4
    assert [(d.index, d.text) for d in emulator.deltas] == [
        (0, "You"),
        (1, " said:"),
        (2, " hello"),
        (3, " world"),
    ]
    assert {d.run_id for d in emulator.deltas} == {response.id}
    conversation = emulator.conversations[emulator.deltas[0].thread_id]
    stored = [(m.role, m.status, m.text) for m in conversation.messages]
    assert stored == [
        ("user", "completed", "hello world"),
        ("assistant", "completed", "You said: hello world"),
    ]
    assert (await project.responses.retrieve(response.id)).status == "completed"


async def test_it_frames_responses_as_chunked_lf_sse(
    emulator: AgentsEmulator,
) -> None:
    url = f"{emulator.endpoint}/openai/v1/responses"
    async with aiohttp.ClientSession() as http:
        body = {"input": "hi", "stream": True, **AGENT}
        async with http.post(url, json=body) as response:
            assert response.status == 200
            assert response.headers["Transfer-Encoding"] == "chunked"
            raw = (await response.read()).decode()
    assert "\r" not in raw and "[DONE]" not in raw
    for block in raw.removesuffix("\n\n").split("\n\n"):
        event, data = block.split("\n")
        assert event.startswith("event: ")
        assert json.loads(data.removeprefix("data: "))["type"] == event[7:]


async def test_it_answers_without_streaming(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    response = await project.responses.create(input="quiet", extra_body=AGENT)
    assert (response.status, response.output_text) == ("completed", "You said: quiet")
    assert emulator.deltas == []


async def test_it_streams_annotations_the_client_parses(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    emulator.configure(annotations=True)
    events = await respond(project)
    added = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert [e.annotation.type for e in added] == ["url_citation", "file_citation"]
    assert added[0].annotation.url.startswith("https://")
    assert added[1].annotation.filename
    assert response_text(events) == "You said: hello world"
    final = events[-1].response.output[0].content[0]
    assert len(final.annotations) == 2


async def test_it_streams_tool_call_items_the_client_parses(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    emulator.configure(tools=["file_search", "code_interpreter", "web_search"])
    events = await respond(project)
    items = [e for e in events if e.type.startswith("response.output_item.")]
    assert [(e.type[21:], e.output_index, e.item.type) for e in items] == [
        ("added", 0, "file_search_call"),
        ("done", 0, "file_search_call"),
        ("added", 1, "code_interpreter_call"),
        ("done", 1, "code_interpreter_call"),
        ("added", 2, "web_search_call"),
        ("done", 2, "web_search_call"),
        ("added", 3, "message"),
        ("done", 3, "message"),
    ]
    assert [e.item.status for e in items[:6]] == ["in_progress", "completed"] * 3
    code = [e for e in events if e.type == "response.code_interpreter_call_code.delta"]
    assert isinstance(code[0], ResponseCodeInterpreterCallCodeDeltaEvent)
    assert code[0].delta == "print(sum(range(10)))"
    assert [e.type for e in events if e.type.startswith("response.file_search")] == [
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert response_text(events) == "You said: hello world"
    output = events[-1].response.output
    search, ran, web, _message = output
    assert isinstance(search, ResponseFileSearchToolCall) and search.queries
    assert isinstance(ran, ResponseCodeInterpreterToolCall)
    assert ran.outputs[0].logs == "45\n" and ran.container_id.startswith("cntr_")
    assert isinstance(web, ResponseFunctionWebSearch) and web.action.query
    assert events[-1].response.output_text == "You said: hello world"


async def test_it_knows_one_agent_and_its_version(project: AsyncOpenAI) -> None:
    conversation = (await project.conversations.create()).id
    versioned = {"agent_reference": {**AGENT["agent_reference"], "version": "1"}}
    response = await project.responses.create(
        conversation=conversation, input="hi", extra_body=versioned
    )
    assert response.status == "completed"
    for reference in ({"name": "nobody"}, {"name": FOUNDRY_AGENT_NAME, "version": "2"}):
        with pytest.raises(NotFoundError):
            await project.responses.create(
                conversation=conversation,
                input="hi",
                extra_body={"agent_reference": reference},
            )
    with pytest.raises(NotFoundError):
        await respond(project, conversation="conv_nope")


@pytest.mark.parametrize(
    ("fault", "exception", "status"),
    [
        ("http_401", AuthenticationError, 401),
        ("http_403", PermissionDeniedError, 403),
        ("http_404", NotFoundError, 404),
        ("http_429", RateLimitError, 429),
        ("http_429_retry_after", RateLimitError, 429),
        ("http_500_json", InternalServerError, 500),
        ("http_500_html", InternalServerError, 500),
    ],
)
async def test_http_faults_raise_what_the_client_documents(
    emulator: AgentsEmulator,
    project: AsyncOpenAI,
    fault: str,
    exception: type[Exception],
    status: int,
) -> None:
    conversation = (await project.conversations.create()).id
    emulator.push(fault=fault, retry_after=3)
    with pytest.raises(exception) as error:
        await respond(project, conversation=conversation)
    assert error.value.status_code == status
    retry_after = error.value.response.headers.get("Retry-After")
    assert retry_after == ("3" if fault == "http_429_retry_after" else None)
    # One-shot: the next response is normal.
    events = await respond(project, conversation=conversation)
    assert events[-1].type == "response.completed"


@pytest.mark.parametrize(
    ("fault", "event_class", "reason"),
    [
        ("run_failed", ResponseFailedEvent, None),
        ("error_event", ResponseErrorEvent, None),
        ("max_tokens", ResponseIncompleteEvent, "max_output_tokens"),
        ("content_filter", ResponseIncompleteEvent, "content_filter"),
    ],
)
async def test_stream_faults_end_the_response_as_the_service_does(
    emulator: AgentsEmulator,
    project: AsyncOpenAI,
    fault: str,
    event_class: type,
    reason: str | None,
) -> None:
    emulator.push(fault=fault)
    events = await respond(project)
    assert isinstance(events[-1], event_class)
    assert response_text(events) == "You said:"  # fault_after=2 deltas by default
    if isinstance(events[-1], ResponseErrorEvent):
        assert events[-1].code == "server_error"
    elif isinstance(events[-1], ResponseFailedEvent):
        assert events[-1].response.error.code == "server_error"
    else:
        assert events[-1].response.incomplete_details.reason == reason
        assert events[-1].response.usage.output_tokens == 2


async def test_a_disconnect_raises_a_connection_error_after_the_deltas(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    emulator.push(fault="disconnect", tokens=10)
    _conversation, stream = await open_response(project, "x")
    deltas: list[str] = []
    with pytest.raises(APIConnectionError):
        async with stream:
            async for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
    assert deltas == ["tok0", " tok1"]
    # Cut by the server, not left by the client: not a cancellation.
    assert emulator.cancelled_runs == []


async def test_an_incomplete_stream_ends_without_a_terminal_event(
    project: AsyncOpenAI,
) -> None:
    events = await respond_with(project, fault="incomplete", fault_after=1)
    assert events[-1].type == "response.output_text.delta"


async def test_a_response_stops_when_its_client_closes_the_stream(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    emulator.push(fault="hang", fault_after=1)
    conversation, stream = await open_response(project, "wait")
    async with stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                break
    response_id = emulator.deltas[0].run_id
    for _ in range(200):
        if emulator.cancelled_runs:
            break
        await asyncio.sleep(0.01)
    assert emulator.cancelled_runs == [response_id]
    response = emulator.responses[response_id]
    assert (response.status, response.text) == ("cancelled", "You")
    messages = emulator.conversations[conversation].messages
    assert (messages[-1].text, messages[-1].status) == ("You", "incomplete")
    # Only background responses can be cancelled through the API.
    with pytest.raises(BadRequestError):
        await project.responses.cancel(response_id)
    with pytest.raises(NotFoundError):
        await project.responses.cancel("resp_nope")


async def test_hold_keeps_the_rest_of_a_response_until_released(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    emulator.push(hold_after=1, tokens=3)
    _conversation, stream = await open_response(project, "x")
    texts: list[str] = []
    async with stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                texts.append(event.delta)
                if len(texts) == 1:
                    await asyncio.sleep(0.05)
                    assert len(emulator.deltas) == 1  # nothing buffered behind it
                    emulator.release()
    assert texts == ["tok0", " tok1", " tok2"]
    assert emulator.deltas[1].time - emulator.deltas[0].time >= 0.05


async def test_a_fault_without_operation_hits_the_next_reply_of_any_api(
    emulator: AgentsEmulator, project: AsyncOpenAI, chat_client: AsyncOpenAI
) -> None:
    emulator.push(fault="http_500_json")
    emulator.push(fault="http_429")
    # Creating the conversation first does not use up the fault.
    with pytest.raises(InternalServerError):
        await respond(project)
    with pytest.raises(RateLimitError):
        await complete(chat_client)
    assert [r.status for r in emulator.requests] == [200, 500, 429]
    assert emulator.config.fault_operation is None


async def test_a_fault_can_target_a_conversation_call(
    emulator: AgentsEmulator, project: AsyncOpenAI
) -> None:
    emulator.push(fault="http_500_json", fault_operation="conversations.create")
    with pytest.raises(InternalServerError):
        await project.conversations.create()
    assert response_text(await respond(project)) == "You said: hello world"


async def test_directives_in_the_input_choose_the_reply(project: AsyncOpenAI) -> None:
    events = await respond_with(project, tokens=3, interval=0.001)
    assert response_text(events) == "tok0 tok1 tok2"
    with pytest.raises(RateLimitError):
        await respond_with(project, fault="http_429")
    with pytest.raises(BadRequestError) as error:
        await respond_with(project, fault="nope")
    assert error.value.code == "invalid_emulator_directive"


async def test_reset_forgets_conversations_and_responses(
    emulator: AgentsEmulator, project: AsyncOpenAI, chat_client: AsyncOpenAI
) -> None:
    await respond(project)
    await complete(chat_client)
    emulator.reset()
    assert (emulator.conversations, emulator.responses) == ({}, {})
    assert emulator.chat_completions == {}


# -- Chat completions --------------------------------------------------------------


async def test_it_streams_chat_completion_chunks_the_client_parses(
    emulator: AgentsEmulator, chat_client: AsyncOpenAI
) -> None:
    chunks = await complete(chat_client)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert completion_text(chunks) == "You said: hello world"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    usage = chunks[-1].usage
    assert (chunks[-1].choices, usage.completion_tokens) == ([], 4)
    assert usage.prompt_tokens == 2
    assert {c.id for c in chunks} == {emulator.deltas[0].run_id}
    assert chunks[0].model == "any-model"
    [request] = emulator.requests
    assert request.operation == "chat.completions.create"
    assert request.headers["Authorization"] == "Bearer test-key"


async def test_it_frames_chat_completions_as_data_lines_then_done(
    emulator: AgentsEmulator,
) -> None:
    url = f"{emulator.base_url}/v1/chat/completions"
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body) as response,
    ):
        assert response.headers["Transfer-Encoding"] == "chunked"
        raw = (await response.read()).decode()
    blocks = raw.removesuffix("\n\n").split("\n\n")
    assert blocks[-1] == "data: [DONE]"
    chunks = [json.loads(block.removeprefix("data: ")) for block in blocks[:-1]]
    assert all("usage" not in chunk for chunk in chunks)  # not asked for
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_it_completes_without_streaming(
    emulator: AgentsEmulator, chat_client: AsyncOpenAI
) -> None:
    completion = await chat_client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    )
    assert completion.choices[0].message.content == "You said: x"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 1 + 3
    emulator.push(fault="run_failed")
    with pytest.raises(InternalServerError):
        await chat_client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )


@pytest.mark.parametrize(
    ("fault", "code"), [("run_failed", "model_error"), ("error_event", "server_error")]
)
async def test_a_stream_error_is_an_api_error_after_the_deltas(
    emulator: AgentsEmulator, chat_client: AsyncOpenAI, fault: str, code: str
) -> None:
    emulator.push(fault=fault)
    stream = await chat_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi there"}], stream=True
    )
    chunks: list[Any] = []
    with pytest.raises(APIError) as error:
        async with stream:
            async for chunk in stream:
                chunks.append(chunk)
    assert error.value.code == code
    assert completion_text(chunks) == "You said:"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("max_tokens", "length"), ("content_filter", "content_filter")],
)
async def test_a_truncated_completion_says_why(
    emulator: AgentsEmulator, chat_client: AsyncOpenAI, fault: str, reason: str
) -> None:
    emulator.push(fault=fault)
    chunks = await complete(chat_client)
    assert completion_text(chunks) == "You said:"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reason
    assert chunks[-1].usage.completion_tokens == 2


async def test_a_cut_completion_raises_and_an_incomplete_one_just_ends(
    emulator: AgentsEmulator, chat_client: AsyncOpenAI
) -> None:
    emulator.push(fault="disconnect")
    with pytest.raises(APIConnectionError):
        await complete(chat_client)
    emulator.push(fault="incomplete")
    chunks = await complete(chat_client)
    assert completion_text(chunks) == "You said:"
    assert all(c.choices[0].finish_reason is None for c in chunks)


async def test_a_completion_stops_when_its_client_leaves(
    emulator: AgentsEmulator, chat_client: AsyncOpenAI
) -> None:
    emulator.push(tokens=100, token_interval=0.01)
    stream = await chat_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
    for _ in range(200):
        if emulator.cancelled_runs:
            break
        await asyncio.sleep(0.01)
    [completion] = emulator.chat_completions.values()
    assert emulator.cancelled_runs == [completion.id]
    assert completion.status == "cancelled"
    assert len(emulator.deltas) < 100


async def test_chat_completions_are_also_under_azure_openais_path(
    emulator: AgentsEmulator,
) -> None:
    async with AsyncOpenAI(
        base_url=f"{emulator.base_url}/openai/v1", api_key="k", max_retries=0
    ) as client:
        assert completion_text(await complete(client)) == "You said: hello world"
        emulator.push(fault="http_404")
        with pytest.raises(NotFoundError):
            await complete(client)
        with pytest.raises(BadRequestError):
            await client.chat.completions.create(model="m", messages=[])


async def test_the_control_api_reports_the_new_recordings(
    emulator: AgentsEmulator, chat_client: AsyncOpenAI
) -> None:
    control = f"{emulator.base_url}/_emulator"
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{control}/push", json={"fault": "http_403", "operation": "none"}
        )
        assert await response.json() == {"queued": 1}
        with pytest.raises(PermissionDeniedError):
            await complete(chat_client)
        await complete(chat_client)
        deltas = (await (await http.get(f"{control}/deltas")).json())["deltas"]
        assert [d["text"] for d in deltas] == ["You", " said:", " hello", " world"]
        assert deltas[0]["time"] <= time.time()
        config = await (await http.get(f"{control}/config")).json()
        assert config["fault_operation"] is None


async def test_a_response_asks_for_functions_and_the_next_one_takes_their_outputs(
    project: AsyncOpenAI, emulator: AgentsEmulator
) -> None:
    emulator.push(function_calls=['add {"a": 1}', "now"])
    conversation, stream = await open_response(project, "sum it")
    async with stream:
        events = [event async for event in stream]
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    calls = completed.response.output
    assert [type(c) for c in calls] == [ResponseFunctionToolCall] * 2
    assert [(c.name, c.arguments) for c in calls] == [
        ("add", '{"a": 1}'),
        ("now", "{}"),
    ]
    assert response_text(events) == ""
    done = [e.arguments for e in events if e.type.endswith("arguments.done")]
    assert done == ['{"a": 1}', "{}"]

    def answer(*call_ids: str) -> list[dict[str, str]]:
        return [
            {"type": "function_call_output", "call_id": i, "output": "{}"}
            for i in call_ids
        ]

    async def follow_up(items: list[Any], **kwargs: Any) -> list[Any]:
        stream = await project.responses.create(
            conversation=conversation, input=items, stream=True, **kwargs
        )
        async with stream:
            return [event async for event in stream]

    # Every call needs its output, and only those calls have one.
    for refused in (
        answer(calls[0].call_id),
        answer(calls[0].call_id, calls[1].call_id, "call_other"),
    ):
        with pytest.raises(BadRequestError):
            await follow_up(refused, extra_body=AGENT)
    with pytest.raises(BadRequestError, match="No tool output found"):
        await respond(project, "ignore them", conversation=conversation)
    with pytest.raises(BadRequestError):
        await follow_up(
            answer(calls[0].call_id, calls[1].call_id),
            previous_response_id=completed.response.id,
        )
    events = await follow_up(
        answer(calls[0].call_id, calls[1].call_id), extra_body=AGENT
    )
    assert response_text(events) == "You said: sum it"
    assert list(emulator.conversations[conversation].tool_outputs) == [
        calls[0].call_id,
        calls[1].call_id,
    ]
