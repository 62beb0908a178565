"""The relay: one assistant reply in flight, from the backend to the client.

The views use its small public API: `start` takes the caller's stream slot and
the conversation's lock, stores the user message and starts the reply; `stop`,
`discard` and `open_replies` find replies by conversation. Everything else
belongs to the reply itself.

The upstream is consumed by its own task (the producer), which appends typed
frames (`chat.frames`) to the reply's log (`chat.replylog`), enforces the
upstream silence and total-duration limits and, whatever happens, stores the
reply, cancels the upstream run when it did not finish and gives the stream slot
back. Response bodies read the log: the request that started the reply, and any
retry or reconnect that attaches. Django cancels the body generator when the
client disconnects; by default the reply goes on without it
(`CHAT_ON_DISCONNECT`).

Across replicas (`REDIS_URL`): the log is copied to a Redis Stream as it grows,
so `follow` can read a reply another process writes (`RemoteReply`); a stop is
sent to the writing process (`chat.bus`); and when the writer dies (its lease
expires), the first replica to notice takes the reply over (`take_over`): it
rebuilds the log from Redis and finishes the upstream run where the backend can
(`resume_reply`), or ends the reply as lost, storing it once either way.
"""

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import redis.asyncio as redis
from django.conf import settings
from django.utils import timezone
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from chat import bus, files, frames, lease, limits, replylog, store, ticks, tools
from chat.backends import base
from chat.backends.base import BackendError, ChatBackend, ReplyRequest
from chat.models import Conversation, Message, Owner
from chat.replylog import RemoteLog, ReplyLog
from chatsite import requestlog
from chatsite.ids import uuid4

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

# Why a reply stopped early, and the status its stored message gets.
STOPPED = "stopped"  # the user pressed stop
DISCONNECTED = "disconnected"  # the client went away
SHUTDOWN = "shutdown"  # the server is stopping
TIMED_OUT = "timed_out"  # the upstream was silent too long
NOT_STORED = "not_stored"  # the turn it answers could not be stored

# Errors after which the upstream run may still be generating.
RUN_MAY_CONTINUE = {base.UPSTREAM_DISCONNECTED, base.INCOMPLETE}

_STATUS_FOR_REASON = {
    STOPPED: Message.Status.CANCELLED,
    DISCONNECTED: Message.Status.INTERRUPTED,
    SHUTDOWN: Message.Status.INTERRUPTED,
    TIMED_OUT: Message.Status.FAILED,
    NOT_STORED: Message.Status.FAILED,
}

# In-flight replies of this process, by conversation id: stop requests and
# shutdown find them here. Strong references also keep the producer tasks alive.
_ACTIVE: dict[UUID, "Reply"] = {}
# New conversations' turns this process has yet to store, by conversation id
# (`PendingTurn`, `turns_stored`).
_STORING: dict[UUID, "PendingTurn"] = {}
# On one replica, the longest a new conversation's turn waits for its reply's
# first chunk before it is written anyway (`PendingTurn`).
TURN_WRITE_DEFERRAL_SECONDS = 0.5
# Replies that finished, by conversation, oldest first, with when to forget them:
# a late reader (a retry, a reconnect) still gets their frames exactly.
_FINISHED: dict[UUID, tuple[float, "Reply"]] = {}
MAX_FINISHED = 1000
INTERRUPTED_MESSAGE = "the reply stopped when its client left"
# A reply's span while traces are not exported (chatsite.telemetry).
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)

UPSTREAM_CANCEL_TIMEOUT = 5.0
CLEANUP_TIMEOUT = 10.0

# Seconds between tries of a reader of another process's reply whose Redis
# failed, before it ends its response (the client then resumes).
READ_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)

# What a reader of another process's reply learns of its writer.
WRITING = "writing"
FINISHED = "finished"
LOST = "lost"

# What the reply's body yields: (event id, frame), or (event id, None) for a
# keep-alive comment.
Event = tuple[int, frames.Frame | None]


# --- the public API -------------------------------------------------------------------


async def start(
    backend: ChatBackend,
    *,
    owner: Owner,
    caller: limits.Caller,
    message: str,
    conversation_id: UUID | None,
    thread_id: str | None,
    started: float,
    mode: str = store.NEW,
    edited_id: UUID | None = None,
) -> "Reply":
    """Starts a reply to `message` and returns it, streaming.

    `mode` store.REGENERATE answers the conversation's last user message again
    (`message` is unused); store.EDIT replaces that message, `edited_id`, with
    `message`. Either way the backend is told that its thread holds a turn the
    conversation no longer shows (`ReplyRequest.rewind`), with the history that
    it does show.

    Raises the caller's 429 when no stream slot is left, `store.NotFound` for a
    conversation or thread that is not the owner's, `store.Busy` while another
    reply streams in it and `store.NotLast` when the message to regenerate or
    edit is not the last. From here the reply owns the slot and the lock."""
    await lease.ensure_heartbeat()
    await bus.ensure_listening(_stop_here)
    reply_id = uuid4()
    toolbox = tools.ToolBox(tools.registry(), owner)
    slot = limits.stream_slot(caller)
    async with contextlib.AsyncExitStack() as resources:
        if slot is not None:
            await resources.enter_async_context(slot)
        if mode == store.NEW and conversation_id is None and thread_id is None:
            reply = _new_conversation(
                backend, owner, message, toolbox, started, reply_id
            )
            if slot is not None:
                reply.resources = resources.pop_all()
            reply.start()
            return reply
        # A follow-up sent on the first reply's first frame finds its
        # conversation, and that it is busy.
        if conversation_id is not None:
            await turns_stored(conversation_id=conversation_id)
        else:
            await turns_stored(owner=owner)
        turn = await _storing_turn(
            backend,
            owner,
            message,
            reply_id,
            conversation_id=conversation_id,
            thread_id=thread_id,
            with_history=backend.needs_history,
            user_message_id=uuid4(),
            new_conversation_id=uuid4(),
            mode=mode,
            edited_id=edited_id,
        )
        request = ReplyRequest(
            message=turn.user_message.content,
            thread_id=turn.conversation.upstream_thread_id or None,
            history=turn.history,
            tools=toolbox,
            rewind=turn.rewound,
        )
        reply = Reply(
            backend=backend,
            conversation=turn.conversation,
            request=request,
            started=started,
            resources=resources.pop_all() if slot is not None else None,
            message_id=reply_id,
            reply_to=turn.user_message.pk,
        )
    reply.start()
    return reply


