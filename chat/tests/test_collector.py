"""The garbage collector on a clock (chat.lifecycle.tune_garbage_collector): the
young generation every quarter second, survivors frozen, everything only while no
reply streams."""

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from chat import lifecycle, relay
from testing.waiting import await_until

pytestmark = pytest.mark.no_database

DEADLINE = 30.0


class Node:
    """Garbage in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def _dropped_cycle() -> asyncio.Event:
    """Garbage in a reference cycle, dropped: the event is set once it is freed."""
    freed = asyncio.Event()
    weakref.finalize(Node(), freed.set)
    return freed


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection from now on; the collector is CPython's
    own again afterwards."""
    seen: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)
    lifecycle.restore_garbage_collector()


async def test_a_cycle_dropped_at_once_is_freed_by_the_next_young_collection(
    collections: list[int],
) -> None:
    lifecycle.tune_garbage_collector()
    assert not gc.isenabled()  # no collection on allocation counts
    freed = _dropped_cycle()
    async with asyncio.timeout(DEADLINE):
        await freed.wait()
    assert 0 in collections


async def test_survivors_are_frozen_and_wait_for_a_full_collection_while_none_streams(
    collections: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "FULL_COLLECTION_SECONDS", 0.0)
    monkeypatch.setattr(lifecycle, "IDLE_SECONDS", 1.0)
    streaming = [object()]
    monkeypatch.setattr(relay, "open_replies", lambda: list(streaming))
    lifecycle.tune_garbage_collector()
    collections.clear()  # its start-up collection of everything
    freed = asyncio.Event()
    node = Node()
    weakref.finalize(node, freed.set)
    frozen = gc.get_freeze_count()
    # It survives a young collection and is frozen with the other survivors.
    await await_until(lambda: gc.get_freeze_count() > frozen and len(collections) >= 1)
    assert all(o is not node for o in gc.get_objects())
    del node
    seen = len(collections)
    await await_until(lambda: len(collections) >= seen + 3)
    # Young collections no longer walk it, and a reply streams: it stays.
    assert not freed.is_set()
    assert set(collections) == {0}
    streaming.clear()
    async with asyncio.timeout(DEADLINE):
        await freed.wait()
    assert 2 in collections


async def test_a_tick_in_which_no_request_began_or_ended_skips_its_young_collection(
    collections: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only requests that begin or end leave survivors for the young generation
    to walk: a tick without one skips the walk, and the next one's tick
    collects."""
    monkeypatch.setattr(lifecycle, "QUIET_YOUNG_COLLECTION_SECONDS", 3600.0)
    ticks = [0]

    def open_replies() -> list[relay.Reply]:  # asked once per tick
        ticks[0] += 1
        return []

    monkeypatch.setattr(relay, "open_replies", open_replies)
    turnover = [0]
    lifecycle.tune_garbage_collector(turnover=lambda: turnover[0])
    collections.clear()  # its start-up collection of everything
    freed = _dropped_cycle()
    await await_until(lambda: ticks[0] >= 4)
    assert collections == []
    assert not freed.is_set()
    turnover[0] += 1  # a request began (or ended)
    async with asyncio.timeout(DEADLINE):
        await freed.wait()
    assert collections == [0]


async def test_while_no_request_comes_or_goes_the_young_generation_waits_a_while(
    collections: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "QUIET_YOUNG_COLLECTION_SECONDS", 1.0)
    lifecycle.tune_garbage_collector(turnover=lambda: 0)
    collections.clear()
    freed = _dropped_cycle()
    async with asyncio.timeout(DEADLINE):
        await freed.wait()
    assert collections == [0]


async def test_the_servers_collector_counts_the_requests_that_begin_and_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lifespan's start-up hands the collector's clock the count of requests
    the application began and ended (chatsite.asgi)."""
    from chatsite import asgi

    given: list[Any] = []

    def tune(turnover: Any = None) -> None:
        given.append(turnover)

    monkeypatch.setattr(lifecycle, "tune_garbage_collector", tune)
    for name in ("watch_for_termination", "watch_for_count_requests"):
        monkeypatch.setattr(lifecycle, name, lambda: None)

    async def no_heartbeat() -> None:
        pass

    monkeypatch.setattr(lifecycle, "start_heartbeat", no_heartbeat)
    messages = iter([{"type": "lifespan.startup"}])
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)
        raise StopAsyncIteration  # out of the lifespan's loop, started

    with pytest.raises(StopAsyncIteration):
        await asgi.application({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}]
    (turnover,) = given
    before = turnover()
    await _get(asgi.application, "/api/health")
    await _get(asgi.application, "/api/health")
    assert turnover() == before + 4  # each began and ended


async def _get(app: Any, path: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])
    done = asyncio.Event()
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        message = next(requests, None)
        if message is None:
            await done.wait()
            return {"type": "http.disconnect"}
        return message

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    assert statuses == [200]
