"""SQLite's writes (chat.store.SQLiteWriter): one thread, in order; steps that
queue up while one runs are written in one transaction, each in a savepoint of
its own, and each hears its own ending once that transaction commits."""

import asyncio
import functools
import gc
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import IntegrityError, connection
from django.test import AsyncClient

from chat import store
from chat.models import Conversation, Message
from emulator import AgentsEmulator
from testing.sse import reply_of

pytestmark = pytest.mark.django_db(transaction=True)
sqlite_only = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="the writer thread is SQLite's"
)

DEADLINE = 30.0


@pytest.fixture
def writer() -> Iterator[store.SQLiteWriter]:
    yield store.SQLiteWriter()


class Held:
    """A first step that keeps the writer busy until released, so that the
    steps sent meanwhile queue up behind it."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.running.set()
        self.release.wait(DEADLINE)
        return "held"


def new_conversation(title: str) -> tuple[str, bool, int]:
    """Stores a conversation; where it ran: in a transaction, in how many
    savepoints."""
    Conversation.objects.create(backend="azure_agents", title=title)
    return title, connection.in_atomic_block, len(connection.savepoint_ids)


def same_id_twice(conversation_id: uuid.UUID) -> None:
    Conversation.objects.create(id=conversation_id, backend="azure_agents")


def refused() -> None:
    raise store.NotFound


@store._write_step
def broken_connection() -> None:
    """A statement the database refuses as it would on a dropped connection
    (OperationalError), which the write steps report as Retryable."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM table_that_is_not_there")


async def queued_behind(
    writer: store.SQLiteWriter, *steps: Callable[[], Any]
) -> list[Any]:
    """Runs `steps` on the writer while a first step holds it: they are queued
    together. What each returned or raised, in order."""
    loop = asyncio.get_running_loop()
    held = Held()
    first = loop.run_in_executor(writer, held)
    await asyncio.to_thread(held.running.wait, DEADLINE)
    futures = [loop.run_in_executor(writer, step) for step in steps]
    held.release.set()
    assert await first == "held"
    async with asyncio.timeout(DEADLINE):
        return await asyncio.gather(*futures, return_exceptions=True)


@sqlite_only
async def test_a_step_alone_runs_as_it_is(writer: store.SQLiteWriter) -> None:
    loop = asyncio.get_running_loop()
    title, in_transaction, savepoints = await loop.run_in_executor(
        writer, functools.partial(new_conversation, "alone")
    )
    assert (title, in_transaction, savepoints) == ("alone", False, 0)
    assert await Conversation.objects.filter(title="alone").aexists()


@sqlite_only
async def test_steps_that_queue_up_share_a_transaction_and_each_hears_its_own_ending(
    writer: store.SQLiteWriter,
) -> None:
    taken = uuid.uuid4()
    await Conversation.objects.acreate(id=taken, backend="azure_agents")
    outcomes = await queued_behind(
        writer,
        functools.partial(new_conversation, "one"),
        refused,
        functools.partial(new_conversation, "two"),
        functools.partial(same_id_twice, taken),
        functools.partial(new_conversation, "three"),
    )

    one, not_found, two, duplicate, three = outcomes
    # One transaction, a savepoint each.
    assert one == ("one", True, 1)
    assert two == ("two", True, 1)
    assert three == ("three", True, 1)
    assert isinstance(not_found, store.NotFound)
    assert isinstance(duplicate, IntegrityError)
    # The failed steps took nothing with them.
    titles = {c.title async for c in Conversation.objects.exclude(pk=taken)}
    assert titles == {"one", "two", "three"}


class Result:
    """What a step returns, weakly referable."""


@sqlite_only
async def test_the_writer_holds_no_result_while_it_waits_for_the_next_step(
    writer: store.SQLiteWriter,
) -> None:
    outcomes = await queued_behind(writer, Result, Result)
    alone = await asyncio.get_running_loop().run_in_executor(writer, Result)
    kept = [weakref.ref(result) for result in [*outcomes, alone]]
    del outcomes, alone
    # The writer lets go once it is back waiting: a moment after its last step.
    assert await asyncio.to_thread(_freed, kept)


def _freed(refs: list[weakref.ref[Any]]) -> bool:
    deadline = time.monotonic() + DEADLINE
    while any(ref() is not None for ref in refs):
        if time.monotonic() > deadline:
            return False
        gc.collect()
        time.sleep(0.01)
    return True


@sqlite_only
async def test_a_connection_that_fails_under_one_step_fails_the_whole_batch_retryably(
    writer: store.SQLiteWriter,
) -> None:
    outcomes = await queued_behind(
        writer,
        functools.partial(new_conversation, "before"),
        broken_connection,
        functools.partial(new_conversation, "after"),
    )

    assert all(isinstance(outcome, store.Retryable) for outcome in outcomes)
    # Nothing of the batch is stored: each step is run again by `retrying`.
    assert not await Conversation.objects.aexists()
    # The writer goes on, on a fresh connection.
    loop = asyncio.get_running_loop()
    title, *_ = await loop.run_in_executor(
        writer, functools.partial(new_conversation, "again")
    )
    assert title == "again"
    assert await Conversation.objects.filter(title="again").aexists()


async def test_a_burst_of_new_chats_is_stored_exactly(azure: AgentsEmulator) -> None:
    """Through the relay: new chats at once, their turns and replies written by
    the one writer thread on SQLite, in batches when they queue up (on
    PostgreSQL each on a connection of its own)."""
    count = 24
    replies = await asyncio.gather(
        *(reply_of(AsyncClient(), f"question {n}") for n in range(count))
    )

    assert all(frames[-1]["type"] == "done" for frames in replies)
    for n, frames in enumerate(replies):
        conversation_id = frames[0]["conversation_id"]
        stored = [
            (m.role, m.content)
            async for m in Message.objects.filter(conversation_id=conversation_id)
        ]
        assert sorted(stored) == sorted(
            [
                (Message.Role.USER, f"question {n}"),
                (Message.Role.ASSISTANT, frames[-1]["full_response"]),
            ]
        )
    assert await Conversation.objects.filter(active_since__isnull=False).acount() == 0
