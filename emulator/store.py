"""In-memory state, serialised exactly as the services do.

Threads, messages and runs follow azure-ai-agents 1.1.0
(`azure/ai/agents/models/_models.py`): timestamps are unix seconds and the agent id
travels as `assistant_id`. Conversations, responses and chat completions follow
the openai client's types.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

ACTIVE_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
RESPONSE_ACTIVE_STATUSES = frozenset({"queued", "in_progress"})
RUN_LIFETIME_SECONDS = 600


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def last_user_text(messages: Iterable[Message], fallback: str = "") -> str:
    users = [m for m in messages if m.role == "user"]
    return users[-1].text if users else fallback


@dataclass
class Message:
    thread_id: str
    role: str
    text: str
    id: str = field(default_factory=lambda: new_id("msg"))
    created_at: int = field(default_factory=now)
    run_id: str | None = None
    assistant_id: str | None = None
    status: str = "completed"
    completed_at: int | None = field(default_factory=now)
    incomplete_at: int | None = None
    incomplete_details: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    # A code interpreter's image, shown before the text.
    image_file_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # A freshly created assistant message has no content part yet.
        empty = self.status == "in_progress" and not self.text
        content = [] if empty else [self.content_part()]
        if self.image_file_id:
            image = {
                "type": "image_file",
                "image_file": {"file_id": self.image_file_id},
            }
            content.insert(0, image)
        return {
            "id": self.id,
            "object": "thread.message",
            "created_at": self.created_at,
            "assistant_id": self.assistant_id,
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "role": self.role,
            "content": content,
            "attachments": [],
            "metadata": self.metadata,
            "status": self.status,
            "incomplete_details": self.incomplete_details,
            "completed_at": self.completed_at,
            "incomplete_at": self.incomplete_at,
        }

    def content_part(self) -> dict[str, Any]:
        return {
            "type": "text",
            "text": {"value": self.text, "annotations": self.annotations},
        }


@dataclass
class Run:
    thread_id: str
    assistant_id: str
    model: str
    instructions: str
    stream: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    top_p: float = 1.0
    id: str = field(default_factory=lambda: new_id("run"))
    created_at: int = field(default_factory=now)
    status: str = "queued"
    started_at: int | None = None
    completed_at: int | None = None
    cancelled_at: int | None = None
    failed_at: int | None = None
    last_error: dict[str, str] | None = None
    incomplete_details: dict[str, Any] | None = None
    usage: dict[str, int] | None = None
    # The function calls a run in requires_action waits for, and what the client
    # submitted for them, by call id (`tool_outputs`, once given).
    required_action: dict[str, Any] | None = None
    tool_outputs: dict[str, str] | None = None
    outputs_given: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Set by the cancel endpoint; whoever drives the run finishes it promptly.
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread.run",
            "created_at": self.created_at,
            "assistant_id": self.assistant_id,
            "thread_id": self.thread_id,
            "status": self.status,
            "started_at": self.started_at,
            "expires_at": self.created_at + RUN_LIFETIME_SECONDS,
            "cancelled_at": self.cancelled_at,
            "failed_at": self.failed_at,
            "completed_at": self.completed_at,
            "required_action": self.required_action,
            "last_error": self.last_error,
            "model": self.model,
            "instructions": self.instructions,
            "tools": [],
            "tool_resources": {},
            "metadata": self.metadata,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_completion_tokens": None,
            "max_prompt_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "incomplete_details": self.incomplete_details,
            "usage": self.usage,
            "response_format": "auto",
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }


@dataclass
class Thread:
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: new_id("thread"))
    created_at: int = field(default_factory=now)
    messages: list[Message] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def active_run(self) -> Run | None:
        return next((run for run in reversed(self.runs) if run.active), None)

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.messages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread",
            "created_at": self.created_at,
            "metadata": self.metadata,
            "tool_resources": {},
        }


@dataclass
class Conversation:
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: new_id("conv"))
    created_at: int = field(default_factory=now)
    messages: list[Message] = field(default_factory=list)
    # The function_call items of its last response, by call id, that wait for
    # outputs, with that response's config for the one that answers them.
    pending_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending_config: Any = None
    # Every function_call_output given in it: call id -> output.
    tool_outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": self.metadata,
        }


@dataclass
class Response:
    model: str
    conversation_id: str | None
    agent: dict[str, Any] | None
    # Runs on the emulator rather than on its connection (see `background`).
    background: bool = False
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("msg"))
    created_at: int = field(default_factory=now)
    status: str = "in_progress"
    text: str = ""
    annotations: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    incomplete_details: dict[str, str] | None = None
    usage: dict[str, Any] | None = None
    # The output items of its tool calls, before its message.
    tool_items: list[dict[str, Any]] = field(default_factory=list)
    # Ended with function calls for the client, and no message.
    calls_functions: bool = False
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status in RESPONSE_ACTIVE_STATUSES

    def content_part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": self.text,
            "annotations": self.annotations,
            "logprobs": [],
        }

    def item(self, status: str, *, with_content: bool = True) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [self.content_part()] if with_content else [],
        }

    def to_dict(self) -> dict[str, Any]:
        if self.active:
            output = [self.item("in_progress")] if self.text else []
        elif self.calls_functions:
            output = []
        else:
            status = "completed" if self.status == "completed" else "incomplete"
            output = [self.item(status)]
        output = [*self.tool_items, *output]
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": self.background,
            "error": self.error,
            "incomplete_details": self.incomplete_details,
            "instructions": None,
            "max_output_tokens": None,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": self.usage,
            "metadata": {},
            "conversation": (
                {"id": self.conversation_id} if self.conversation_id else None
            ),
            "agent_reference": self.agent,
        }


@dataclass
class ChatCompletion:
    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{secrets.token_hex(12)}")
    created: int = field(default_factory=now)
    status: str = "in_progress"
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status == "in_progress"

    def to_dict(self) -> dict[str, Any]:
        """The whole completion, as answered without streaming."""
        message = {"role": "assistant", "content": self.text, "refusal": None}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }


class Listable(Protocol):
    @property
    def id(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def list_page(items: Sequence[Listable], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of a cursor-paged list.

    The SDK follows `last_id` with `after=` until it is null and ignores
    `has_more`, so a cursor at the end must yield `"last_id": null`.
    """
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValueError("order must be 'asc' or 'desc'")
    limit = min(max(int(query.get("limit", "20")), 1), 100)
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [item.id for item in ordered]
    if after := query.get("after"):
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        ids = [item.id for item in ordered]
    if before := query.get("before"):
        ordered = ordered[: ids.index(before)] if before in ids else []
    page = ordered[:limit]
    return {
        "object": "list",
        "data": [item.to_dict() for item in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(ordered) > limit,
    }
