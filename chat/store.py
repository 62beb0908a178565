"""Database work of a chat turn, one transaction (and one thread hop) per step.

The relay touches the database twice per reply — before the upstream call and
once at the end — never per chunk.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chat.backends.base import Turn
from chat.models import Conversation, Message, Owner


class NotFound(Exception):
    pass


class Busy(Exception):
    pass


@dataclass(slots=True)
class TurnStart:
    conversation: Conversation
    user_message: Message
    history: list[Turn]


def _stale_before(now: datetime) -> datetime:
    # A lock older than the longest possible stream belongs to a dead process.
    return now - timedelta(seconds=settings.CHAT_MAX_STREAM_SECONDS + 60)


@sync_to_async
def start_turn(
    *,
    owner: Owner,
    backend: str,
    message: str,
    conversation_id: UUID | None,
    thread_id: str | None,
    with_history: bool,
) -> TurnStart:
    """Finds or creates the caller's conversation, takes its one-active-run lock
    and stores the user message. Raises NotFound for anything not the caller's
    and Busy while another reply streams."""
    now = timezone.now()
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
            conversation = Conversation(
                backend=backend, title=message.strip()[:80], active_since=now
            )
            owner.assign(conversation)
            conversation.save()
        if conversation.active_since != now:
            locked = (
                Conversation.objects.filter(pk=conversation.pk)
                .filter(
                    Q(active_since__isnull=True)
                    | Q(active_since__lt=_stale_before(now))
                )
                .update(active_since=now, active_run_id="")
            )
            if not locked:
                raise Busy
            conversation.active_since = now
            if conversation.backend != backend:
                # Upstream threads are not portable between services.
                conversation.backend = backend
                conversation.upstream_thread_id = ""
                conversation.save(update_fields=["backend", "upstream_thread_id"])
        history = (
            [
                Turn(m.role, m.content)
                for m in conversation.messages.order_by("created_at")
            ]
            if with_history
            else []
        )
        user_message = Message.objects.create(
            conversation=conversation,
            role=Message.Role.USER,
            content=message,
            created_at=now,
            finished_at=now,
        )
    return TurnStart(conversation, user_message, history)


@sync_to_async
def finish_turn(
    *,
    conversation_id: UUID,
    message_id: UUID,
    thread_id: str | None,
    fields: dict[str, Any],
) -> None:
    """Stores the assistant reply (whatever arrived) and releases the lock."""
    now = timezone.now()
    with transaction.atomic():
        Message.objects.create(
            id=message_id,
            conversation_id=conversation_id,
            role=Message.Role.ASSISTANT,
            finished_at=now,
            **fields,
        )
        update: dict[str, Any] = {
            "active_since": None,
            "active_run_id": "",
            "updated_at": now,
        }
        if thread_id:
            update["upstream_thread_id"] = thread_id
        Conversation.objects.filter(pk=conversation_id).update(**update)


@sync_to_async
def record_run(conversation_id: UUID, run_id: str, thread_id: str) -> None:
    """Lets a stop request reach this run from any replica."""
    Conversation.objects.filter(pk=conversation_id).update(
        active_run_id=run_id, upstream_thread_id=thread_id
    )
