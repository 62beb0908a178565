"""Database work of a chat turn, one transaction (and one thread hop) per step.

The relay touches the database twice per reply — before the upstream call and
once at the end — never per chunk.

A connection can die under any step (a failover, a restart, an idle timeout on
the server): the step then closes it, so that the pool hands out a fresh one,
and raises `Retryable`; `retrying` runs a step again, bounded, with backoff.
Steps that may run twice are idempotent: storing a reply is keyed by its id.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
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
    threads (chatsite.threads) and gives a pooled connection back when done."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        finally:
            if connection.vendor == "postgresql":
                connection.close()  # back to the pool: cheap
            # SQLite keeps its file open; reopening costs more than it holds.

    async def on_a_shared_thread(*args: P.args, **kwargs: P.kwargs) -> R:
        call = sync_to_async(
            run, thread_sensitive=False, executor=threads.next_executor()
        )
        return await call(*args, **kwargs)

    return on_a_shared_thread


def _fresh_connection_on_failure[**P, R](step: Callable[P, R]) -> Callable[P, R]:
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


def _stale_before(now: datetime) -> datetime:
    # A lock older than the longest possible stream belongs to a dead process.
    return now - timedelta(seconds=settings.CHAT_MAX_STREAM_SECONDS + 60)


@sync_to_async
@_fresh_connection_on_failure
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
    again: bool = False,
) -> TurnStart:
    """Finds or creates the caller's conversation, takes its one-active-run lock
    and stores the user message. Raises NotFound for anything not the caller's
    and Busy while another reply streams. Run again with the same `now` and ids
    (its connection failed), it finds its own conversation, lock and message."""
    lock = {
        "active_since": now,
        "active_run_id": "",
        "active_holder": lease.PROCESS_ID,
        "active_message_id": reply_id,
    }
    with transaction.atomic():
        owned = Conversation.objects.owned_by(owner)
        if conversation_id is not None:
            conversation = owned.filter(pk=conversation_id).first()
            if conversation is None or (
                thread_id and conversation.upstream_thread_id != thread_id
            ):
                raise NotFound
        elif thread_id:
            conversation = owned.filter(upstream_thread_id=thread_id).first()
            if conversation is None:
                raise NotFound
        else:
            conversation = (
                owned.filter(pk=new_conversation_id).first() if again else None
            )
            if conversation is None:
                conversation = Conversation(
                    id=new_conversation_id,
                    backend=backend,
                    title=message.strip()[:80],
                    **lock,
                )
                owner.assign(conversation)
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
        history = (
            [
                Turn(m.role, m.content)
                for m in conversation.messages.exclude(pk=user_message_id).order_by(
                    "created_at"
                )
            ]
            if with_history
            else []
        )
        fields = {
            "conversation": conversation,
            "role": Message.Role.USER,
            "content": message,
            "created_at": now,
            "finished_at": now,
        }
        if again:
            user_message, _ = Message.objects.get_or_create(
                id=user_message_id, defaults=fields
            )
        else:
            user_message = Message.objects.create(id=user_message_id, **fields)
    return TurnStart(conversation, user_message, history)


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
            "created_at": conversation.active_since + AFTER_QUESTION,
            "finished_at": now,
        },
    )


@_reply_step
@_fresh_connection_on_failure
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
        if again:
            Message.objects.update_or_create(id=message_id, defaults=reply)
        else:
            Message.objects.create(id=message_id, **reply)
        update: dict[str, Any] = {**UNLOCKED, "updated_at": now}
        if thread_id:
            update["upstream_thread_id"] = thread_id
        Conversation.objects.filter(pk=conversation_id).update(**update)


@_reply_step
@_fresh_connection_on_failure
def release(conversation_id: UUID, again: bool = False) -> None:
    """Releases the conversation's lock without storing a reply."""
    Conversation.objects.filter(pk=conversation_id).update(**UNLOCKED)


@_reply_step
@_fresh_connection_on_failure
def record_run(
    conversation_id: UUID, run_id: str, thread_id: str, again: bool = False
) -> None:
    """Lets a stop request reach this run from any replica."""
    Conversation.objects.filter(pk=conversation_id).update(
        active_run_id=run_id, upstream_thread_id=thread_id
    )


@_reply_step
@_fresh_connection_on_failure
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