def _new_conversation(
    backend: ChatBackend,
    owner: Owner,
    message: str,
    toolbox: tools.ToolBox,
    started: float,
    reply_id: UUID,
) -> "Reply":
    """A reply in a new conversation, relayed while its turn is stored.

    Nothing can make a new conversation's turn wait or fail but the database,
    so nothing need wait for it: the request goes upstream at once (`Early`),
    and the reply is relayed as it comes while the conversation and the user
    message are written (`PendingTurn`; on PostgreSQL a durable commit, a few
    milliseconds). The reply stores itself, and records its run, once the turn
    is stored; a turn that cannot be stored ends the reply with `not_saved`,
    and its upstream thread is deleted."""
    conversation = Conversation(id=uuid4(), backend=backend.alias)
    user_message_id = uuid4()
    turn = PendingTurn(
        conversation.pk,
        owner,
        functools.partial(
            _storing_turn,
            backend,
            owner,
            message,
            reply_id,
            conversation_id=None,
            thread_id=None,
            with_history=False,
            user_message_id=user_message_id,
            new_conversation_id=conversation.pk,
            now=timezone.now(),  # when it was sent, not when it is stored
            step=store.start_new_turn,
        ),
        deferred=bus.client() is None,
    ).task
    request = ReplyRequest(message=message, tools=toolbox)
    early = Early(backend.stream_reply(request))
    return Reply(
        backend=backend,
        conversation=conversation,
        request=request,
        started=started,
        message_id=reply_id,
        early=early,
        reply_to=user_message_id,
        turn=turn,
    )


def _storing_turn(
    backend: ChatBackend,
    owner: Owner,
    message: str,
    reply_id: UUID,
    *,
    now: datetime | None = None,
    step: Callable[..., Awaitable[store.TurnStart]] = store.start_turn,
    **turn: Any,
) -> Coroutine[Any, Any, store.TurnStart]:
    """Stores the turn reply `reply_id` answers (`step`, `store.start_turn`,
    `turn` its other arguments), trying again while the database connection
    fails. The user message was sent `now` (by default, now)."""
    return store.retrying(
        functools.partial(
            step,
            owner=owner,
            backend=backend.alias,
            message=message,
            now=now or timezone.now(),
            reply_id=reply_id,
            **turn,
        ),
        "starting a turn",
    )


class PendingTurn:
    """A new conversation's turn, stored while its reply is relayed.

    With Redis the write begins at once: the reply sends nothing before it is
    stored (`Reply._read`). On one replica the reply's frames go out meanwhile,
    and the write waits until the reply's first chunk is out and no other new
    reply of this process still waits for its own (`first_chunk`), until the
    reply ends, until a request of this process needs the conversation
    (`turns_stored`), or TURN_WRITE_DEFERRAL_SECONDS, whichever comes first. In
    a burst of new chats the writes (the ORM's work on the shared threads,
    holding the interpreter; on PostgreSQL the server's work too, on the same
    cores) otherwise ran beside the loop's work toward every chat's first chunk
    (bursts of 100 one-token chats, alternated runs: TTFC p50 122-128 -> 91-92
    ms, `bench/bursts.py`). It may be written after the request that started
    it has ended: its task has a context of its own, and the write runs as a
    reply's steps do (`store.start_new_turn`)."""

    __slots__ = ("_awaiting", "_begun", "_timer", "conversation_id", "owner", "task")

    def __init__(
        self,
        conversation_id: UUID,
        owner: Owner,
        store_it: Callable[[], Coroutine[Any, Any, store.TurnStart]],
        *,
        deferred: bool,
    ) -> None:
        global _FIRST_CHUNKS_AWAITED, _COUNTED_ON
        self.conversation_id = conversation_id
        self.owner = owner
        self._begun: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Its reply has yet to send its first chunk (counted while deferred).
        self._awaiting = deferred
        if deferred:
            loop = asyncio.get_running_loop()
            if _COUNTED_ON is not loop:
                # Another loop's count means nothing here (tests run a loop each).
                _COUNTED_ON, _FIRST_CHUNKS_AWAITED = loop, 0
                _READY.clear()
            _FIRST_CHUNKS_AWAITED += 1
            self._begun = asyncio.Event()
            self._timer = loop.call_later(TURN_WRITE_DEFERRAL_SECONDS, self.begin)
        self.task = asyncio.create_task(
            self._store(store_it) if deferred else store_it(),
            context=contextvars.Context(),
        )
        _STORING[conversation_id] = self
        self.task.add_done_callback(self._stored)

    async def _store(
        self, store_it: Callable[[], Coroutine[Any, Any, store.TurnStart]]
    ) -> store.TurnStart:
        assert self._begun is not None
        await self._begun.wait()
        return await store_it()

    def first_chunk(self) -> None:
        """Its reply's first chunk is out: the write begins once no other new
        reply of this process waits for its own."""
        if self._awaiting:
            _READY[self] = None
            self._awaited()

    def begin(self) -> None:
        """Starts the write now, if it waits."""
        if self._awaiting:
            self._awaited()
        _READY.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._begun is not None:
            self._begun.set()

    def _awaited(self) -> None:
        global _FIRST_CHUNKS_AWAITED
        self._awaiting = False
        if self.task.get_loop() is not _COUNTED_ON:
            return  # counted on a loop that is gone
        _FIRST_CHUNKS_AWAITED -= 1
        if not _FIRST_CHUNKS_AWAITED and _READY:
            for turn in list(_READY):
                turn.begin()

    def owned_by(self, owner: Owner) -> bool:
        if owner.user_id is not None:
            return self.owner.user_id == owner.user_id
        return (
            self.owner.user_id is None and self.owner.session_key == owner.session_key
        )

    def _stored(self, task: "asyncio.Task[store.TurnStart]") -> None:
        self.begin()  # its timer, if it was cancelled before it began
        if _STORING.get(self.conversation_id) is self:
            del _STORING[self.conversation_id]


# New replies of this process whose turns wait for their first chunk, and the
# turns whose reply's first chunk is out, waiting for the others' (`PendingTurn`).
_FIRST_CHUNKS_AWAITED = 0
_READY: dict[PendingTurn, None] = {}
_COUNTED_ON: asyncio.AbstractEventLoop | None = None


def first_chunk_out(conversation_id: UUID) -> None:
    """The conversation's new reply sent its first chunk (`PendingTurn`)."""
    pending = _STORING.get(conversation_id)
    if pending is not None:
        pending.first_chunk()


def begin_turn(conversation_id: UUID) -> None:
    """Starts writing the conversation's new turn, if it waits (`PendingTurn`)."""
    pending = _STORING.get(conversation_id)
    if pending is not None:
        pending.begin()


async def turns_stored(
    *, conversation_id: UUID | None = None, owner: Owner | None = None
) -> None:
    """Waits until the new conversations' turns this process has yet to store
    are stored (or failed): the conversation's, or the owner's.

    A client that has a reply's first frame may read its conversation at once.
    On one replica (no Redis) those frames go out before the turn is stored,
    so whatever reads or changes conversations here waits for it first (and
    starts its write, if it waits for the reply's first chunk). With Redis the
    next request may reach another replica, and a reply sends nothing before
    its turn is stored (`Reply._read`)."""
    if not _STORING:
        return
    pending = [
        turn
        for turn in _STORING.values()
        if turn.conversation_id == conversation_id
        or (owner is not None and turn.owned_by(owner))
    ]
    if pending:
        for turn in pending:
            turn.begin()
        await asyncio.wait({turn.task for turn in pending})


