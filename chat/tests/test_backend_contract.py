"""One contract, run against every backend: what a user of the page or the API
sees must not depend on which agent service answers.

`UpstreamContract` adds what only a backend with a service behind it has to meet,
against the emulator: each fault the service can show ends in its documented error
code, a silent service times out, and a reply that ends early cancels its run.
"""

from typing import Any

import pytest
from django.test import AsyncClient
from django.utils.module_loading import import_string
from pytest_django.fixtures import Settings

from chat.backends import backend_path, get_backend
from chat.backends.base import Completed, Delta, ReplyRequest, RunStarted, ThreadReady
from chat.backends.local import demo_reply
from chat.models import Conversation, Message
from emulator import AgentsEmulator
from emulator.stream import INTERPRETER_CODE, INTERPRETER_LOGS
from testing.replies import astored_reply
from testing.sse import (
    chat,
    chunks_text,
    data_frames,
    parse_sse,
    read_then_leave,
    reply_of,
)
from testing.upstream import answer_through
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

UNICODE = 'Grüße — 日本語 🎉 "quoted" \\ tab\tnew\nline'

# The offline agent's replies are 60-odd tokens: at this pace one takes 12 s,
# long enough to be stopped or left after its first chunk.
LOCAL_SLOW_DELAY_MS = 200

