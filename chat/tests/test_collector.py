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
    freed = asyncio.Event()
    node = Node()
    weakref.finalize(node, freed.set)
    del node
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
