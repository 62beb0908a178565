"""Database work of a chat turn, one transaction (and one thread hop) per step.

The relay touches the database twice per reply — before the upstream call and
once at the end — never per chunk.

A connection can die under any step (a failover, a restart, an idle timeout on
the server): the step then closes it, so that the pool hands out a fresh one,
and raises `Retryable`; `retrying` runs a step again, bounded, with backoff.
Steps that may run twice are idempotent: storing a reply is keyed by its id.
"""

import asyncio
import contextvars
import functools
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, models, transaction
from django.db.models import Q
from django.db.models.sql import InsertQuery
from django.utils import timezone

from chat import lease
from chat.backends.base import PRODUCER_LOST, Turn
from chat.models import Conversation, Message, Owner
from chatsite import threads

logger = logging.getLogger(__name__)


class NotFound(Exception):
    pass


class Busy(Exception):
    pass


class NotLast(Exception):
    """A regenerate or an edit whose message is not the conversation's last
    (or a conversation without one)."""


# What a turn does with the conversation's last user message.
NEW = "new"  # a new message after it
REGENERATE = "regenerate"  # another reply to it
EDIT = "edit"  # a new message in its place


class Retryable(Exception):
    """The database connection failed under a step; running it again may work."""


UNLOCKED = {
    "active_since": None,
    "active_run_id": "",
    "active_holder": "",
    "active_message_id": None,
}

# A reply stored by another process than the one that took the question is
# timed this much after it (the question has the lock's time): it lists after it.
AFTER_QUESTION = timedelta(milliseconds=1)

# Seconds to wait before each further try of a step whose connection failed.
RETRY_DELAYS = (0.1, 0.5, 2.0)


