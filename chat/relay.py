"""The relay: one assistant reply in flight, from the backend to the client.

The upstream is consumed by its own task (the producer), which feeds a queue and,
whatever happens, stores the reply and cancels the upstream run when it did not
finish. The response body is a thin async generator reading that queue. Django
cancels the body generator when the client disconnects; the producer's cleanup
still runs, and the generator waits for it (bounded) so the database work stays
inside the request's lifecycle.
"""

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from django.conf import settings
from django.utils import timezone
from opentelemetry import metrics, trace

from chat import store
from chat.backends.base import (
    INCOMPLETE,
    SERVER_SHUTDOWN,
    TIMEOUT,
    UPSTREAM_DISCONNECTED,
    UPSTREAM_UNAVAILABLE,
    BackendError,
    ChatBackend,
    Citation,
    Completed,
    Delta,
    ReplyRequest,
    RunStarted,
    ThreadReady,
)
from chat.limits import StreamSlot
from chat.models import Conversation, Message

logger = logging.getLogger(__name__)
# No-ops unless telemetry is configured (chatsite/telemetry.py).
tracer = trace.get_tracer(__name__)
meter = metrics.get_meter(__name__)
replies_counter = meter.create_counter(
    "chat.replies", description="Replies by backend and final status"
)
ttfc_histogram = meter.create_histogram(
    "chat.time_to_first_chunk", unit="ms", description="Request to first chunk"
)

_END = object()

# Why a reply stopped early, and the status its stored message gets.
STOPPED = "stopped"  # the user pressed stop
DISCONNECTED = "disconnected"  # the client went away
SHUTDOWN = "shutdown"  # the server is stopping
TIMED_OUT = "timed_out"  # the upstream was silent too long

# Errors after which the upstream run may still be generating.
RUN_MAY_CONTINUE = {UPSTREAM_DISCONNECTED, INCOMPLETE}

_STATUS_FOR_REASON = {
    STOPPED: Message.Status.CANCELLED,
    DISCONNECTED: Message.Status.INTERRUPTED,
    SHUTDOWN: Message.Status.INTERRUPTED,
    TIMED_OUT: Message.Status.FAILED,
}

# In-flight replies of this process, by conversation id: stop requests and
# shutdown find them here. Strong references also keep the producer tasks alive.
ACTIVE: dict[UUID, "Reply"] = {}

UPSTREAM_CANCEL_TIMEOUT = 5.0
CLEANUP_TIMEOUT = 10.0

# A frame is (event id, payload): a str payload is a chunk's text, a dict any
# other frame, None a keep-alive comment.
Frame = tuple[int, str | dict[str, Any] | None]