async def stop(conversation: Conversation, backend: ChatBackend) -> bool:
    """Stops the conversation's reply, here or on another replica. False when
    nothing is streaming in it."""
    reply = _ACTIVE.get(conversation.pk)
    if reply is not None:
        reply.stop(STOPPED)
        return True
    if conversation.active_since is None:
        return False
    holder = conversation.active_holder
    if holder and holder != lease.PROCESS_ID:
        # Its writer stops it (and cancels the run) when it hears.
        if await bus.ask_to_stop(holder, conversation.pk):
            return True
        if not await lease.alive(holder):
            reply = await take_over(conversation, backend)
            if reply is not None:
                reply.stop(STOPPED)
                return True
    if conversation.active_run_id:
        # Cancelling the upstream run ends the stream where it is read, with
        # status "cancelled".
        await backend.cancel(
            conversation.upstream_thread_id, conversation.active_run_id
        )
        return True
    return False


async def listen_for_stops() -> None:
    """Lets other replicas stop the replies this process writes (with Redis)."""
    await bus.ensure_listening(_stop_here)


def _stop_here(conversation_id: UUID) -> None:
    """A stop another replica sent to this one."""
    reply = _ACTIVE.get(conversation_id)
    if reply is not None:
        reply.stop(STOPPED)


async def take_over(conversation: Conversation, backend: ChatBackend) -> "Reply | None":
    """Finishes, in this process, the reply a dead process was writing: from
    its Redis log, where the upstream run is re-attached to (foundry), polled to
    its end (azure_agents) or, where it cannot be, ended as lost. None when
    there is nothing to take (no log, finished, the holder lives) or another
    process took it first."""
    redis_client = bus.client()
    message_id = conversation.active_message_id
    holder = conversation.active_holder
    if redis_client is None or message_id is None or not holder:
        return None
    if conversation.active_since is None or not await lease.dead(holder):
        return None
    log = await RemoteLog(redis_client, message_id).restore()
    if log is None or log.ended:
        return None
    claimed = await store.retrying(
        functools.partial(store.claim, conversation.pk, message_id, holder),
        f"taking over reply {message_id}",
    )
    if not claimed:
        return None
    await lease.ensure_heartbeat()
    await bus.ensure_listening(_stop_here)
    thread_id = conversation.upstream_thread_id or _logged_thread(log)
    run_id = log.run_id or conversation.active_run_id
    logger.warning(
        "taking over reply %s from %s (run %s, %d frames logged)",
        message_id,
        holder,
        run_id,
        len(log),
    )
    reply = Reply(
        backend=backend,
        conversation=conversation,
        request=ReplyRequest(message="", thread_id=thread_id),
        started=time.perf_counter(),
        message_id=message_id,
        log=log,
        resumption=base.Resumption(
            thread_id=thread_id or "",
            run_id=run_id or "",
            cursor=log.cursor,
            text=log.text,
        ),
        # After its question, which has the lock's time.
        created_at=conversation.active_since + store.AFTER_QUESTION,
    )
    reply.run_id = run_id
    reply.start()
    return reply


def _kept_tool(frame: frames.Tool) -> dict[str, Any]:
    """What a reply stores of a tool call: its frame without the type."""
    data = frame.model_dump()
    del data["type"]
    return data


def _logged_thread(log: ReplyLog) -> str | None:
    for _event_id, frame in log.after(-1):
        if isinstance(frame, frames.Metadata):
            return frame.thread_id
    return None


async def follow(
    conversation: Conversation, backend: ChatBackend, message_id: UUID | None = None
) -> "Reply | RemoteReply | None":
    """The conversation's reply (`message_id`, else its latest) wherever it is
    written: in this process, taken over from a process that died, or read
    from its Redis log. None when no log has it (it is stored, lost, or Redis
    is not configured or not answering)."""
    reply = find(conversation.pk)
    if reply is not None and message_id in (None, reply.message_id):
        return reply
    redis_client = bus.client()
    if redis_client is None:
        return None
    try:
        if message_id in (None, conversation.active_message_id):
            taken = await take_over(conversation, backend)
            if taken is not None:
                return taken
        wanted = message_id or conversation.active_message_id
        if wanted is None:
            wanted = await (
                Message.objects.filter(
                    conversation_id=conversation.pk, role=Message.Role.ASSISTANT
                )
                .order_by("-created_at")
                .values_list("pk", flat=True)
                .afirst()
            )
        if wanted is None:
            return None
        remote = RemoteLog(redis_client, wanted)
        # A reply being written may have nothing in its log yet.
        writing = wanted == conversation.active_message_id
        if not writing and not await remote.exists():
            return None
    except redis.RedisError:
        logger.warning("reading reply logs failed; resume is degraded", exc_info=True)
        return None
    return RemoteReply(conversation, backend, wanted, remote)


async def discard(conversation: Conversation, backend: ChatBackend) -> None:
    """Deletes a conversation: stops its reply (waiting for it to be stored),
    deletes its upstream thread where the service keeps one, then the rows."""
    reply = _ACTIVE.get(conversation.pk)
    if reply is not None:
        reply.stop(STOPPED)
        await wait_closed([reply], CLEANUP_TIMEOUT)
    _FINISHED.pop(conversation.pk, None)
    thread_id = conversation.upstream_thread_id
    if thread_id and conversation.backend == backend.alias:
        try:
            await backend.delete_thread(thread_id)
        except Exception:
            logger.warning(
                "deleting upstream thread %s failed", thread_id, exc_info=True
            )
    await conversation.adelete()


def find(conversation_id: UUID) -> "Reply | None":
    """The conversation's latest reply while its frames are here: streaming in
    this process, or finished in it less than `CHAT_REPLAY_TTL_SECONDS` ago."""
    reply = _ACTIVE.get(conversation_id)
    if reply is not None:
        return reply
    _forget_expired()
    kept = _FINISHED.get(conversation_id)
    return kept[1] if kept is not None else None


def _keep_finished(reply: "Reply") -> None:
    ttl = settings.CHAT_REPLAY_TTL_SECONDS
    if ttl <= 0:
        return
    _forget_expired()
    reply.shed()
    _FINISHED.pop(reply.conversation_id, None)
    _FINISHED[reply.conversation_id] = (time.monotonic() + ttl, reply)
    while len(_FINISHED) > MAX_FINISHED:
        del _FINISHED[next(iter(_FINISHED))]


def _forget_expired() -> None:
    # Oldest first: stop at the first one still wanted.
    now = time.monotonic()
    while _FINISHED:
        conversation_id, (expires, _reply) = next(iter(_FINISHED.items()))
        if expires > now:
            return
        del _FINISHED[conversation_id]


def lost(conversation: Conversation, backend: ChatBackend) -> list[frames.Frame]:
    """The frames of a reply whose server died while writing it."""
    message_id = str(conversation.active_message_id)
    return [
        _stored_metadata(conversation, message_id, backend),
        lost_error(message_id),
    ]