def _reply_step[**P, R](
    step: Callable[P, R],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """A step a reply's producer takes, which may outlive the request that
    started it (and that request's thread): it runs on one of the shared
    threads (chatsite.threads), or SQLite's writer thread, and gives a pooled
    connection back when done."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        finally:
            if connection.vendor == "postgresql":
                connection.close()  # back to the pool: cheap
            # SQLite keeps its file open; reopening costs more than it holds.

    async def on_a_shared_thread(*args: P.args, **kwargs: P.kwargs) -> R:
        executor = _sqlite_writer() or threads.next_executor()
        return await _on(executor, run, *args, **kwargs)

    return on_a_shared_thread


# SQLite has one writer at a time, and a writer that finds the file locked
# sleeps in SQLite's busy handler (1, 2, 5, 10 ms and longer) before it looks
# again. So SQLite's write steps all run on one thread of their own
# (`_sqlite_writer`): they queue there, each starting as soon as the last ends,
# and none of the shared threads sits blocked on the file while the requests
# bound to it (Django's request signals, their reads) wait behind it. Queued on
# the event loop instead, each write waited for the loop's next turns, and under
# a thousand streams the writes fell behind.
#
# Steps that queued while the writer was busy are written in one transaction
# (`SQLiteWriter`): a commit writes every page the transaction changed to the
# write-ahead log, and a burst of new chats changes the same few pages (the
# tables' last leaves, their indexes) once per turn. 500 new turns at once took
# 0.43-0.49 ms each one by one, 0.35-0.38 ms in batches. A step hears its ending
# when its batch commits: at most this many steps, about 11 ms of them.
MAX_BATCH = 32


class SQLiteWriter(Executor):
    """One thread that runs SQLite's write steps in order. A step that finds no
    other waiting runs as it is; steps that queued up while one ran go in one
    transaction, each in a savepoint of its own, and hear how they ended once it
    commits. A step that fails (Busy, NotFound, a constraint) is rolled back to
    its savepoint and the others go on; a connection that fails under any of
    them, or a commit that fails, makes every step of the batch `Retryable`
    (none of them is stored, and `retrying` runs each again)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._work, name="sqlite-writer", daemon=True
        )
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future[Any] = Future()
        self._jobs.put(_Job(future, functools.partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while True:
            # No batch is held while the next is awaited: its futures hold
            # their results (the turns stored, their model instances).
            self._write(self._next_batch())

    def _next_batch(self) -> list["_Job"]:
        batch = [self._jobs.get()]
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _write(self, batch: list["_Job"]) -> None:
        if len(batch) == 1:
            batch[0].run()
        elif batch:
            self._together(batch)

    def _together(self, batch: list["_Job"]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            with transaction.atomic():
                for job in batch:
                    try:
                        with transaction.atomic():
                            outcomes.append((job.call(), None))
                    except Retryable:
                        raise  # its connection failed: the whole batch goes
                    except Exception as exc:
                        outcomes.append((None, exc))
        except Exception as exc:
            logger.warning("a batch of %d writes failed (%s)", len(batch), exc)
            connection.close()  # a fresh one for the next step
            for job in batch:
                job.future.set_exception(Retryable(str(exc)))
            return
        for job, (result, error) in zip(batch, outcomes, strict=True):
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)


@dataclass(slots=True)
class _Job:
    future: Future[Any]
    call: Callable[[], Any]

    def run(self) -> None:
        try:
            result = self.call()
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


_SQLITE_WRITER: SQLiteWriter | None = None


def _sqlite_writer() -> SQLiteWriter | None:
    """The thread SQLite's write steps run on; None on another database."""
    global _SQLITE_WRITER
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        return None
    if _SQLITE_WRITER is None:
        _SQLITE_WRITER = SQLiteWriter()
    return _SQLITE_WRITER


def _turn_step[**P, R](step: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A step of the request that starts a turn: on the request's own thread
    (asgiref's thread-sensitive context), or SQLite's writer thread."""

    @functools.wraps(step)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        writer = _sqlite_writer()
        if writer is None:
            return await sync_to_async(step)(*args, **kwargs)
        return await _on(writer, step, *args, **kwargs)

    return run


async def _on[**P, R](
    executor: Executor, step: Callable[P, R], *args: P.args, **kwargs: P.kwargs
) -> R:
    """`step` run by `executor`, in a copy of this context, as `sync_to_async`
    runs it, without its bookkeeping for thread-sensitive code and for calls
    back into the event loop, which the steps make none of (in a burst of new
    chats asgiref's `SyncToAsync` was 8 % of the event loop's busy time)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, step, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def _write_step[**P, R](step: Callable[P, R]) -> Callable[P, R]:
    """A write step: a failed connection is closed and the step `Retryable`."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            connection.close()
            raise Retryable(str(exc)) from exc

    return run


async def retrying[R](step: Callable[..., Awaitable[R]], what: str) -> R:
    """Runs `step` and, while its connection fails, again after each delay, as
    `step(again=True)`: a step that failed may have committed before it heard."""
    again = False
    for delay in RETRY_DELAYS:
        try:
            return await step(again=again)
        except Retryable as exc:
            logger.warning("%s failed (%s); trying again in %gs", what, exc, delay)
            await asyncio.sleep(delay)
            again = True
    return await step(again=True)


@dataclass(slots=True)
class TurnStart:
    conversation: Conversation
    user_message: Message
    history: list[Turn]
    # The turn replaces the conversation's last (regenerate, edit): the agent's
    # thread holds a turn the conversation no longer shows.
    rewound: bool = False


def transcript(messages: list[Message]) -> list[Message]:
    """The conversation as it is shown and as the agent sees it, from its messages
    in order: those no edit replaced, each user message followed by the latest
    of its replies (earlier attempts are left out)."""
    latest: dict[Any, Message] = {}
    for message in messages:
        if message.role == Message.Role.ASSISTANT and message.reply_to_id:
            latest[message.reply_to_id] = message
    return [
        message
        for message in messages
        if not message.superseded
        and (
            message.role != Message.Role.ASSISTANT
            or not message.reply_to_id
            or latest[message.reply_to_id] is message
        )
    ]


def _visible(conversation: Conversation) -> list[Message]:
    return list(
        conversation.messages.filter(superseded=False).order_by("created_at", "role")
    )


def _last_question(conversation_id: UUID) -> UUID | None:
    """The user message a reply being stored now answers: the latest one."""
    return (
        Message.objects.filter(
            conversation_id=conversation_id,
            role=Message.Role.USER,
            superseded=False,
        )
        .order_by("-created_at")
        .values_list("pk", flat=True)
        .first()
    )


def _stale_before(now: datetime) -> datetime:
    # A lock older than the longest possible stream belongs to a dead process.
    return now - timedelta(seconds=settings.CHAT_MAX_STREAM_SECONDS + 60)


@_turn_step
@_write_step
def start_turn(
    *,
    owner: Owner,
    backend: str,
    message: str,
    conversation_id: UUID | None,
    thread_id: str | None,
    with_history: bool,
    now: datetime,
    user_message_id: UUID,
    new_conversation_id: UUID,
    reply_id: UUID,
    mode: str = NEW,
    edited_id: UUID | None = None,
    again: bool = False,
) -> TurnStart:
    """Finds or creates the caller's conversation, takes its one-active-run lock
    and stores the user message. Raises NotFound for anything not the caller's
    and Busy while another reply streams. Run again with the same `now` and ids
    (its connection failed), it finds its own conversation, lock and message.

    REGENERATE answers the conversation's last user message again (`message` is
    unused): no message is stored. EDIT stores `message` in place of the last
    user message, `edited_id`, which with its replies is kept but superseded;
    without a conversation or thread id, the conversation is that message's.
    Either raises NotLast when there is no such message, and gives the history
    before that message, whether or not `with_history`."""
    lock = {
        "active_since": now,
        "active_run_id": "",
        "active_holder": lease.PROCESS_ID,
        "active_message_id": reply_id,
    }
    if (
        mode == NEW
        and conversation_id is None
        and not thread_id
        and not again
        and connection.vendor == "postgresql"
    ):
        return _new_conversation(
            owner, backend, message, now, user_message_id, new_conversation_id, lock
        )
    # Built only where a lookup needs it: a new conversation's turn is two
    # inserts, and building the filter took a fifth of its time.
    owned = functools.partial(Conversation.objects.owned_by, owner)
    with transaction.atomic():
        if conversation_id is not None:
            conversation = owned().filter(pk=conversation_id).first()
            if conversation is None or (
                thread_id and conversation.upstream_thread_id != thread_id
            ):
                raise NotFound
        elif thread_id:
            conversation = owned().filter(upstream_thread_id=thread_id).first()
            if conversation is None:
                raise NotFound
        elif mode == EDIT:
            # The conversation of the message to edit.
            conversation = owned().filter(messages=edited_id).first()
            if conversation is None:
                raise NotLast
        elif mode != NEW:
            raise NotFound
        else:
            conversation = (
                owned().filter(pk=new_conversation_id).first() if again else None
            )
            if conversation is None:
                conversation = _new_conversation_of(
                    owner, backend, message, new_conversation_id, lock
                )
                conversation.save(force_insert=True)
        if conversation.active_since != now:
            free = Q(active_since__isnull=True) | Q(active_since__lt=_stale_before(now))
            lost = _lost_reply(conversation)
            if lost:
                # Its holder died: take the lock as it is now, and only so.
                free |= Q(
                    active_since=conversation.active_since,
                    active_holder=conversation.active_holder,
                )
            taken = Conversation.objects.filter(free, pk=conversation.pk)
            if not taken.update(**lock):
                raise Busy
            if lost and conversation.active_message_id:
                _store_lost_reply(conversation, now)
            conversation.active_since = now
            if conversation.backend != backend:
                # Upstream threads are not portable between services.
                conversation.backend = backend
                conversation.upstream_thread_id = ""
                conversation.save(update_fields=["backend", "upstream_thread_id"])
        if mode == NEW:
            return _new_message(
                conversation, message, now, user_message_id, with_history, again
            )
        return _rewind(
            conversation, message, now, user_message_id, mode, edited_id, again
        )


# A new conversation's turn, which its reply stores (relay.PendingTurn): it may
# be written after the request that sent it has ended, so it runs as a reply's
# steps do.
start_new_turn = _reply_step(start_turn.__wrapped__)


def _new_conversation(
    owner: Owner,
    backend: str,
    message: str,
    now: datetime,
    user_message_id: UUID,
    conversation_id: UUID,
    lock: dict[str, Any],
) -> TurnStart:
    """A new conversation and its first message, in one statement (PostgreSQL).

    In a transaction the two inserts are four round trips (BEGIN, two INSERTs,
    COMMIT), and the thread waits for the GIL after each: while the event loop
    is busy (a burst of new chats, or the same request's upstream call being
    built) each wait lasts up to the interpreter's switch interval. One
    statement is its own transaction: 1.4 ms against 2.2 ms with the loop idle,
    14 ms against 32 ms with a thread spinning on the same core."""
    conversation = _new_conversation_of(owner, backend, message, conversation_id, lock)
    question = Message(id=user_message_id, **_question(conversation, message, now))
    _insert_together(conversation, question)
    return TurnStart(conversation, question, [])


def _new_conversation_of(
    owner: Owner,
    backend: str,
    message: str,
    conversation_id: UUID,
    lock: dict[str, Any],
) -> Conversation:
    """A new conversation (not stored yet), titled by its first message and
    locked for its first reply."""
    conversation = Conversation(
        id=conversation_id, backend=backend, title=message.strip()[:80], **lock
    )
    owner.assign(conversation)
    return conversation


def _question(
    conversation: Conversation, message: str, now: datetime
) -> dict[str, Any]:
    """The fields of a user message asked `now`."""
    return {
        "conversation": conversation,
        "role": Message.Role.USER,
        "content": message,
        "created_at": now,
        "finished_at": now,
    }


def _insert_together(*objects: models.Model) -> None:
    """Inserts `objects`, in order, in one statement: each but the last as a
    data-modifying WITH query (PostgreSQL), with the SQL and values that
    `save(force_insert=True)` sends (Django's own insert compiler, which also
    fills `auto_now` fields). `save()`'s `pre_save` and `post_save` signals are
    not sent: nothing in the app listens to them for these models."""
    statements: list[str] = []
    values: list[Any] = []
    for obj in objects:
        query = InsertQuery(type(obj))
        query.insert_values(type(obj)._meta.local_concrete_fields, [obj])
        [(sql, params)] = query.get_compiler(connection=connection).as_sql()
        statements.append(sql)
        values.extend(params)
    *first, last = statements
    with_queries = ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(first))
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {with_queries} {last}", values)
    for obj in objects:
        obj._state.adding = False
        obj._state.db = connection.alias


def _history(messages: list[Message]) -> list[Turn]:
    return [Turn(m.role, m.content) for m in transcript(messages)]


def _new_message(
    conversation: Conversation,
    message: str,
    now: datetime,
    user_message_id: UUID,
    with_history: bool,
    again: bool,
) -> TurnStart:
    history = (
        _history([m for m in _visible(conversation) if m.pk != user_message_id])
        if with_history
        else []
    )
    return TurnStart(
        conversation,
        _store_question(conversation, message, now, user_message_id, again),
        history,
    )


def _store_question(
    conversation: Conversation,
    message: str,
    now: datetime,
    user_message_id: UUID,
    again: bool,
) -> Message:
    fields = _question(conversation, message, now)
    if again:
        user_message, _ = Message.objects.get_or_create(
            id=user_message_id, defaults=fields
        )
        return user_message
    return Message.objects.create(id=user_message_id, **fields)


def _rewind(
    conversation: Conversation,
    message: str,
    now: datetime,
    user_message_id: UUID,
    mode: str,
    edited_id: UUID | None,
    again: bool,
) -> TurnStart:
    """Regenerate or edit: the last user message is answered again, or replaced."""
    visible = _visible(conversation)
    if again and mode == EDIT:
        # Run again after a lost answer, the edit may be stored already.
        stored = next((m for m in visible if m.pk == user_message_id), None)
        if stored is not None:
            before = [m for m in visible if m.created_at < stored.created_at]
            return TurnStart(conversation, stored, _history(before), rewound=True)
    questions = [m for m in visible if m.role == Message.Role.USER]
    if not questions:
        raise NotLast
    last = questions[-1]
    before = visible[: visible.index(last)]
    if mode == REGENERATE:
        return TurnStart(conversation, last, _history(before), rewound=True)
    if last.pk != edited_id:
        raise NotLast
    Message.objects.filter(Q(pk=last.pk) | Q(reply_to=last)).update(superseded=True)
    question = _store_question(conversation, message, now, user_message_id, again)
    return TurnStart(conversation, question, _history(before), rewound=True)


def _lost_reply(conversation: Conversation) -> bool:
    """Whether the conversation's lock belongs to a process that died."""
    holder = conversation.active_holder
    return bool(conversation.active_since and holder and not lease.is_alive(holder))


def _store_lost_reply(conversation: Conversation, now: datetime) -> None:
    """The reply a dead process was writing: whatever it streamed is gone with
    it, and the conversation says so instead of ending on the user's message."""
    Message.objects.get_or_create(
        id=conversation.active_message_id,
        defaults={
            "conversation": conversation,
            "role": Message.Role.ASSISTANT,
            "status": Message.Status.INTERRUPTED,
            "error_code": PRODUCER_LOST,
            "error_message": "the server writing this reply stopped",
            "reply_to_id": _last_question(conversation.pk),
            "created_at": conversation.active_since + AFTER_QUESTION,
            "finished_at": now,
        },
    )


@_reply_step
@_write_step
def finish_turn(
    *,
    conversation_id: UUID,
    message_id: UUID,
    thread_id: str | None,
    fields: dict[str, Any],
    again: bool = False,
) -> None:
    """Stores the assistant reply (whatever arrived) and releases the lock. Storing
    the same reply again (a retry after its connection failed) changes nothing."""
    now = timezone.now()
    reply = {
        "conversation_id": conversation_id,
        "role": Message.Role.ASSISTANT,
        "finished_at": now,
        **fields,
    }
    with transaction.atomic():
        if reply.get("reply_to_id") is None:
            # Taken over from a process that died: the question is the latest.
            reply["reply_to_id"] = _last_question(conversation_id)
        if again:
            Message.objects.update_or_create(id=message_id, defaults=reply)
        else:
            Message.objects.create(id=message_id, **reply)
        update: dict[str, Any] = {**UNLOCKED, "updated_at": now}
        if thread_id:
            update["upstream_thread_id"] = thread_id
        Conversation.objects.filter(pk=conversation_id).update(**update)


@_reply_step
@_write_step
def release(conversation_id: UUID, again: bool = False) -> None:
    """Releases the conversation's lock without storing a reply."""
    Conversation.objects.filter(pk=conversation_id).update(**UNLOCKED)


@_reply_step
@_write_step
def record_run(
    conversation_id: UUID, run_id: str, thread_id: str, again: bool = False
) -> None:
    """Lets a stop request reach this run from any replica."""
    Conversation.objects.filter(pk=conversation_id).update(
        active_run_id=run_id, upstream_thread_id=thread_id
    )


@_reply_step
@_write_step
def claim(
    conversation_id: UUID, message_id: UUID, holder: str, again: bool = False
) -> bool:
    """Takes the reply `message_id` over from `holder`, a process that died;
    whether this process now holds it. One process wins, however many try."""
    mine = Conversation.objects.filter(pk=conversation_id, active_message_id=message_id)
    if mine.filter(active_holder=holder).update(active_holder=lease.PROCESS_ID):
        return True
    # Run again after a lost answer, the update may already be ours.
    return again and mine.filter(active_holder=lease.PROCESS_ID).exists()
