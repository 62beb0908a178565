import uuid
from typing import Any

from django.conf import settings
from django.db import models

from chat.files import file_frame


class ConversationQuerySet(models.QuerySet):
    def owned_by(self, owner: "Owner") -> "ConversationQuerySet":
        """Conversations the caller may see: by login, by session, or by id."""
        if owner.user_id is not None:
            return self.filter(owner_id=owner.user_id)
        if owner.session_key:
            return self.filter(owner__isnull=True, owner_key=owner.session_key)
        return self.filter(owner__isnull=True, owner_key="")


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="conversations",
    )
    # Anonymous browser conversations belong to a random token kept in the session
    # (not the session key, which rotates on login); cookie-less API callers own
    # theirs by holding the unguessable id, and leave this empty.
    owner_key = models.CharField(max_length=64, blank=True, db_index=True)
    title = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=100)
    upstream_thread_id = models.CharField(max_length=200, blank=True, db_index=True)
    # Set while a reply streams: the one-active-run lock, shared by all replicas,
    # with the process that holds it (chat.lease) and the reply it is writing.
    active_since = models.DateTimeField(null=True, blank=True)
    active_run_id = models.CharField(max_length=200, blank=True)
    active_holder = models.CharField(max_length=200, blank=True)
    active_message_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        # The list, newest first, a page at a time (keyset: updated_at, id).
        indexes = [
            models.Index(
                fields=["owner", "-updated_at", "-id"], name="chat_conv_owner_recent"
            ),
            models.Index(
                fields=["owner_key", "-updated_at", "-id"], name="chat_conv_key_recent"
            ),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "title": self.title,
            "backend": self.backend,
            "thread_id": self.upstream_thread_id or None,
            "streaming": self.active_since is not None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.COMPLETE
    )
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    upstream_run_id = models.CharField(max_length=200, blank=True)
    usage = models.JSONField(null=True, blank=True)
    annotations = models.JSONField(default=list, blank=True)
    # An assistant reply answers this user message. Regenerating adds another
    # reply to the same one: its attempts, the latest of which counts.
    reply_to = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="replies",
    )
    # An edit replaced this user message (and so its replies): kept, but no
    # longer part of the conversation, neither shown nor sent to the agent.
    superseded = models.BooleanField(default=False)
    # Each tool call's last `tool` frame (without its type), in order.
    tools = models.JSONField(default=list, blank=True)
    # The files the agent made (code interpreter): what `file` frames give, and
    # where upstream to fetch them from.
    files = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    time_to_first_chunk_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "role"]
        indexes = [models.Index(fields=["conversation", "created_at"])]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:50]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "role": self.role,
            "content": self.content,
            "status": self.status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "usage": self.usage,
            "annotations": self.annotations,
            "reply_to": str(self.reply_to_id) if self.reply_to_id else None,
            "tools": self.tools,
            "files": [
                file_frame(self.conversation_id, f).model_dump() for f in self.files
            ],
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class Owner:
    """Who is calling: a user, an anonymous browser session, or nobody in particular."""

    __slots__ = ("session_key", "user_id")

    def __init__(self, user_id: int | None = None, session_key: str = "") -> None:
        self.user_id = user_id
        self.session_key = session_key

    def assign(self, conversation: Conversation) -> None:
        conversation.owner_id = self.user_id
        conversation.owner_key = "" if self.user_id else self.session_key

    def __repr__(self) -> str:
        return f"Owner(user_id={self.user_id!r}, session_key={bool(self.session_key)})"