def lost_error(message_id: object) -> frames.Error:
    return frames.Error(
        code=base.PRODUCER_LOST,
        message="the server writing this reply stopped; send your message again",
        message_id=str(message_id),
    )


def _stored_metadata(
    conversation: Conversation, message_id: str, backend: ChatBackend
) -> frames.Metadata:
    """Metadata for a reply read back from the database."""
    return frames.Metadata(
        conversation_id=str(conversation.pk),
        thread_id=conversation.upstream_thread_id or None,
        message_id=message_id,
        **_described(conversation, backend),
    )


def _described(conversation: Conversation, backend: ChatBackend) -> dict[str, Any]:
    # The backend that wrote the conversation, which may not be today's.
    return {**backend.describe(), "backend": conversation.backend}


@dataclass(frozen=True, slots=True)
class StoredReply:
    frames: list[frames.Frame]  # metadata, the text as one chunk, the final frame
    body: dict[str, Any]  # the non-streaming fallback's JSON body


async def stored(
    conversation_id: UUID, message_id: UUID | None, backend: ChatBackend
) -> StoredReply | None:
    """A finished reply (the conversation's last, without `message_id`), from the
    database; None while it is not stored."""
    replies = Message.objects.select_related("conversation").filter(
        conversation_id=conversation_id, role=Message.Role.ASSISTANT
    )
    if message_id is not None:
        replies = replies.filter(pk=message_id)
    message = await replies.order_by("-created_at").afirst()
    if message is None:
        return None
    conversation = message.conversation
    finished = (message.finished_at or message.created_at).isoformat()
    metadata = _stored_metadata(conversation, str(message.pk), backend)
    if message.reply_to_id:
        metadata = metadata.model_copy(update={"reply_to": str(message.reply_to_id)})
    replay: list[frames.Frame] = [metadata]
    replay.extend(frames.Tool(**data) for data in message.tools)
    if message.content:
        replay.append(frames.Chunk(content=message.content))
    replay.extend(frames.Annotation(**data) for data in message.annotations)
    replay.extend(files.file_frame(conversation.pk, kept) for kept in message.files)
    error = None
    if message.status in (Message.Status.COMPLETE, Message.Status.CANCELLED):
        replay.append(
            frames.Done(
                full_response=message.content,
                timestamp=finished,
                message_id=str(message.pk),
                conversation_id=str(conversation.pk),
                status=message.status,
                usage=message.usage,
            )
        )
    else:
        error = frames.Error(
            code=message.error_code or base.INTERRUPTED,
            message=message.error_message or INTERRUPTED_MESSAGE,
            message_id=str(message.pk),
        )
        replay.append(error)
    body = _fallback_body(
        conversation_id=conversation.pk,
        thread_id=conversation.upstream_thread_id or None,
        message_id=message.pk,
        status=message.status,
        text=message.content,
        usage=message.usage,
        annotations=message.annotations,
        tools=message.tools,
        files=[
            files.file_frame(conversation.pk, kept).model_dump()
            for kept in message.files
        ],
        timestamp=finished,
        error=error,
        described=_described(conversation, backend),
    )
    return StoredReply(replay, body)


def open_replies() -> list["Reply"]:
    return list(_ACTIVE.values())


async def wait_copied(replies: list["Reply"], timeout: float) -> None:
    """Waits (bounded) until the replies' logs are in Redis: at shutdown, so that
    readers on other replicas get their final frames from the log."""
    copies = [
        asyncio.ensure_future(reply.mirror.wait_copied())
        for reply in replies
        if reply.mirror is not None
    ]
    if copies:
        _done, pending = await asyncio.wait(copies, timeout=timeout)
        for copy in pending:
            copy.cancel()


async def wait_closed(replies: list["Reply"], timeout: float) -> int:
    """Waits until the replies are stored; returns how many were not in time."""
    tasks = {reply.task for reply in replies if reply.task is not None}
    if not tasks:
        return 0
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    return len(pending)


# --- one reply ------------------------------------------------------------------------


# An Early's buffer once the reply took its events over: nothing reads it again.
_HANDED_OVER: collections.deque[base.Event] = collections.deque(maxlen=0)


async def _no_events() -> AsyncIterator[base.Event]:
    return
    yield


class Early:
    """A new conversation's events, read from the moment its request goes out;
    the reply takes them over with `handed_over()`, then reads `rest()`.

    Until then a task of its own reads them into a buffer: an upstream that
    sends its reply and closes meanwhile loses nothing (aiohttp drops what it
    buffered once the connection failed, unless a read was waiting), and a
    reply stopped before the upstream answered still learns the thread its
    request made (`thread_id`), to cancel the run in it."""

    __slots__ = (
        "_answered",
        "_buffered",
        "_ended",
        "_events",
        "_reader",
        "_taken",
        "_thread_id",
    )

    def __init__(self, events: AsyncIterator[base.Event]) -> None:
        self._events = events
        self._buffered: collections.deque[base.Event] = collections.deque()
        self._taken = False
        self._ended = False
        self._thread_id: str | None = None
        self._answered: asyncio.Event | None = asyncio.Event()
        # A context of its own, as the reply's producer has.
        self._reader: asyncio.Task[None] | None = asyncio.create_task(
            self._read(), context=contextvars.Context()
        )

    async def _read(self) -> None:
        answered = self._answered
        assert answered is not None
        try:
            async for event in self._events:
                if isinstance(event, base.ThreadReady):
                    self._thread_id = event.thread_id
                self._buffered.append(event)
                answered.set()
                if self._taken:
                    return
            self._ended = True
        finally:
            answered.set()

    async def handed_over(self) -> AsyncIterator[base.Event]:
        """The events read so far, and those the reader reads until it sees
        that the reply has taken over; `rest()` has the others."""
        self._taken = True
        reader = self._reader
        assert reader is not None
        while True:
            while self._buffered:
                yield self._buffered.popleft()
            if reader.done():
                break
            # asyncio.wait leaves the reader running when the reply is stopped
            # meanwhile: it still learns which thread the request made, to
            # cancel the run in it (`thread_id`).
            await asyncio.wait({reader})
        reader.result()  # its error, if it failed
        # Only the hand-over needed these; the reply holds its events for long.
        self._buffered = _HANDED_OVER
        self._answered = None
        self._reader = None

    def rest(self) -> AsyncIterator[base.Event]:
        """The events after `handed_over()`'s: the backend's iterator itself, so
        that no generator of ours sits between it and the reply for every event
        of its life."""
        return _no_events() if self._ended else self._events

    async def thread_id(self) -> str | None:
        """The upstream thread the request made, once it answered."""
        if self._thread_id is None and self._answered is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await self._answered.wait()
        return self._thread_id

    def close(self) -> None:
        """Stops reading, if the reply ended before it took over."""
        if self._reader is not None:
            self._reader.cancel()


