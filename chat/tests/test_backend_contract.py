"""One contract, run against every backend: what a user of the page or the API
sees must not depend on which agent service answers."""

import asyncio

import pytest
from django.test import AsyncClient

from chat.backends import get_backend
from chat.backends.base import Completed, Delta, ReplyRequest, RunStarted, ThreadReady
from chat.backends.local import demo_reply
from chat.models import Conversation, Message
from emulator import AgentsEmulator
from testing.sse import chat, data_frames, parse_sse, read_stream

pytestmark = pytest.mark.django_db(transaction=True)

UNICODE = 'Grüße — 日本語 🎉 "quoted" \\ tab\tnew\nline'


class BackendContract:
    """Subclasses provide the `backend` fixture (configuring settings) and
    `expected(message)`, the reply the backend gives to `message`."""

    def expected(self, message: str) -> str:
        raise NotImplementedError

    def slow_down(self, backend: object) -> None:
        """Makes replies long and slow enough to stop or abandon midway."""
        raise NotImplementedError

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
        data = data_frames(await read_stream(await chat(async_client, "hello")))
        assert data[0]["type"] == "metadata"
        assert data[0]["thread_id"]
        assert data[-1]["type"] == "done"
        assert data[-1]["full_response"] == self.expected("hello")
        reply = await Message.objects.aget(role="assistant")
        assert (reply.status, reply.content) == ("complete", self.expected("hello"))

    async def test_it_keeps_one_thread_across_turns(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        first = data_frames(await read_stream(await chat(async_client, "one")))
        second = data_frames(
            await read_stream(
                await chat(
                    async_client,
                    "two",
                    conversation_id=first[0]["conversation_id"],
                )
            )
        )
        assert second[0]["thread_id"] == first[0]["thread_id"]
        assert second[-1]["full_response"] == self.expected("two")
        conversation = await Conversation.objects.aget()
        assert await conversation.messages.acount() == 4

    async def test_it_round_trips_unicode(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        data = data_frames(await read_stream(await chat(async_client, UNICODE)))
        chunks = "".join(d["content"] for d in data if d["type"] == "chunk")
        assert chunks == data[-1]["full_response"] == self.expected(UNICODE)

    async def test_it_stops_midway(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        self.slow_down(backend)
        response = await chat(async_client, "stop me")
        stream = aiter(response.streaming_content)
        raw = b""
        while raw.count(b'"chunk"') < 2:
            raw += await anext(stream)
        conversation_id = parse_sse(raw)[0]["data"]["conversation_id"]
        stopped = await async_client.post(f"/api/chat/{conversation_id}/stop")
        assert stopped.status_code == 200
        raw += b"".join([part async for part in stream])
        done = data_frames(parse_sse(raw))[-1]
        assert (done["type"], done["status"]) == ("done", "cancelled")
        reply = await Message.objects.aget(role="assistant")
        assert reply.status == "cancelled"
        assert reply.content == done["full_response"] != ""

    async def test_it_stores_what_arrived_when_the_client_leaves(
        self, backend: object, async_client: AsyncClient
    ) -> None:
        self.slow_down(backend)
        response = await chat(async_client, "leave")
        two_chunks = asyncio.Event()
        received: list[bytes] = []

        async def consume() -> None:
            async for part in response.streaming_content:
                received.append(part)
                if b"".join(received).count(b'"chunk"') >= 2:
                    two_chunks.set()

        task = asyncio.create_task(consume())
        await two_chunks.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        reply = await Message.objects.aget(role="assistant")
        assert reply.status == "interrupted"
        assert reply.content
        assert (await Conversation.objects.aget()).active_since is None


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def backend(self, settings) -> object:
        settings.CHAT_BACKEND = "local"
        return settings

    def expected(self, message: str) -> str:
        return demo_reply(message)

    def slow_down(self, backend: object) -> None:
        backend.CHAT_LOCAL_DELAY_MS = 20


class TestAzureAgentsBackend(BackendContract):
    @pytest.fixture
    def backend(self, azure: AgentsEmulator) -> AgentsEmulator:
        return azure

    def expected(self, message: str) -> str:
        return f"You said: {message}"

    def slow_down(self, backend: object) -> None:
        assert isinstance(backend, AgentsEmulator)
        backend.configure(tokens=300, token_interval=0.01)


class TestFoundryBackend(BackendContract):
    @pytest.fixture
    def backend(self, foundry: AgentsEmulator) -> AgentsEmulator:
        return foundry

    def expected(self, message: str) -> str:
        return f"You said: {message}"

    def slow_down(self, backend: object) -> None:
        assert isinstance(backend, AgentsEmulator)
        backend.configure(tokens=300, token_interval=0.01)


class TestOpenAIBackend(BackendContract):
    @pytest.fixture
    def backend(self, openai_backend: AgentsEmulator) -> AgentsEmulator:
        return openai_backend

    def expected(self, message: str) -> str:
        return f"You said: {message}"

    def slow_down(self, backend: object) -> None:
        assert isinstance(backend, AgentsEmulator)
        backend.configure(tokens=300, token_interval=0.01)