class Reply:
    def __init__(
        self,
        *,
        backend: ChatBackend,
        conversation: Conversation,
        request: ReplyRequest,
        started: float,
        slot: StreamSlot | None = None,
        log_fields: dict[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.conversation_id: UUID = conversation.pk
        self.request = request
        self.started = started
        self.slot = slot
        # Filled when the reply ends, for the request's log line.
        self.log_fields = log_fields if log_fields is not None else {}
        self.created_at: datetime = timezone.now()
        self.message_id = uuid4()
        self.thread_id: str | None = request.thread_id
        self.replaced_thread_id: str | None = None
        self.run_id: str | None = None
        self.parts: list[str] = []
        self.delta_count = 0
        self.citations: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.status = Message.Status.COMPLETE
        self.error: BackendError | None = None
        self.first_chunk_at: float | None = None
        self.stop_reason: str | None = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self._record_run: asyncio.Task[None] | None = None

    # --- control -------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(
            self._produce(), name=f"chat-reply-{self.conversation_id}"
        )
        ACTIVE[self.conversation_id] = self

    def stop(self, reason: str) -> None:
        """Ends the reply early. The first reason wins, and the producer is
        cancelled once: a second cancel would interrupt its cleanup (storing the
        reply, cancelling the run, freeing the caller's stream slot)."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def ttfc_ms(self) -> float | None:
        if self.first_chunk_at is None:
            return None
        return round((self.first_chunk_at - self.started) * 1000, 3)

    # --- producer ------------------------------------------------------------------

    async def _produce(self) -> None:
        with tracer.start_as_current_span(
            "chat.reply",
            attributes={
                "chat.backend": self.backend.alias,
                "chat.conversation_id": str(self.conversation_id),
            },
        ) as span:
            try:
                await self._relay_upstream()
            finally:
                span.set_attribute("chat.status", str(self.status))
                span.set_attribute("chat.deltas", self.delta_count)
                if self.error is not None:
                    span.set_attribute("chat.error_code", self.error.code)
                attributes = {"backend": self.backend.alias, "status": str(self.status)}
                replies_counter.add(1, attributes)
                if self.first_chunk_at is not None:
                    ttfc_histogram.record(self.ttfc_ms() or 0.0, attributes)

    async def _relay_upstream(self) -> None:
        put = self.queue.put_nowait
        completed = False
        try:
            async for event in self.backend.stream_reply(self.request):
                kind = type(event)
                if kind is Delta:
                    if self.first_chunk_at is None:
                        self.first_chunk_at = time.perf_counter()
                    self.delta_count += 1
                    parts = self.parts
                    parts.append(event.text)
                    if len(parts) >= 256:
                        # One string per token costs ~50 bytes each while streaming.
                        parts[:] = ["".join(parts)]
                    put(event)
                elif kind is ThreadReady:
                    self.thread_id = event.thread_id
                    self.replaced_thread_id = event.replaced_thread_id
                    put(event)
                elif kind is RunStarted:
                    self.run_id = event.run_id
                    if not self.backend.offline and self.thread_id:
                        self._record_run = asyncio.create_task(
                            store.record_run(
                                self.conversation_id, event.run_id, self.thread_id
                            )
                        )
                elif kind is Citation:
                    self.citations.append(event.data)
                    put(event)
                elif kind is Completed:
                    self.usage = event.usage
                    if event.cancelled:
                        self.status = Message.Status.CANCELLED
                    completed = True
                    break
            if not completed:
                raise BackendError(
                    INCOMPLETE, "the agent's reply ended before the run finished"
                )
        except BackendError as exc:
            self.error = exc
            self.status = Message.Status.FAILED
            if exc.code in RUN_MAY_CONTINUE:
                # Upstream, the run goes on after its stream broke: it would keep
                # billing and refuse the conversation's next message.
                await self._cancel_upstream()
        except asyncio.CancelledError:
            reason = self.stop_reason or DISCONNECTED
            self.status = _STATUS_FOR_REASON[reason]
            if reason == TIMED_OUT:
                self.error = BackendError(
                    TIMEOUT,
                    f"the agent sent nothing for "
                    f"{settings.CHAT_UPSTREAM_TIMEOUT_SECONDS:g} seconds",
                )
            elif reason == SHUTDOWN:
                self.error = BackendError(
                    SERVER_SHUTDOWN,
                    "the server is restarting; send your message again",
                )
            await self._cancel_upstream()
            raise
        except Exception:
            logger.exception("chat backend %s failed", self.backend.alias)
            self.error = BackendError(
                UPSTREAM_UNAVAILABLE, "the agent service failed unexpectedly"
            )
            self.status = Message.Status.FAILED
            await self._cancel_upstream()
        finally:
            try:
                await asyncio.shield(self._persist())
                if self.slot is not None:
                    await asyncio.shield(self.slot.release())
            finally:
                ACTIVE.pop(self.conversation_id, None)
                put(_END)

    async def _cancel_upstream(self) -> None:
        if not (self.thread_id and self.run_id):
            return
        try:
            async with asyncio.timeout(UPSTREAM_CANCEL_TIMEOUT):
                await asyncio.shield(self.backend.cancel(self.thread_id, self.run_id))
        except (TimeoutError, asyncio.CancelledError):
            logger.warning("cancelling upstream run %s timed out", self.run_id)
        except Exception:
            logger.exception("cancelling upstream run %s failed", self.run_id)

    async def _persist(self) -> None:
        if self._record_run is not None:
            await asyncio.wait({self._record_run}, timeout=CLEANUP_TIMEOUT)
        fields = {
            "content": self.text,
            "status": self.status,
            "error_code": self.error.code if self.error else "",
            "error_message": self.error.message if self.error else "",
            "upstream_run_id": self.run_id or "",
            "usage": self.usage,
            "annotations": self.citations,
            "created_at": self.created_at,
            "time_to_first_chunk_ms": self.ttfc_ms(),
        }
        try:
            await store.finish_turn(
                conversation_id=self.conversation_id,
                message_id=self.message_id,
                thread_id=self.thread_id,
                fields=fields,
            )
        except Exception:
            logger.exception("storing reply %s failed", self.message_id)

    # --- consumer ------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "type": "metadata",
            "conversation_id": str(self.conversation_id),
            "thread_id": self.thread_id,
            "message_id": str(self.message_id),
            **self.backend.describe(),
        }
        if self.replaced_thread_id:
            meta["thread_reset"] = True
            meta["previous_thread_id"] = self.replaced_thread_id
            meta["notice"] = "the previous agent thread was gone; a new one was started"
        return meta

    def final_frame(self) -> dict[str, Any]:
        if self.error is not None:
            frame: dict[str, Any] = {
                "type": "error",
                "code": self.error.code,
                "message": self.error.message,
                "message_id": str(self.message_id),
            }
            if self.error.retry_after is not None:
                frame["retry_after"] = self.error.retry_after
            return frame
        return {
            "type": "done",
            "full_response": self.text,
            "timestamp": timezone.now().isoformat(),
            "message_id": str(self.message_id),
            "conversation_id": str(self.conversation_id),
            "status": (
                "cancelled" if self.status == Message.Status.CANCELLED else "complete"
            ),
            "usage": self.usage,
        }

    async def frames(self) -> AsyncIterator[Frame]:
        """The reply as frames, in order: metadata, chunks and citations, then one
        `done` or `error`. Keep-alives are interleaved while the upstream is silent."""
        loop = asyncio.get_running_loop()
        keepalive = settings.CHAT_KEEPALIVE_SECONDS
        silence_limit = settings.CHAT_UPSTREAM_TIMEOUT_SECONDS
        deadline = loop.time() + settings.CHAT_MAX_STREAM_SECONDS
        queue = self.queue
        seq = 0
        sent_metadata = False
        ended = False
        chunks = 0
        pending: Any = None
        last_event = loop.time()
        try:
            while True:
                if pending is not None:
                    item, pending = pending, None
                else:
                    try:
                        item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        now = loop.time()
                        wait = min(keepalive, last_event + silence_limit - now)
                        wait = min(wait, deadline - now)
                        try:
                            async with asyncio.timeout(max(wait, 0)):
                                item = await queue.get()
                        except TimeoutError:
                            now = loop.time()
                            if now - last_event >= silence_limit or now >= deadline:
                                self.stop(TIMED_OUT)
                                # Only keep-alives from now on, while the producer
                                # stores the reply and cancels the run.
                                silence_limit = deadline = math.inf
                            else:
                                yield (seq, None)
                            continue
                    last_event = loop.time()
                kind = type(item)
                if kind is Delta:
                    # Coalesce deltas that queued up while the client was slow.
                    texts = [item.text]
                    while True:
                        try:
                            nxt = queue.get_nowait()
                        except asyncio.QueueEmpty:
                            break
                        if type(nxt) is Delta:
                            texts.append(nxt.text)
                        else:
                            pending = nxt
                            break
                    if not sent_metadata:
                        sent_metadata = True
                        yield (seq, self.metadata())
                    seq += 1
                    chunks += 1
                    yield (seq, texts[0] if len(texts) == 1 else "".join(texts))
                elif kind is ThreadReady or item is _END:
                    if not sent_metadata:
                        sent_metadata = True
                        yield (seq, self.metadata())
                    if item is _END:
                        ended = True
                        seq += 1
                        yield (seq, self.final_frame())
                        return
                elif kind is Citation:
                    seq += 1
                    yield (seq, {"type": "annotation", **item.data})
        finally:
            task = self.task
            if task is not None and not ended:
                self.stop(DISCONNECTED)
            if task is not None:
                await asyncio.wait({task}, timeout=CLEANUP_TIMEOUT)
            self.log_fields.update(
                backend=self.backend.alias,
                reply_status=str(self.status),
                error_code=self.error.code if self.error else None,
                chunks=chunks,
                ttfc_ms=self.ttfc_ms(),
            )

    async def collect(self) -> dict[str, Any]:
        """The whole reply as one JSON object (the non-streaming fallback)."""
        async for _frame in self.frames():
            pass
        body: dict[str, Any] = {
            "conversation_id": str(self.conversation_id),
            "thread_id": self.thread_id,
            "message_id": str(self.message_id),
            "status": self.status,
            "full_response": self.text,
            "usage": self.usage,
            "annotations": self.citations,
            "timestamp": timezone.now().isoformat(),
            "error": None,
            **self.backend.describe(),
        }
        if self.error is not None:
            body["error"] = {"code": self.error.code, "message": self.error.message}
            if self.error.retry_after is not None:
                body["error"]["retry_after"] = self.error.retry_after
        return body