class Reply:
    # More than 30 attributes: without slots, each reply (open, or kept for late
    # readers) would carry a dictionary of its own, 1.5 KiB.
    __slots__ = (
        "_deadline",
        "_last_event",
        "_producing",
        "_record_run",
        "_sent_metadata",
        "_turn",
        "_watchdog",
        "backend",
        "citations",
        "conversation_id",
        "created_at",
        "delta_count",
        "early",
        "error",
        "files",
        "first_chunk_at",
        "log",
        "message_id",
        "mirror",
        "replaced_thread_id",
        "reply_to",
        "request",
        "resources",
        "resumption",
        "run_id",
        "started",
        "status",
        "stop_reason",
        "task",
        "thread_id",
        "tools",
        "usage",
    )

    def __init__(
        self,
        *,
        backend: ChatBackend,
        conversation: Conversation,
        request: ReplyRequest,
        started: float,
        resources: contextlib.AsyncExitStack | None = None,
        message_id: UUID | None = None,
        log: ReplyLog | None = None,
        resumption: base.Resumption | None = None,
        created_at: datetime | None = None,
        early: Early | None = None,
        reply_to: UUID | None = None,
        turn: "asyncio.Task[store.TurnStart] | None" = None,
    ) -> None:
        self.backend = backend
        self.early = early
        # The turn's storing, when the reply is relayed while it is stored.
        self._turn = turn
        self.conversation_id: UUID = conversation.pk
        # The user message it answers (None: taken over, found when stored).
        self.reply_to = reply_to
        self.request = request
        self.started = started
        # What the reply holds until it is stored (the caller's stream slot).
        self.resources = resources
        self.created_at: datetime = created_at or timezone.now()
        self.message_id = message_id or uuid4()
        self.thread_id: str | None = request.thread_id
        self.replaced_thread_id: str | None = None
        self.run_id: str | None = None
        self.log = log or ReplyLog()
        # Set when this process finishes a reply another one started.
        self.resumption = resumption
        self.mirror: replylog.Mirror | None = None
        self.delta_count = 0
        self.citations: list[dict[str, Any]] = []
        # Each tool call's last frame, and the files made, as the reply stores them
        # (a taken-over reply's from its log).
        self.tools: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        for _event_id, frame in self.log.after(-1):
            if isinstance(frame, frames.Tool):
                self.tools[frame.id] = _kept_tool(frame)
            elif isinstance(frame, frames.File):
                # The frame has no container: a Responses file is not served.
                self.files[frame.file_id] = files.stored(
                    base.FileOutput(frame.file_id, frame.kind, frame.name)
                )
        self.usage: dict[str, Any] | None = None
        self.status = Message.Status.COMPLETE
        self.error: BackendError | None = None
        self.first_chunk_at: float | None = None
        self.stop_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._record_run: asyncio.Task[None] | None = None
        self._sent_metadata = len(self.log) > 0
        self._last_event = 0.0
        self._deadline = 0.0
        self._watchdog: ticks.Ticker | None = None
        self._producing = False

    # --- control -------------------------------------------------------------------

    def start(self) -> None:
        # A context of its own: the reply may outlive the request that started
        # it, and that request's thread-sensitive context (asgiref) with it.
        self.task = asyncio.create_task(
            self._produce(otel_context.get_current()),
            name=f"chat-reply-{self.conversation_id}",
            context=contextvars.Context(),
        )
        _ACTIVE[self.conversation_id] = self
        if self._turn is not None:
            self._turn.add_done_callback(self._turn_stored)
        redis_client = bus.client()
        if redis_client is not None:
            self.mirror = replylog.Mirror(
                self.log,
                replylog.redis_key(self.message_id),
                redis_client,
                written=len(self.log) - 1,
            ).start()

    def _turn_stored(self, turn: "asyncio.Task[store.TurnStart]") -> None:
        if turn.cancelled() or turn.exception() is not None:
            self.stop(NOT_STORED)
        elif self._turn is turn:
            # Stored: nothing of it is needed any more, and its result (the
            # conversation, the user message) would live as long as the reply.
            self._turn = None

    async def _stored_turn(self) -> bool:
        """Waits until the turn this reply answers is stored; False if it could
        not be."""
        turn = self._turn
        if turn is None:
            return True
        await asyncio.wait({turn})
        return not turn.cancelled() and turn.exception() is None

    def stop(self, reason: str) -> None:
        """Ends the reply early. The first reason wins, and the producer is
        cancelled once: a second cancel would interrupt its cleanup (storing the
        reply, cancelling the run, freeing the caller's stream slot)."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        # A task cancelled before its first step would skip its cleanup too: the
        # producer checks the reason when it starts.
        if self._producing and self.task is not None and not self.task.done():
            self.task.cancel()

    def shed(self) -> None:
        """Lets go of what only writing the reply needed. Up to MAX_FINISHED
        finished replies are kept for late readers, which need its frames and
        what `collect` reports; the upstream request and response, the tools,
        the history and the finished helper tasks were about a hundred objects
        more each, all of them walked by every collection of the generations
        they sit in."""
        self.early = None
        self.request = ReplyRequest(message="", thread_id=self.request.thread_id)
        self._record_run = None
        self._turn = None
        self._unwatch()

    @property
    def text(self) -> str:
        return self.log.text

    def ttfc_ms(self) -> float | None:
        if self.first_chunk_at is None:
            return None
        return round((self.first_chunk_at - self.started) * 1000, 3)

    # --- limits --------------------------------------------------------------------

    def _watch_time(self) -> None:
        """Stops the reply when the upstream is silent for too long or the reply
        outlives its maximum duration (checked by the loop's ticker, at most a
        tick late: `chat.ticks`)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._last_event = now
        self._deadline = now + settings.CHAT_MAX_STREAM_SECONDS
        self._watchdog = ticks.ticker(
            ticks.period_for(
                settings.CHAT_UPSTREAM_TIMEOUT_SECONDS, settings.CHAT_MAX_STREAM_SECONDS
            )
        )
        self._watchdog.add(self)

    def _due(self) -> float:
        if self.resumption is not None:
            # Finishing a run another process started: a backend may wait for
            # the run's end in silence (azure_agents polls until then).
            return self._deadline
        return min(
            self._last_event + settings.CHAT_UPSTREAM_TIMEOUT_SECONDS, self._deadline
        )

    def tick(self, now: float) -> None:
        if now >= self._due():
            self._unwatch()
            self.stop(TIMED_OUT)

    def _unwatch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.discard(self)
            self._watchdog = None

    # --- producer ------------------------------------------------------------------

    async def _produce(self, parent: otel_context.Context) -> None:
        with self._span(parent) as span:
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

    def _span(
        self, parent: otel_context.Context
    ) -> contextlib.AbstractContextManager[trace.Span]:
        """The reply's `chat.reply` span when traces are exported. Otherwise
        none: a span that records nothing still costs a dozen objects for the
        reply's whole life."""
        if not settings.APPLICATIONINSIGHTS_CONNECTION_STRING:
            return _NO_SPAN
        return tracer.start_as_current_span(
            "chat.reply",
            context=parent,
            attributes={
                "chat.backend": self.backend.alias,
                "chat.conversation_id": str(self.conversation_id),
            },
        )

    async def _relay_upstream(self) -> None:
        log = self.log
        clock = asyncio.get_running_loop().time
        delta = base.Delta
        completed = False
        self._watch_time()
        self._producing = True
        try:
            if self.stop_reason is not None:
                raise asyncio.CancelledError  # stopped before it began
            for events in self._event_sources():
                async for event in events:
                    self._last_event = clock()
                    if type(event) is delta:  # most events: no match statement
                        if self.first_chunk_at is None:
                            self.first_chunk_at = time.perf_counter()
                            self._send_metadata()
                            if self._turn is not None:
                                first_chunk_out(self.conversation_id)
                        self.delta_count += 1
                        log.append_chunk(event.text)
                        if event.cursor is not None:
                            log.cursor = event.cursor
                        continue
                    match event:
                        case base.ThreadReady():
                            self.thread_id = event.thread_id
                            self.replaced_thread_id = event.replaced_thread_id
                            self._send_metadata()
                        case base.RunStarted(run_id=run_id, cursor=cursor):
                            self.run_id = log.run_id = run_id
                            if cursor is not None:
                                log.cursor = cursor
                            if not self.backend.offline and self.thread_id:
                                # After the reply's previous run (function calls
                                # start another), so the last one is recorded.
                                self._record_run = asyncio.create_task(
                                    self._record(
                                        run_id, self.thread_id, self._record_run
                                    )
                                )
                                self._record_run.add_done_callback(self._recorded)
                        case base.Citation(data=data, cursor=cursor):
                            self.citations.append(data)
                            self._send_metadata()
                            log.append(frames.Annotation(**data))
                            if cursor is not None:
                                log.cursor = cursor
                        case base.ToolProgress(cursor=cursor):
                            self._send_metadata()
                            tool = frames.Tool(
                                id=event.id,
                                kind=event.kind,
                                name=event.name,
                                status=event.status,
                                input=event.input,
                                output=event.output,
                            )
                            self.tools[event.id] = _kept_tool(tool)
                            log.append(tool)
                            if cursor is not None:
                                log.cursor = cursor
                        case base.FileOutput(cursor=cursor):
                            self._send_metadata()
                            kept = files.stored(event)
                            if event.file_id not in self.files:
                                self.files[event.file_id] = kept
                                log.append(files.file_frame(self.conversation_id, kept))
                            if cursor is not None:
                                log.cursor = cursor
                        case base.Completed():
                            self.usage = event.usage
                            if event.cancelled:
                                self.status = Message.Status.CANCELLED
                            completed = True
                            break
                if completed:
                    break
            if not completed:
                raise BackendError(
                    base.INCOMPLETE, "the agent's reply ended before the run finished"
                )
        except BackendError as exc:
            self.error = exc
            self.status = (
                Message.Status.INTERRUPTED
                if exc.code == base.PRODUCER_LOST
                else Message.Status.FAILED
            )
            if exc.code in RUN_MAY_CONTINUE:
                # Upstream, the run goes on after its stream broke: it would keep
                # billing and refuse the conversation's next message.
                await self._cancel_upstream()
        except asyncio.CancelledError:
            reason = self.stop_reason or DISCONNECTED
            self.status = _STATUS_FOR_REASON[reason]
            if reason == TIMED_OUT:
                self.error = BackendError(
                    base.TIMEOUT,
                    f"the agent sent nothing for "
                    f"{settings.CHAT_UPSTREAM_TIMEOUT_SECONDS:g} seconds",
                )
            elif reason == SHUTDOWN:
                self.error = BackendError(
                    base.SERVER_SHUTDOWN,
                    "the server is restarting; send your message again",
                )
            elif reason == NOT_STORED:
                self.error = BackendError(
                    base.NOT_SAVED,
                    "your message could not be stored; send it again",
                )
            await self._cancel_upstream()
            raise
        except Exception:
            logger.exception("chat backend %s failed", self.backend.alias)
            self.error = BackendError(
                base.UPSTREAM_UNAVAILABLE, "the agent service failed unexpectedly"
            )
            self.status = Message.Status.FAILED
            await self._cancel_upstream()
        finally:
            # Its cleanup is not interrupted by a stop that comes meanwhile.
            self._producing = False
            self._unwatch()
            if self.early is not None:
                self.early.close()
            if self._turn is not None:
                begin_turn(self.conversation_id)  # if no chunk came
            try:
                await asyncio.shield(self._persist())
                if self.resources is not None:
                    await asyncio.shield(self.resources.aclose())
            finally:
                _ACTIVE.pop(self.conversation_id, None)
                self._send_metadata()
                log.append(self.final_frame(), final=True)
                _keep_finished(self)

    def _event_sources(self) -> Iterator[AsyncIterator[base.Event]]:
        """Where the reply's events come from, in turn. A new conversation's
        come from the request sent while its turn was stored: those read so far,
        then the backend's own iterator, read directly."""
        early = self.early
        if early is not None:
            yield early.handed_over()
            yield early.rest()
            return
        yield self._events()

    def _events(self) -> AsyncIterator[base.Event]:
        resumption = self.resumption
        if resumption is None:
            return self.backend.stream_reply(self.request)
        if not (resumption.thread_id and resumption.run_id):
            # Lost before the service named its run: nothing to re-attach to.
            return ChatBackend.resume_reply(self.backend, resumption)
        return self.backend.resume_reply(resumption)

    def _recorded(self, task: asyncio.Task[None]) -> None:
        # Done: nothing waits for it any more (a stream holds it for minutes).
        if self._record_run is task:
            self._record_run = None

    async def _record(
        self, run_id: str, thread_id: str, after: asyncio.Task[None] | None
    ) -> None:
        """Lets a stop request reach this run from any replica."""
        if after is not None:
            await asyncio.wait({after})
        if not await self._stored_turn():
            return
        try:
            await store.retrying(
                functools.partial(
                    store.record_run, self.conversation_id, run_id, thread_id
                ),
                f"recording run {run_id}",
            )
        except Exception:
            logger.exception("recording run %s failed", run_id)

    async def _cancel_upstream(self) -> None:
        if not self.thread_id and self.early is not None:
            self.thread_id = await self.early.thread_id()
        if not self.thread_id:
            return
        if self.run_id:
            cancel = self.backend.cancel(self.thread_id, self.run_id)
        else:
            # The run may exist with its id still on the way: find it.
            cancel = self.backend.cancel_active(self.thread_id)
        try:
            async with asyncio.timeout(UPSTREAM_CANCEL_TIMEOUT):
                await asyncio.shield(cancel)
        except (TimeoutError, asyncio.CancelledError):
            logger.warning("cancelling upstream run %s timed out", self.run_id)
        except Exception:
            logger.exception("cancelling upstream run %s failed", self.run_id)

    async def _delete_thread(self) -> None:
        """The upstream thread of a new conversation that was never stored."""
        if not self.thread_id:
            return
        try:
            async with asyncio.timeout(UPSTREAM_CANCEL_TIMEOUT):
                await asyncio.shield(self.backend.delete_thread(self.thread_id))
        except (TimeoutError, asyncio.CancelledError):
            logger.warning("deleting upstream thread %s timed out", self.thread_id)
        except Exception:
            logger.exception("deleting upstream thread %s failed", self.thread_id)

    async def _persist(self) -> None:
        if self._record_run is not None:
            await asyncio.wait({self._record_run}, timeout=CLEANUP_TIMEOUT)
        if not await self._stored_turn():
            # Neither the conversation nor its lock exist: nothing to store.
            turn = self._turn
            failure = turn.exception() if turn and not turn.cancelled() else None
            logger.error(
                "the turn of reply %s could not be stored",
                self.message_id,
                exc_info=failure,
            )
            self.status = Message.Status.FAILED
            self.error = BackendError(
                base.NOT_SAVED, "your message could not be stored; send it again"
            )
            await self._delete_thread()
            return
        fields = {
            "content": self.text,
            "status": self.status,
            "error_code": self.error.code if self.error else "",
            "error_message": self.error.message if self.error else "",
            "upstream_run_id": self.run_id or "",
            "usage": self.usage,
            "annotations": self.citations,
            "tools": list(self.tools.values()),
            "files": list(self.files.values()),
            "created_at": self.created_at,
            "time_to_first_chunk_ms": self.ttfc_ms(),
            "reply_to_id": self.reply_to,
        }
        try:
            await store.retrying(
                functools.partial(
                    store.finish_turn,
                    conversation_id=self.conversation_id,
                    message_id=self.message_id,
                    thread_id=self.thread_id,
                    fields=fields,
                ),
                f"storing reply {self.message_id}",
            )
        except Exception:
            logger.exception("storing reply %s failed", self.message_id)
            # Never a `done` that says the reply was kept.
            self.error = BackendError(
                base.NOT_SAVED, "the reply could not be stored; send your message again"
            )
            try:
                await store.retrying(
                    functools.partial(store.release, self.conversation_id),
                    f"releasing conversation {self.conversation_id}",
                )
            except Exception:
                logger.exception(
                    "releasing conversation %s failed", self.conversation_id
                )

    # --- frames ----------------------------------------------------------------------

    def _send_metadata(self) -> None:
        if not self._sent_metadata:
            self._sent_metadata = True
            self.log.append(self.metadata())

    def metadata(self) -> frames.Metadata:
        meta: dict[str, Any] = {}
        if self.replaced_thread_id:
            meta = {
                "thread_reset": True,
                "previous_thread_id": self.replaced_thread_id,
                "notice": "the previous agent thread was gone; a new one was started",
            }
        if self.reply_to is not None:
            meta["reply_to"] = str(self.reply_to)
        return frames.Metadata(
            conversation_id=str(self.conversation_id),
            thread_id=self.thread_id,
            message_id=str(self.message_id),
            **self.backend.describe(),
            **meta,
        )

    def final_frame(self) -> frames.Done | frames.Error:
        error = self.error
        if error is None and self.status == Message.Status.INTERRUPTED:
            # Seen only by a reader that attached after the first client left.
            error = BackendError(base.INTERRUPTED, INTERRUPTED_MESSAGE)
        if error is not None:
            return frames.Error(
                code=error.code,
                message=error.message,
                message_id=str(self.message_id),
                retry_after=error.retry_after,
            )
        return frames.Done(
            full_response=self.text,
            timestamp=timezone.now().isoformat(),
            message_id=str(self.message_id),
            conversation_id=str(self.conversation_id),
            status=(
                "cancelled" if self.status == Message.Status.CANCELLED else "complete"
            ),
            usage=self.usage,
        )

    def frames(self, last_id: int = -1, *, owner: bool = True) -> AsyncIterator[Event]:
        """The reply's frames after `last_id`, in order: metadata, chunks and
        citations, then one `done` or `error`; keep-alives (None) while nothing
        arrives. Chunks that queued up while the client was slow come as one.

        The owner is the request that started the reply: when it goes away
        before the end, the reply goes on without it (`CHAT_ON_DISCONNECT`
        continue) or stops (cancel). Other readers just stop reading."""
        return self._read(last_id, owner, encoded=False)

    def sse(self, last_id: int = -1, *, owner: bool = True) -> AsyncIterator[bytes]:
        """The reply as the bytes of a `text/event-stream` body: `frames()`
        encoded as it reads them, so that a delta passes one generator on its
        way to the client, not two."""
        return self._read(last_id, owner, encoded=True)

    async def _read(
        self,
        last_id: int,
        owner: bool,
        encoded: bool,
    ) -> AsyncIterator[Any]:
        log = self.log
        chunk, encode_chunk, encode_data = (
            frames.Chunk,
            frames.encode_chunk,
            frames.encode_data,
        )
        chunks = 0
        if last_id >= len(log):
            last_id = -1  # an id this reply never sent: from its start
        ended = log.ended and last_id + 1 >= len(log)
        if ended and not owner:
            # A reader that has everything gets the final frame again, rather
            # than an empty stream that an EventSource would reopen for ever.
            last_id, ended = len(log) - 2, False
        follower = replylog.Follower(log, settings.CHAT_KEEPALIVE_SECONDS)
        try:
            if (
                self._turn is not None
                and not self._turn.done()
                and bus.client() is not None
            ):
                # A client that has a frame may read the conversation at once,
                # and with Redis on another replica: nothing goes out before it
                # is stored (the reply is produced meanwhile). On one replica
                # the reads here wait for it instead (`turns_stored`).
                await asyncio.wait({self._turn})
            while not ended:
                waiter = follower.waiter(last_id)
                if waiter is not None and not await waiter:
                    yield frames.KEEPALIVE if encoded else (last_id, None)
                    continue
                if not encoded:
                    for event_id, frame in log.after(last_id):
                        last_id = event_id
                        if type(frame) is chunk:
                            chunks += 1
                        yield event_id, frame
                else:
                    for event_id, item in log.raw_after(last_id):
                        last_id = event_id
                        if type(item) is str:
                            chunks += 1
                            yield encode_chunk(event_id, item)
                        else:
                            yield encode_data(event_id, item)
                ended = log.ended and last_id + 1 >= len(log)
        finally:
            follower.close()
            task = self.task
            if owner and task is not None:
                detached = not ended and settings.CHAT_ON_DISCONNECT == "continue"
                if not ended and not detached:
                    self.stop(DISCONNECTED)
                if not detached:
                    await asyncio.wait({task}, timeout=CLEANUP_TIMEOUT)
                requestlog.annotate(
                    backend=self.backend.alias,
                    reply_status="detached" if detached else str(self.status),
                    error_code=self.error.code if self.error else None,
                    chunks=chunks,
                    ttfc_ms=self.ttfc_ms(),
                )

    async def collect(self, *, owner: bool = True) -> dict[str, Any]:
        """The whole reply as one JSON object (the non-streaming fallback)."""
        async for _event in self.frames(owner=owner):
            pass
        final = self.final_frame() if self.error is not None else None
        return _fallback_body(
            conversation_id=self.conversation_id,
            thread_id=self.thread_id,
            message_id=self.message_id,
            status=self.status,
            text=self.text,
            usage=self.usage,
            annotations=self.citations,
            tools=list(self.tools.values()),
            files=[
                files.file_frame(self.conversation_id, kept).model_dump()
                for kept in self.files.values()
            ],
            timestamp=timezone.now().isoformat(),
            error=final if isinstance(final, frames.Error) else None,
            described=self.backend.describe(),
        )


