"""The reply log's Redis Stream copy, against a real Redis: another process reads
exactly the frames, ids and bytes the writer's clients got, rebuilds the log to
finish the reply, and the live stream never depends on Redis answering."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat import bus, frames, lease
from chat.replylog import Mirror, RemoteLog, ReplyLog, redis_key
from testing import redisdb
from testing.gate import Gate
from testing.redisdb import scratch_redis
from testing.waiting import await_until

REDIS_PORT = 6379
REDIS_DB = 11
META = frames.Metadata(
    conversation_id="c",
    thread_id="t",
    message_id="m",
    backend="b",
    agent="a",
    offline=False,
)
CITE = frames.Annotation(kind="url_citation", text=None, url="https://x", title=None)
DONE = frames.Done(
    full_response="",
    timestamp="t",
    message_id="m",
    conversation_id="c",
    status="complete",
    usage=None,
)


def redis_url(port: int = REDIS_PORT) -> str:
    return redisdb.url(REDIS_DB, f"127.0.0.1:{port}")


@pytest.fixture
async def db(settings: Any) -> AsyncIterator[redis.Redis]:
    async with scratch_redis(settings, REDIS_DB) as admin:
        yield admin


async def mirrored(log: ReplyLog, message_id: str) -> Mirror:
    client = bus.client()
    assert client is not None
    return Mirror(log, redis_key(message_id), client).start()


async def read_all(remote: RemoteLog, last_id: int) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    while not remote.ended:
        batch = await remote.read(last_id, 5.0)
        assert batch, "the log stopped short of its final frame"
        out.extend(batch)
        last_id = batch[-1][0]
    return out


def sse(events: list[tuple[int, Any]]) -> bytes:
    return b"".join(frames.encode(event_id, frame) for event_id, frame in events)


async def test_another_process_reads_the_same_ids_and_bytes(db: redis.Redis) -> None:
    log = ReplyLog()
    mirror = await mirrored(log, "m1")
    log.append(META)
    for index in range(50):
        log.append_chunk(f"tok{index} ")
        if index == 20:
            log.append(CITE)
        if index % 7 == 0:
            await asyncio.sleep(0)  # lets the copy run between some appends
    log.append(DONE, final=True)
    await mirror.wait_copied()
    assert not mirror.degraded

    for last_id in (-1, 0, 1, 5, 21, 22, 40, len(log) - 2):
        remote = RemoteLog(bus.client(), "m1")
        assert sse(await read_all(remote, last_id)) == sse(list(log.after(last_id)))
    # Fewer Redis calls than frames: the copies were batched.
    assert mirror.commands <= len(log) + 2


async def test_many_replies_share_one_connection_and_few_round_trips(
    db: redis.Redis,
) -> None:
    """Hundreds of replies stream at once: their copies go in shared pipelines,
    so a pool of one connection is enough and none fails."""
    client = redis.Redis.from_url(redis_url(), max_connections=1)
    try:
        logs = [ReplyLog() for _ in range(300)]
        mirrors = [
            Mirror(log, redis_key(f"many-{n}"), client).start()
            for n, log in enumerate(logs)
        ]
        for index in range(20):
            for log in logs:
                log.append_chunk(f"t{index} ")
            await asyncio.sleep(0)
        for log in logs:
            log.append(DONE, final=True)
        await asyncio.gather(*(mirror.wait_copied() for mirror in mirrors))
        assert not any(mirror.degraded for mirror in mirrors)
        remote = RemoteLog(client, "many-299")
        assert sse(await read_all(remote, -1)) == sse(list(logs[-1].after(-1)))
    finally:
        await client.aclose()


async def test_the_log_expires_after_the_final_frame(db: redis.Redis, settings) -> None:
    settings.CHAT_REPLAY_TTL_SECONDS = 30
    settings.CHAT_MAX_STREAM_SECONDS = 900
    log = ReplyLog()
    mirror = await mirrored(log, "m2")
    log.append(META)
    log.append_chunk("a")
    await await_until(lambda: mirror.written == 1)
    assert 30 < await db.ttl(redis_key("m2")) <= 930
    log.append(DONE, final=True)
    await mirror.wait_copied()
    assert 0 < await db.ttl(redis_key("m2")) <= 30


async def test_a_log_is_rebuilt_with_its_cursor_and_run(db: redis.Redis) -> None:
    log = ReplyLog()
    mirror = await mirrored(log, "m3")
    log.append(META)
    log.run_id = "resp_1"
    for index in range(10):
        log.append_chunk(f"t{index}")
        log.cursor = 100 + index
        await asyncio.sleep(0)
    await await_until(lambda: mirror.written == 10)
    restored = await RemoteLog(bus.client(), "m3").restore()
    assert restored is not None
    assert (restored.text, restored.cursor, restored.run_id) == (
        log.text,
        109,
        "resp_1",
    )
    assert sse(list(restored.after(-1))) == sse(list(log.after(-1)))
    assert not restored.ended
    log.append(DONE, final=True)
    await mirror.wait_copied()


async def test_the_live_log_goes_on_while_redis_is_gone_and_catches_up(
    db: redis.Redis, settings: Any
) -> None:
    async with Gate(REDIS_PORT) as gate:
        settings.REDIS_URL = redis_url(gate.port)
        log = ReplyLog()
        mirror = await mirrored(log, "m4")
        log.append(META)
        log.append_chunk("before ")
        await await_until(lambda: mirror.written == 1)

        await gate.shut()
        for index in range(20):
            log.append_chunk(f"during{index} ")
            await asyncio.sleep(0)
        # The writer's own readers have everything at once.
        assert log.text.endswith("during19 ")
        await await_until(lambda: mirror.degraded)

        await gate.open()
        log.append(DONE, final=True)
        await mirror.wait_copied()
        assert not mirror.degraded
        remote = RemoteLog(db, "m4")
        assert sse(await read_all(remote, -1)) == sse(list(log.after(-1)))


async def test_a_stop_reaches_the_process_that_listens(db: redis.Redis) -> None:
    heard: list[Any] = []
    await bus.ensure_listening(heard.append)
    conversation = uuid.uuid4()
    assert await bus.ask_to_stop(lease.PROCESS_ID, conversation)
    await await_until(lambda: heard == [conversation])
    assert not await bus.ask_to_stop("a-process-that-is-gone", conversation)


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(st.one_of(st.text(max_size=4), st.none()), max_size=60),
    data=st.data(),
)
def test_any_log_reads_back_the_same_from_any_id(
    db: redis.Redis, items: list[str | None], data: st.DataObject
) -> None:
    last_id = data.draw(st.integers(-1, len(items)))

    async def check() -> None:
        client = redis.Redis.from_url(redis_url())
        key_id = f"prop-{os.getpid()}"
        try:
            await client.delete(redis_key(key_id))
            log = ReplyLog()
            mirror = Mirror(log, redis_key(key_id), client).start()
            for item in items:
                if item is None:
                    log.append(CITE)
                else:
                    log.append_chunk(item)
            log.append(DONE, final=True)
            await mirror.wait_copied()
            remote = RemoteLog(client, key_id)
            # A reader missing at least the final frame.
            start = min(last_id, len(log) - 2)
            assert sse(await read_all(remote, start)) == sse(list(log.after(start)))
        finally:
            await client.delete(redis_key(key_id))
            await client.aclose()

    asyncio.run(check())
