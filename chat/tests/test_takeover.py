"""A reply whose writer died is finished by the process a reader reaches: its log
is rebuilt from Redis, the upstream run is finished where the service keeps it,
and the reply is stored once. The dead writer is real state: an upstream run
started and left by the real SDK, its frames in a real Redis Stream, and a
conversation locked by a process whose lease does not exist."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from django.test import AsyncClient
from django.utils import timezone

from chat import bus, frames
from chat.backends import get_backend
from chat.backends.base import Delta, ReplyRequest, RunStarted, ThreadReady
from chat.models import Conversation, Message
from chat.replylog import Mirror, ReplyLog, redis_key
from emulator import AgentsEmulator
from testing.redisdb import scratch_redis
from testing.sse import chunks_text, data_frames, parse_sse
from testing.upstream import answer_through, token_text
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_DB = 9  # this module's own database
DEAD = "a-host:1:dead"  # a process id with no lease: it died
TOKENS = 8
BEFORE = 3  # deltas the dead writer logged


@pytest.fixture
async def db(settings: Any) -> AsyncIterator[redis.Redis]:
    settings.CHAT_ON_DISCONNECT = "continue"
    # A dead writer is confirmed after a second look, a fifth of a lease later.
    settings.CHAT_LEASE_SECONDS = 3
    async with scratch_redis(settings, REDIS_DB) as admin:
        yield admin


async def died_writing(deltas: int) -> tuple[Conversation, uuid.UUID, ReplyLog]:
    """What a process leaves when it dies after logging `deltas` deltas of a
    reply: the upstream run going on, the log in Redis, the lock held."""
    backend = get_backend()
    conversation = await Conversation.objects.acreate(backend=backend.alias, title="hi")
    await Message.objects.acreate(
        conversation=conversation,
        role=Message.Role.USER,
        content="hi",
        created_at=timezone.now(),
    )
    message_id = uuid.uuid4()
    log = ReplyLog()
    thread_id = None
    events = backend.stream_reply(ReplyRequest(message="hi"))
    async for event in events:
        match event:
            case ThreadReady(thread_id=thread_id):
                pass
            case RunStarted(run_id=run_id):
                log.run_id = run_id
            case Delta(text=text, cursor=cursor):
                if not len(log):
                    log.append(
                        frames.Metadata(
                            conversation_id=str(conversation.pk),
                            thread_id=thread_id,
                            message_id=str(message_id),
                            **backend.describe(),
                        )
                    )
                log.append_chunk(text)
                log.cursor = cursor
                deltas -= 1
                if not deltas:
                    break
    await events.aclose()  # the process is gone; upstream, the run is not
    mirror = Mirror(log, redis_key(message_id), bus.client()).start()
    await await_until(lambda: mirror.written == len(log) - 1)
    mirror.stop()
    await Conversation.objects.filter(pk=conversation.pk).aupdate(
        upstream_thread_id=thread_id or "",
        active_since=timezone.now(),
        active_holder=DEAD,
        active_message_id=message_id,
        active_run_id=log.run_id or "",
    )
    return conversation, message_id, log


async def resume(conversation: Conversation, last_id: int) -> list[dict]:
    response = await AsyncClient().get(
        f"/api/conversations/{conversation.pk}/stream",
        headers={"Last-Event-ID": str(last_id)},
    )
    assert response.status_code == 200
    raw = b"".join([part async for part in response.streaming_content])
    return [f for f in parse_sse(raw) if "data" in f]


async def check_finished_once(
    conversation: Conversation, message_id: uuid.UUID, status: str, text: str
) -> None:
    replies = [
        m
        async for m in Message.objects.filter(
            conversation=conversation, role=Message.Role.ASSISTANT
        )
    ]
    assert [(m.pk, m.status, m.content) for m in replies] == [
        (message_id, status, text)
    ]
    await conversation.arefresh_from_db()
    assert conversation.active_since is None, "the conversation is left busy"


@pytest.fixture(params=["azure_agents", "foundry"])
def resumable(
    request: pytest.FixtureRequest, settings: Any, emulator: AgentsEmulator
) -> AgentsEmulator:
    answer_through(settings, request.param, emulator)
    return emulator


async def test_a_run_is_finished_exactly_after_its_writer_died(
    resumable: AgentsEmulator, db: redis.Redis
) -> None:
    """azure_agents polls the classic run to its end and appends the rest;
    foundry re-attaches to the background response after the logged cursor."""
    resumable.push(tokens=TOKENS)
    conversation, message_id, log = await died_writing(BEFORE)
    seen = len(log) - 1

    resumed = await resume(conversation, seen)
    ids = [f["id"] for f in resumed]
    # Chunks that queued up come joined, with the id of their last part.
    assert ids == sorted(set(ids)) and ids[0] > seen
    assert log.text + chunks_text(data_frames(resumed)) == token_text(TOKENS)
    final = data_frames(resumed)[-1]
    assert final["type"] == "done" and final["status"] == "complete"
    assert final["full_response"] == token_text(TOKENS)
    await check_finished_once(conversation, message_id, "complete", token_text(TOKENS))


async def test_a_second_reader_after_the_take_over_gets_the_same_reply(
    azure: AgentsEmulator, db: redis.Redis
) -> None:
    azure.push(tokens=TOKENS)
    conversation, _message_id, log = await died_writing(BEFORE)
    first = await resume(conversation, len(log) - 1)
    again = await resume(conversation, -1)
    assert chunks_text(data_frames(again)) == token_text(TOKENS)
    assert data_frames(again)[-1] == data_frames(first)[-1]


async def test_a_reply_that_cannot_be_finished_ends_as_lost_and_keeps_its_text(
    openai_backend: AgentsEmulator, db: redis.Redis
) -> None:
    openai_backend.push(tokens=TOKENS)
    conversation, message_id, log = await died_writing(BEFORE)

    resumed = await resume(conversation, len(log) - 1)
    final = data_frames(resumed)[-1]
    assert (final["type"], final["code"]) == ("error", "producer_lost")
    await check_finished_once(conversation, message_id, "interrupted", log.text)


async def test_a_stop_for_a_dead_writers_reply_takes_it_over_and_cancels_the_run(
    azure: AgentsEmulator, db: redis.Redis
) -> None:
    azure.push(tokens=TOKENS, hold_after=BEFORE)
    conversation, message_id, log = await died_writing(BEFORE)

    response = await AsyncClient().post(f"/api/chat/{conversation.pk}/stop")
    assert response.status_code == 200, response.content
    resumed = await resume(conversation, len(log) - 1)
    final = data_frames(resumed)[-1]
    assert (final["type"], final["status"]) == ("done", "cancelled")
    await await_until(lambda: azure.cancelled_runs == [log.run_id])
    azure.release()
    await check_finished_once(conversation, message_id, "cancelled", log.text)