class RemoteReply:
    """A reply another process writes (or wrote), read from its Redis log.

    While nothing arrives, the reader checks every half lease that the writer
    lives; when it has died, this process takes the reply over and the reader
    goes on from the local reply, with the same event ids."""

    def __init__(
        self,
        conversation: Conversation,
        backend: ChatBackend,
        message_id: UUID,
        remote: RemoteLog,
    ) -> None:
        self.conversation_id: UUID = conversation.pk
        self.backend = backend
        self.message_id = message_id
        self.remote = remote
        self.final: frames.Done | frames.Error | None = None
        self.text_parts: list[str] = []
        self.annotations: list[dict[str, Any]] = []
        self.tools: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.thread_id: str | None = None

    async def frames(
        self, last_id: int = -1, *, owner: bool = False
    ) -> AsyncIterator[Event]:
        remote = self.remote
        loop = asyncio.get_running_loop()
        keepalive = settings.CHAT_KEEPALIVE_SECONDS
        check_every = min(keepalive, settings.CHAT_LEASE_SECONDS / 2)
        last = await remote.last()
        if last is not None:
            last_event, last_frame = last
            if last_frame.type in replylog.FINAL_TYPES:
                if last_id > last_event:
                    last_id = -1  # an id this reply never sent: from its start
                elif last_id == last_event:
                    # A reader that has everything gets the final frame again.
                    last_id = last_event - 1
            # Otherwise an id past the log's end is one the writer sent before
            # its copy reached Redis: what follows it comes.
        quiet_since = loop.time()
        failures = 0
        while not remote.ended:
            try:
                batch = await remote.read(last_id, check_every)
                writer = None if batch else await self._writer()
                failures = 0
            except (redis.RedisError, OSError):
                # Redis went away (or its connections did, with a restart): try
                # again, then end the body cleanly, and the client resumes from
                # its last id as any reconnecting client does.
                if failures == len(READ_RETRY_DELAYS):
                    logger.warning(
                        "reading reply %s from Redis failed; ending this stream",
                        self.message_id,
                        exc_info=True,
                    )
                    return
                await asyncio.sleep(READ_RETRY_DELAYS[failures])
                failures += 1
                continue
            if batch:
                for event_id, frame in batch:
                    last_id = event_id
                    self._note(frame)
                    yield event_id, frame
                quiet_since = loop.time()
                continue
            if loop.time() - quiet_since >= keepalive:
                yield last_id, None
                quiet_since = loop.time()
            if writer is WRITING:
                continue
            if writer is LOST:
                yield last_id + 1, lost_error(self.message_id)
                return
            if isinstance(writer, Reply):
                # Taken over here: the same frames, from this process.
                async for event_id, frame in writer.frames(last_id, owner=False):
                    if frame is not None:
                        self._note(frame)
                    yield event_id, frame
                return
            # Finished: its final frame is in the log, unless Redis failed at
            # the end; the database has it either way.
            for event_id, frame in await remote.read(last_id, 0.001):
                last_id = event_id
                self._note(frame)
                yield event_id, frame
            if not remote.ended:
                final = await self._stored_final()
                self._note(final)
                yield last_id + 1, final
            return

    def _note(self, frame: "frames.Frame") -> None:
        match frame:
            case frames.Chunk(content=content):
                self.text_parts.append(content)
            case frames.Annotation():
                self.annotations.append(frame.model_dump())
            case frames.Tool():
                self.tools[frame.id] = _kept_tool(frame)
            case frames.File():
                self.files[frame.file_id] = frame.model_dump()
            case frames.Metadata(thread_id=thread_id):
                self.thread_id = thread_id
            case frames.Done() | frames.Error():
                self.final = frame

    async def _writer(self) -> "Reply | str":
        """WRITING while a live process writes the reply (another process may
        have taken it over); the reply, when this process took it over now;
        FINISHED when the reply is no longer being written."""
        conversation = await Conversation.objects.filter(
            pk=self.conversation_id
        ).afirst()
        if conversation is None or conversation.active_message_id != self.message_id:
            return FINISHED
        if await lease.alive(conversation.active_holder):
            return WRITING
        taken = await take_over(conversation, self.backend)
        if taken is not None:
            return taken
        if await self.remote.exists():
            return WRITING  # another replica took it over, or is storing it
        # Its writer died before its log had anything: there is nothing to finish.
        return LOST

    async def _stored_final(self) -> "frames.Frame":
        stored_reply = await stored(self.conversation_id, self.message_id, self.backend)
        if stored_reply is not None:
            return stored_reply.frames[-1]
        return lost_error(self.message_id)

    def sse(self, last_id: int = -1, *, owner: bool = False) -> AsyncIterator[bytes]:
        return _encoded(self.frames(last_id))

    async def collect(self, *, owner: bool = False) -> dict[str, Any]:
        async for _event in self.frames():
            pass
        final = self.final
        done = final if isinstance(final, frames.Done) else None
        return _fallback_body(
            conversation_id=self.conversation_id,
            thread_id=self.thread_id,
            message_id=self.message_id,
            status=done.status if done else Message.Status.FAILED,
            text="".join(self.text_parts),
            usage=done.usage if done else None,
            annotations=self.annotations,
            tools=list(self.tools.values()),
            files=list(self.files.values()),
            timestamp=done.timestamp if done else timezone.now().isoformat(),
            error=final if isinstance(final, frames.Error) else None,
            described=self.backend.describe(),
        )


async def _encoded(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """A reply's events as the bytes of a `text/event-stream` body."""
    encode, keepalive = frames.encode, frames.KEEPALIVE
    async for event_id, frame in events:
        yield keepalive if frame is None else encode(event_id, frame)


def _fallback_body(
    *,
    conversation_id: UUID,
    thread_id: str | None,
    message_id: UUID,
    status: str,
    text: str,
    usage: dict[str, Any] | None,
    annotations: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    files: list[dict[str, Any]],
    timestamp: str,
    error: frames.Error | None,
    described: dict[str, Any],
) -> dict[str, Any]:
    """A reply as the non-streaming fallback's JSON body."""
    failure = None
    if error is not None:
        failure = {"code": error.code, "message": error.message}
        if error.retry_after is not None:
            failure["retry_after"] = error.retry_after
    return {
        "conversation_id": str(conversation_id),
        "thread_id": thread_id,
        "message_id": str(message_id),
        "status": status,
        "full_response": text,
        "usage": usage,
        "annotations": annotations,
        "tools": tools,
        "files": files,
        "timestamp": timestamp,
        "error": failure,
        **described,
    }