# Each fault the emulator can play, and the error code a client gets for it.
FAULT_CODES = {
    "http_401": "upstream_auth",
    "http_403": "upstream_auth",
    # On a new thread a 404 means the agent itself is missing.
    "http_404": "run_failed",
    "http_429": "rate_limited",
    "http_500_json": "upstream_unavailable",
    "http_500_html": "upstream_unavailable",
    "run_failed": "run_failed",
    "error_event": "upstream_unavailable",
    "disconnect": "upstream_disconnected",
    "incomplete": "incomplete",
    "max_tokens": "incomplete",
    "content_filter": "incomplete",
}
# The OpenAI protocols' truncated replies, and how the error message says why.
# Classic Agents runs have no such ending.
TRUNCATIONS = {"max_tokens": "token limit", "content_filter": "content filter"}
# A project endpoint and credential that must not go together, and the problem
# a Foundry project backend reports for them.
UNSAFE_CREDENTIALS = [
    ("https://x.services.ai.azure.com/api/projects/p", "dev", "loopback"),
    ("http://127.0.0.1:1/api/projects/p", "default", "needs AZURE_AI_CREDENTIAL"),
    ("http://example.com/api/projects/p", "default", "https"),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Each upstream backend is tested with the faults its service can show.
    if "fault" in metafunc.fixturenames:
        metafunc.parametrize(("fault", "code"), list(metafunc.cls.faults.items()))


class BackendContract:
    """Subclasses provide the `backend` fixture (configuring settings), the reply
    the backend gives, and how to make a reply last until it is stopped."""

    thread_prefix: str

    def expected(self, message: str) -> str:
        raise NotImplementedError

    def hold(self, backend: object) -> None:
        """Makes the next reply stay unfinished after its first chunks."""
        raise NotImplementedError

    async def assert_run_cancelled(self, backend: object, reply: Message) -> None:
        """The upstream run of `reply`, which ended early, was cancelled."""

    async def test_it_yields_events_in_contract_order(self, backend: object) -> None:
        events = [e async for e in get_backend().stream_reply(ReplyRequest("hi"))]
        assert type(events[0]) is ThreadReady
        assert type(events[-1]) is Completed
        assert any(type(e) is RunStarted for e in events)
        text = "".join(e.text for e in events if type(e) is Delta)
        assert text == self.expected("hi")

    async def test_it_streams_a_reply(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        data = await reply_of(async_client, "hello")
        assert data[0]["type"] == "metadata"
        assert data[0]["thread_id"].startswith(self.thread_prefix)
        assert data[-1]["type"] == "done"
        assert data[-1]["full_response"] == self.expected("hello")
        reply = await Message.objects.aget(role="assistant")
        assert (reply.status, reply.content) == ("complete", self.expected("hello"))

    async def test_it_keeps_one_thread_across_turns(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        first = await reply_of(async_client, "one")
        conversation_id = first[0]["conversation_id"]
        second = await reply_of(async_client, "two", conversation_id=conversation_id)
        assert second[0]["thread_id"] == first[0]["thread_id"]
        assert second[-1]["full_response"] == self.expected("two")
        conversation = await Conversation.objects.aget()
        assert await conversation.messages.acount() == 4

    async def test_it_round_trips_unicode(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        data = await reply_of(async_client, UNICODE)
        assert chunks_text(data) == data[-1]["full_response"] == self.expected(UNICODE)

    async def test_it_stops_midway(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        self.hold(backend)
        response = await chat(async_client, "stop me")
        stream = aiter(response.streaming_content)
        raw = b""
        while b'"chunk"' not in raw:
            raw += await anext(stream)
        conversation_id = parse_sse(raw)[0]["data"]["conversation_id"]
        stopped = await async_client.post(f"/api/chat/{conversation_id}/stop")
        assert stopped.status_code == 200
        raw += b"".join([part async for part in stream])
        done = data_frames(parse_sse(raw))[-1]
        assert (done["type"], done["status"]) == ("done", "cancelled")
        reply = await astored_reply()
        assert reply.status == "cancelled"
        assert reply.content == done["full_response"] != ""
        await self.assert_run_cancelled(backend, reply)

    async def test_it_stores_what_arrived_when_the_client_leaves(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        self.hold(backend)
        response = await chat(async_client, "leave")
        received = await read_then_leave(response, lambda body: b'"chunk"' in body)
        reply = await astored_reply()
        assert reply.status == "interrupted"
        assert reply.content.startswith(chunks_text(data_frames(parse_sse(received))))
        assert reply.content
        assert (await Conversation.objects.aget()).active_since is None
        await self.assert_run_cancelled(backend, reply)


class TestLocalBackend(BackendContract):
    thread_prefix = "local_"

    @pytest.fixture
    def backend(self, settings: Settings) -> Settings:
        settings.CHAT_BACKEND = "local"
        return settings

    def expected(self, message: str) -> str:
        return demo_reply(message)

    def hold(self, backend: object) -> None:
        assert isinstance(backend, Settings)
        backend.CHAT_LOCAL_DELAY_MS = LOCAL_SLOW_DELAY_MS


class UpstreamContract(BackendContract):
    """A backend talking to an agent service, here the emulator (`backend`)."""

    alias: str
    # The operation that starts a reply, and the settings it cannot do without.
    reply_operation: str
    required_settings: tuple[str, ...]
    faults: dict[str, str] = FAULT_CODES
    # Whether the conversation keeps a new upstream thread when the reply then
    # fails to start, so that a retry does not make another.
    keeps_the_thread_of_a_failed_start = True

    @pytest.fixture
    def backend(self, settings: Settings, emulator: AgentsEmulator) -> AgentsEmulator:
        answer_through(settings, self.alias, emulator)
        return emulator

    def expected(self, message: str) -> str:
        return f"You said: {message}"

    def hold(self, backend: object) -> None:
        assert isinstance(backend, AgentsEmulator)
        backend.configure(hold_after=2)

    async def assert_run_cancelled(self, backend: object, reply: Message) -> None:
        assert isinstance(backend, AgentsEmulator)
        await await_until(lambda: backend.cancelled_runs)
        assert backend.cancelled_runs == [reply.upstream_run_id]

    async def test_it_maps_each_fault_to_its_code(
        self,
        backend: AgentsEmulator,
        async_client: AsyncClient,
        fault: str,
        code: str,
    ) -> None:
        backend.push(fault=fault, fault_after=2)
        data = await reply_of(async_client)
        assert data[0]["type"] == "metadata"
        assert (data[-1]["type"], data[-1]["code"]) == ("error", code)
        message = data[-1]["message"]
        assert message
        assert "Traceback" not in message
        if fault in TRUNCATIONS:
            assert TRUNCATIONS[fault] in message
        user = await Message.objects.aget(role="user")
        reply = await astored_reply()
        assert user.content == "Say hello"
        assert (reply.status, reply.error_code) == ("failed", code)
        streamed = chunks_text(data)
        assert reply.content == streamed
        if not fault.startswith("http_"):
            assert streamed == "You said:", "the part sent before the fault is kept"
        conversation = await Conversation.objects.aget()
        assert conversation.active_since is None
        if self.keeps_the_thread_of_a_failed_start or not fault.startswith("http_"):
            assert conversation.upstream_thread_id.startswith(self.thread_prefix)

    async def test_it_reports_retry_after_on_rate_limits(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        backend.push(fault="http_429_retry_after", retry_after=7)
        data = await reply_of(async_client)
        assert data[-1]["code"] == "rate_limited"
        assert data[-1]["retry_after"] == 7

    async def test_it_retries_a_failed_reply_when_configured(
        self, backend: AgentsEmulator, async_client: AsyncClient, settings: Settings
    ) -> None:
        settings.CHAT_UPSTREAM_RETRIES = 2
        backend.push(fault="http_500_json")
        data = await reply_of(async_client)
        assert data[-1]["type"] == "done"
        calls = [r for r in backend.requests if r.operation == self.reply_operation]
        assert [r.status for r in calls] == [500, 200]

    async def test_it_answers_unavailable_when_nothing_listens(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        await backend.stop()
        data = await reply_of(async_client)
        assert data[-1]["code"] == "upstream_unavailable"
        assert (await astored_reply()).status == "failed"

    async def test_it_times_out_a_silent_upstream_and_cancels_its_run(
        self, backend: AgentsEmulator, async_client: AsyncClient, settings: Settings
    ) -> None:
        settings.CHAT_UPSTREAM_TIMEOUT_SECONDS = 0.3
        backend.push(fault="hang", fault_after=1)
        data = await reply_of(async_client)
        assert data[-1]["code"] == "timeout"
        reply = await astored_reply()
        assert (reply.status, reply.error_code) == ("failed", "timeout")
        assert reply.content == chunks_text(data) == "You"
        await self.assert_run_cancelled(backend, reply)

    async def test_it_sends_keepalives_while_the_upstream_is_silent(
        self, backend: AgentsEmulator, async_client: AsyncClient, settings: Settings
    ) -> None:
        settings.CHAT_KEEPALIVE_SECONDS = 0.05
        backend.push(fault="hang", fault_after=1)
        response = await chat(async_client)
        received = await read_then_leave(response, lambda body: b": keep-alive" in body)
        assert {"comment": "keep-alive"} in parse_sse(received)
        reply = await astored_reply()
        assert (reply.status, reply.content) == ("interrupted", "You")
        await self.assert_run_cancelled(backend, reply)

    async def test_it_relays_and_stores_long_replies_exactly(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        backend.configure(tokens=1000)
        data = await reply_of(async_client)
        expected = "".join(delta.text for delta in backend.deltas)
        assert chunks_text(data) == data[-1]["full_response"] == expected
        assert (await astored_reply()).content == expected

    async def test_it_is_not_ready_without_configuration(
        self, async_client: AsyncClient, settings: Settings
    ) -> None:
        settings.CHAT_BACKEND = self.alias
        for name in self.required_settings:
            setattr(settings, name, "")
        response = await async_client.get("/api/health/ready")
        assert response.status_code == 503
        assert response.json()["failed"] == ["chat_backend"]


class ProjectContract(UpstreamContract):
    """A backend for an agent in an Azure AI Foundry project: the service keeps
    each conversation, and the project endpoint and credential are checked together.
    """

    # The setting that names the agent.
    agent_setting: str
    # The tool kind of the emulator's web search, as the service names it.
    web_search_kind: str

    def upstream_threads(self, backend: AgentsEmulator) -> dict[str, Any]:
        """The emulator's store of the service's conversations, by thread id."""
        raise NotImplementedError

    def follow_up_body(self, message: str) -> dict[str, Any]:
        """What the call that adds `message` to a kept thread carries it in."""
        raise NotImplementedError

    async def test_it_sends_a_follow_up_in_one_call_on_the_kept_thread(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        first = await reply_of(async_client, "one")
        before = len(backend.requests)
        second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
        assert second[0]["thread_id"] == first[0]["thread_id"]
        assert second[-1]["full_response"] == "You said: two"
        # The classic backend reads the agent's name once, in the background.
        calls = [r for r in backend.requests[before:] if r.operation != "agents.get"]
        assert [r.operation for r in calls] == [self.reply_operation]
        for name, value in self.follow_up_body("two").items():
            assert calls[0].body[name] == value
        thread = self.upstream_threads(backend)[first[0]["thread_id"]]
        assert [m.role for m in thread.messages] == ["user", "assistant"] * 2

    async def test_it_starts_a_new_thread_when_the_old_one_is_gone(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        first = await reply_of(async_client, "one")
        del self.upstream_threads(backend)[first[0]["thread_id"]]
        second = await reply_of(async_client, "two", thread_id=first[0]["thread_id"])
        assert second[0]["thread_reset"] is True
        assert second[0]["previous_thread_id"] == first[0]["thread_id"]
        assert second[0]["thread_id"] != first[0]["thread_id"]
        assert second[0]["thread_id"] in self.upstream_threads(backend)
        assert second[-1]["full_response"] == "You said: two"
        conversation = await Conversation.objects.aget()
        assert conversation.upstream_thread_id == second[0]["thread_id"]

    async def test_it_passes_citations_through(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        backend.configure(annotations=True)
        data = await reply_of(async_client)
        citations = [d for d in data if d["type"] == "annotation"]
        assert [c["kind"] for c in citations] == ["url_citation", "file_citation"]
        url, file = citations
        assert url["url"].startswith("https://") and url["title"]
        assert file["file_id"]
        reply = await astored_reply()
        assert reply.annotations == [
            {k: v for k, v in c.items() if k != "type"} for c in citations
        ]

    async def test_it_shows_the_tools_the_agent_uses_before_its_text(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        backend.configure(tools=["file_search", "code_interpreter", "web_search"])
        data = await reply_of(async_client)
        tools = [d for d in data if d["type"] == "tool"]
        kinds = ["file_search", "code_interpreter", self.web_search_kind]
        assert [(t["kind"], t["status"]) for t in tools] == [
            (kind, status) for kind in kinds for status in ("in_progress", "completed")
        ]
        assert [t["name"] for t in tools] == [t["kind"] for t in tools]
        ids = [t["id"] for t in tools]
        assert ids[0::2] == ids[1::2] and len(set(ids)) == 3 and all(ids)
        ran = tools[3]
        assert (ran["input"], ran["output"]) == (INTERPRETER_CODE, INTERPRETER_LOGS)
        assert all("input" not in t for t in tools if t is not ran)
        types = [d["type"] for d in data]
        assert types.index("chunk") > types.index("tool") > types.index("metadata")
        # What a client that reads only chunks sees is unchanged.
        assert chunks_text(data) == data[-1]["full_response"] == "You said: Say hello"
        assert (await astored_reply()).content == "You said: Say hello"

    async def test_it_replays_tool_frames_on_resume(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        backend.configure(tools=["file_search"])
        data = await reply_of(async_client)
        conversation_id = data[0]["conversation_id"]
        response = await async_client.get(
            f"/api/conversations/{conversation_id}/stream", {"last_event_id": 0}
        )
        body = b"".join([part async for part in response.streaming_content])
        replayed = data_frames(parse_sse(body))
        # The same frames; chunks that follow one another come as one.
        assert [d for d in replayed if d["type"] != "chunk"] == [
            d for d in data[1:] if d["type"] != "chunk"
        ]
        assert [d["type"] for d in replayed[:2]] == ["tool", "tool"]
        assert chunks_text(replayed) == chunks_text(data)

    async def test_it_stops_while_a_tool_runs(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        backend.configure(tools=["code_interpreter"], hold_tool=True)
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
        assert [d["status"] for d in data if d["type"] == "tool"] == ["in_progress"]
        assert (data[-1]["type"], data[-1]["status"]) == ("done", "cancelled")
        await self.assert_run_cancelled(backend, await astored_reply())

    async def test_it_fails_the_run_when_the_agent_does_not_exist(
        self, backend: AgentsEmulator, async_client: AsyncClient, settings: Settings
    ) -> None:
        setattr(settings, self.agent_setting, "nobody")
        data = await reply_of(async_client)
        assert data[-1]["code"] == "run_failed"
        assert "nobody" in data[-1]["message"]
        if self.keeps_the_thread_of_a_failed_start:
            # The new thread is kept, so a retry does not make another.
            conversation = await Conversation.objects.aget()
            assert conversation.upstream_thread_id in self.upstream_threads(backend)

    async def test_it_deletes_the_upstream_thread_with_the_conversation(
        self, backend: AgentsEmulator, async_client: AsyncClient
    ) -> None:
        data = await reply_of(async_client)
        response = await async_client.delete(
            f"/api/conversations/{data[0]['conversation_id']}"
        )
        assert response.status_code == 204
        assert data[0]["thread_id"] not in self.upstream_threads(backend)
        assert await Conversation.objects.acount() == 0

    @pytest.mark.parametrize(("endpoint", "credential", "problem"), UNSAFE_CREDENTIALS)
    def test_it_refuses_unsafe_credential_setups(
        self, settings: Settings, endpoint: str, credential: str, problem: str
    ) -> None:
        settings.AZURE_AI_PROJECT_ENDPOINT = endpoint
        settings.AZURE_AI_CREDENTIAL = credential
        problems = import_string(backend_path(self.alias))().configuration_problems()
        assert any(problem in p for p in problems)


class TestAzureAgentsBackend(ProjectContract):
    alias = "azure_agents"
    thread_prefix = "thread_"
    reply_operation = "runs.create"
    required_settings = ("AZURE_AI_PROJECT_ENDPOINT", "AZURE_AI_AGENT_ID")
    agent_setting = "AZURE_AI_AGENT_ID"
    web_search_kind = "bing_grounding"
    # Classic Agents runs are never cut short by a token limit or a filter.
    faults = {f: c for f, c in FAULT_CODES.items() if f not in TRUNCATIONS}
    keeps_the_thread_of_a_failed_start = False

    def upstream_threads(self, backend: AgentsEmulator) -> dict[str, Any]:
        return backend.threads

    def follow_up_body(self, message: str) -> dict[str, Any]:
        return {"additional_messages": [{"role": "user", "content": message}]}


class TestFoundryBackend(ProjectContract):
    alias = "foundry"
    thread_prefix = "conv_"
    reply_operation = "responses.create"
    required_settings = ("AZURE_AI_PROJECT_ENDPOINT", "AZURE_AI_AGENT_NAME")
    agent_setting = "AZURE_AI_AGENT_NAME"
    web_search_kind = "web_search"

    def upstream_threads(self, backend: AgentsEmulator) -> dict[str, Any]:
        return backend.conversations

    def follow_up_body(self, message: str) -> dict[str, Any]:
        return {"input": message}

    async def assert_run_cancelled(self, backend: object, reply: Message) -> None:
        await super().assert_run_cancelled(backend, reply)
        assert isinstance(backend, AgentsEmulator)
        upstream = backend.responses[reply.upstream_run_id]
        assert upstream.status == "cancelled"
        assert upstream.text.startswith(reply.content)
        # Stopped through the API: a background response goes on without its
        # stream, so closing the stream alone would not stop it.
        assert upstream.background
        cancels = [r for r in backend.requests if r.operation == "responses.cancel"]
        assert [r.status for r in cancels] == [200]


class TestOpenAIBackend(UpstreamContract):
    alias = "openai"
    thread_prefix = "oa_"
    reply_operation = "chat.completions.create"
    required_settings = ("OPENAI_BASE_URL", "OPENAI_MODEL")

    async def assert_run_cancelled(self, backend: object, reply: Message) -> None:
        await super().assert_run_cancelled(backend, reply)
        assert isinstance(backend, AgentsEmulator)
        assert backend.chat_completions[reply.upstream_run_id].status == "cancelled"
