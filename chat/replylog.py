"""A reply's frames, by event id, for every reader of the reply.

The producer appends; each reader (the first response, a retried POST that
attaches to it) reads the frames after the last id it sent and waits for more.
Event ids are positions in the log, so they mean the same to every reader.

Chunks are most of a reply and a token is a few characters, so their text is kept
once, compactly: as UTF-8 in one growing buffer, with an array of offsets that
finds any chunk's text again (a string per token costs ten times its text; at 100
open streams of 100 tokens, about 5 KiB of each stream's memory). Other frames
(metadata, citations, the final frame) are kept as the JSON their `data:` line
carries: the metadata frame as a model was 1.6 KiB of every open stream, its
JSON is 0.3 KiB, and readers send it as it is.

With Redis (`REDIS_URL`) every frame also goes to a Redis Stream per reply, so
that any replica can replay it, follow it live, and finish it if this process
dies: `Mirror` copies the log there in the background (the producer and the
live readers never wait on Redis), `RemoteLog` reads it from another process.
Each copy round adds one entry per reply: the frames appended since the last
round, as the exact bytes a client receives (`s`: `data: …\nid: N\n\n` each), with
the entry id `<id of its last frame>-1`, and the upstream's position (`k`: the
cursor of the last delta or citation in) and run id (`r`) when they changed.
Reading after an event id is XREAD after `<that id>-1`, less the frames of the
first entry up to it.
"""

import asyncio
import contextlib
import contextvars
import logging
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import Any
from weakref import WeakKeyDictionary

import redis.asyncio as redis
from django.conf import settings

from chat import frames, ticks

logger = logging.getLogger(__name__)

# Chunk text as UTF-8; "surrogatepass" keeps any str (a lone surrogate too) as it
# came, and a chunk's bytes always decode back to exactly its text.
_ERRORS = "surrogatepass"


class ReplyLog:
    __slots__ = (
        "_chunk_ends",
        "_ended",
        "_other_ids",
        "_others",
        "_text",
        "_waiters",
        "_watcher",
        "cursor",
        "run_id",
    )

    def __init__(self) -> None:
        self._text = bytearray()  # every chunk's text, UTF-8, in order
        # Per chunk, in order: its end in _text (a reply is far below 4 GiB).
        self._chunk_ends = array("I")
        self._other_ids: list[int] = []  # ascending
        self._others: list[bytes] = []  # each other frame's JSON, in that order
        self._ended = False
        # Each waiting reader's own future: True when a frame came, False when
        # its wait timed out.
        self._waiters: list[asyncio.Future[bool]] = []
        # Called at every append: the Redis copy's mark (chat.replylog.Mirror).
        self._watcher: Callable[[], None] | None = None
        # Where the upstream run is, for whoever must finish it elsewhere.
        self.cursor: int | None = None
        self.run_id: str | None = None

    def __len__(self) -> int:
        return len(self._chunk_ends) + len(self._other_ids)

    @property
    def ended(self) -> bool:
        """The final frame is in the log."""
        return self._ended

    @property
    def text(self) -> str:
        """The text of every chunk so far."""
        return self._text.decode("utf-8", _ERRORS)

    # --- writing -------------------------------------------------------------------

    def append_chunk(self, text: str) -> None:
        buffer = self._text
        buffer += text.encode("utf-8", _ERRORS)
        self._chunk_ends.append(len(buffer))
        self._wake()

    def append(self, frame: frames.Frame, *, final: bool = False) -> None:
        event_id = len(self)
        self._others.append(frames.dump(frame).encode())
        self._other_ids.append(event_id)
        self._ended = self._ended or final
        self._wake()

    def _wake(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            watcher()
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    # --- reading -------------------------------------------------------------------

    def after(self, last_id: int) -> Iterator[tuple[int, frames.Frame]]:
        """The frames after `last_id`, with runs of chunks joined into one chunk
        that carries the id of its last part."""
        for event_id, item in self.raw_after(last_id):
            if type(item) is str:
                yield event_id, frames.Chunk(content=item)
            else:
                yield event_id, frames.load(item)

    def raw_after(self, last_id: int) -> Iterator[tuple[int, str | bytes]]:
        """`after()` as it is kept: a run of chunks as its text (a str,
        `frames.encode_chunk` encodes it), another frame as its JSON (bytes,
        `frames.encode_data`)."""
        event_id = last_id + 1
        end = len(self)
        others, other_ids = self._others, self._other_ids
        following = bisect_right(other_ids, last_id)  # the next other frame
        while event_id < end:
            if following < len(other_ids) and other_ids[following] == event_id:
                yield event_id, others[following]
                following += 1
                event_id += 1
                continue
            # A run of chunks up to the next other frame (or the end).
            run_end = other_ids[following] if following < len(other_ids) else end
            first = event_id - following  # chunk index of this id
            last = run_end - 1 - following
            yield run_end - 1, self._chunk_text(first, last)
            event_id = run_end

    def encoded(self, first_id: int, end_id: int) -> bytes:
        """Every frame from `first_id` up to `end_id`, chunks one by one, as the
        bytes of an event stream."""
        others, other_ids = self._others, self._other_ids
        following = bisect_right(other_ids, first_id - 1)
        chunk_index = first_id - following
        parts = []
        for event_id in range(first_id, end_id):
            if following < len(other_ids) and other_ids[following] == event_id:
                parts.append(frames.encode_data(event_id, others[following]))
                following += 1
            else:
                text = self._chunk_text(chunk_index, chunk_index)
                parts.append(frames.encode_chunk(event_id, text))
                chunk_index += 1
        return b"".join(parts)

    def _chunk_text(self, first: int, last: int) -> str:
        ends = self._chunk_ends
        start = ends[first - 1] if first else 0
        return self._text[start : ends[last]].decode("utf-8", _ERRORS)

    async def wait(self, last_id: int, timeout: float) -> bool:
        """Waits until there is a frame after `last_id`; False on timeout."""
        follower = Follower(self, timeout)
        try:
            waiter = follower.waiter(last_id)
            if waiter is not None:
                await waiter
        finally:
            follower.close()
        return len(self) > last_id + 1


class Follower:
    """One reader's waits on a log, for as long as it reads.

    A reader waits once per frame while the reply streams. Each wait is one
    future of the reader's own, which the next append sets to True. For the
    quiet limit (the keep-alive) the reader is a member of the loop's ticker
    (`chat.ticks`) from its start until `close()`: a timer per wait made a
    timer handle, a context and a callback per frame, and the collector walked
    them; a timer per reader was half a kilobyte of every open stream.
    """

    __slots__ = ("_log", "_loop", "_quiet", "_since", "_ticker", "_waiter")

    def __init__(self, log: ReplyLog, quiet: float) -> None:
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._quiet = quiet
        self._since = 0.0
        self._waiter: asyncio.Future[bool] | None = None
        # A member from the start: a wait per frame adds nothing to the ticker.
        self._ticker = ticks.ticker(ticks.period_for(quiet))
        self._ticker.add(self)

    def waiter(self, last_id: int) -> "asyncio.Future[bool] | None":
        """None when there is a frame after `last_id`; otherwise a future that
        becomes True when one comes, or False after `quiet` seconds without
        (at most a tick later)."""
        log = self._log
        if len(log) > last_id + 1:
            return None
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        log._waiters.append(waiter)
        self._since = loop.time()
        return waiter

    def tick(self, now: float) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or now < self._since + self._quiet:
            return
        waiter.set_result(False)
        self._forget(waiter)

    def _forget(self, waiter: "asyncio.Future[bool]") -> None:
        with contextlib.suppress(ValueError):
            self._log._waiters.remove(waiter)

    def close(self) -> None:
        self._ticker.discard(self)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and (not waiter.done() or waiter.cancelled()):
            # The reader left while waiting: it may still be listed.
            waiter.cancel()
            self._forget(waiter)


# --- the Redis Stream copy ------------------------------------------------------------

# Seconds between tries of a mirror whose Redis went away.
MIRROR_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
# How long the copier gathers frames before a round: one round trip and one
# entry per reply carry everything appended meanwhile. A reader on another
# replica sees a frame this much later; the writer's own readers, at once.
COPY_INTERVAL = 0.01
FINAL_TYPES = frozenset({"done", "error"})


def redis_key(message_id: object) -> str:
    return f"chatsite:reply:{message_id}"


def _entry_id(event_id: int) -> str:
    return f"{event_id}-1"


def _event_id(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _frames(fields: dict[bytes, bytes]) -> Iterator[tuple[int, frames.Frame]]:
    """The frames of an entry: its `data:`/`id:` pairs, as `frames.encode`
    wrote them."""
    for event in fields[b"s"].split(b"\n\n"):
        if event:
            data, event_id = event.split(b"\nid: ")
            yield int(event_id), frames.load(data.removeprefix(b"data: "))


class Mirror:
    """Keeps one reply log copied to its Redis Stream, through the process's
    `Copier`: appends mark it, and the copier sends what it lacks."""

    def __init__(
        self, log: ReplyLog, key: str, client: redis.Redis, *, written: int = -1
    ) -> None:
        self.log = log
        self.key = key
        self.copier = Copier.of(client)
        self.written = written  # the last event id in Redis
        self.cursor: int | None = log.cursor
        self.run_id: str | None = log.run_id
        self.degraded = False
        self.commands = 0  # sent, for the benchmark and the tests
        self._done: asyncio.Future[None] | None = None

    def start(self) -> "Mirror":
        self._done = asyncio.get_running_loop().create_future()
        self.log._watcher = self._appended
        self._appended()
        return self

    def stop(self) -> None:
        """Stops copying (the log is forgotten where it stands)."""
        self.log._watcher = None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def wait_copied(self) -> None:
        """Waits until the whole log, final frame included, is in Redis."""
        if self._done is not None:
            await asyncio.shield(self._done)

    def _appended(self) -> None:
        self.copier.mark(self)

    def _plan(self, pipe: Any) -> tuple[int, int | None, str | None] | None:
        """Queues the frames Redis lacks on `pipe`; what they bring it to."""
        log = self.log
        end = len(log)
        if self.written + 1 >= end:
            return None
        cursor, run_id, ended = log.cursor, log.run_id, log.ended
        queued = len(pipe)
        fields: dict[str, bytes | str] = {"s": log.encoded(self.written + 1, end)}
        if cursor is not None and cursor != self.cursor:
            fields["k"] = str(cursor)
        if run_id is not None and run_id != self.run_id:
            fields["r"] = run_id
        pipe.xadd(
            self.key,
            fields,
            id=_entry_id(end - 1),
            maxlen=settings.CHAT_REPLAY_MAX_ENTRIES,
            approximate=True,
        )
        if self.written < 0 or ended:
            # A reply that never ends (its process died) expires anyway.
            ttl = settings.CHAT_REPLAY_TTL_SECONDS
            if not ended:
                ttl += settings.CHAT_MAX_STREAM_SECONDS
            pipe.expire(self.key, max(1, int(ttl)))
        self.commands += len(pipe) - queued
        return end, cursor, run_id

    def _copied(self, state: tuple[int, int | None, str | None]) -> None:
        end, self.cursor, self.run_id = state
        self.written = end - 1
        if self.degraded:
            self.degraded = False
            logger.info("reply log %s: Redis answers again", self.key)
        if self.log.ended and self.written + 1 >= len(self.log):
            self.stop()

    def _failed(self, error: Exception) -> None:
        if not self.degraded:
            logger.warning(
                "reply log %s: Redis failed (%s); resume is degraded until it answers",
                self.key,
                error,
                exc_info=error,
            )
        self.degraded = True


class Copier:
    """Copies the reply logs of this process to Redis: one pipeline in flight,
    carrying every frame appended to any log since the previous one. However
    many replies stream, that is one connection and at most one round trip per
    frame; under load, far fewer. The producers and the live readers never
    wait on it. When Redis fails, each log catches up once it answers."""

    _copiers: "WeakKeyDictionary[redis.Redis, Copier]" = WeakKeyDictionary()

    @classmethod
    def of(cls, client: redis.Redis) -> "Copier":
        copier = cls._copiers.get(client)
        if copier is None:
            copier = cls._copiers[client] = cls(client)
        return copier

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._dirty: dict[Mirror, None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def mark(self, mirror: Mirror) -> None:
        self._dirty[mirror] = None
        self._wake.set()
        if self._task is None or self._task.done():
            # A context of its own: it outlives the request that starts it.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="chat-reply-log-copier", context=contextvars.Context()
            )

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            await asyncio.sleep(COPY_INTERVAL)
            self._wake.clear()
            batch = list(self._dirty)
            self._dirty.clear()
            try:
                retry = await self._copy(batch)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                for mirror in batch:
                    mirror._failed(exc)
                retry = batch
                failures += 1
            if retry:
                last = len(MIRROR_RETRY_DELAYS) - 1
                await asyncio.sleep(MIRROR_RETRY_DELAYS[min(failures, last)])
                with contextlib.suppress(Exception):
                    await self._resync(retry)
                for mirror in retry:
                    self.mark(mirror)

    async def _copy(self, batch: list[Mirror]) -> list[Mirror]:
        """Sends the batch's frames; the mirrors whose commands failed."""
        pipe = self.client.pipeline(transaction=False)
        planned = []
        for mirror in batch:
            first = len(pipe)
            state = mirror._plan(pipe)
            if state is not None:
                planned.append((mirror, first, len(pipe), state))
        if not planned:
            return []
        results = await pipe.execute(raise_on_error=False)
        failed = []
        for mirror, first, end, state in planned:
            errors = [r for r in results[first:end] if isinstance(r, Exception)]
            if errors:
                mirror._failed(errors[0])
                failed.append(mirror)
            else:
                mirror._copied(state)
        return failed

    async def _resync(self, mirrors: list[Mirror]) -> None:
        """What reached Redis of each log: a batch may have half run, or another
        process may have written the log since."""
        pipe = self.client.pipeline(transaction=False)
        for mirror in mirrors:
            pipe.xrevrange(mirror.key, count=1)
        for mirror, last in zip(mirrors, await pipe.execute(), strict=True):
            mirror.written = _event_id(last[0][0]) if last else -1


class RemoteLog:
    """A reply's Redis Stream, read from any process."""

    def __init__(self, client: redis.Redis, message_id: object) -> None:
        self.client = client
        self.key = redis_key(message_id)
        self.ended = False

    async def exists(self) -> bool:
        return bool(await self.client.exists(self.key))

    async def read(
        self, last_id: int, timeout: float
    ) -> list[tuple[int, frames.Frame]]:
        """The frames after `last_id`, waiting up to `timeout` for the first;
        runs of chunks come joined, with the id of their last part."""
        start = _entry_id(last_id) if last_id >= 0 else "0-0"
        answer = await self.client.xread(
            {self.key: start}, count=1000, block=max(1, int(timeout * 1000))
        )
        if not answer:
            return []
        return self._joined(answer[0][1], last_id)

    def _joined(
        self, entries: list[Any], last_id: int
    ) -> list[tuple[int, frames.Frame]]:
        out: list[tuple[int, frames.Frame]] = []
        run: list[str] = []
        run_id = -1
        for _entry_id, fields in entries:
            for event_id, frame in _frames(fields):
                if event_id <= last_id:
                    continue
                if type(frame) is frames.Chunk:
                    run.append(frame.content)
                    run_id = event_id
                    continue
                if run:
                    out.append((run_id, frames.Chunk(content="".join(run))))
                    run = []
                out.append((event_id, frame))
                if frame.type in FINAL_TYPES:
                    self.ended = True
        if run:
            out.append((run_id, frames.Chunk(content="".join(run))))
        return out

    async def last(self) -> tuple[int, frames.Frame] | None:
        found = await self.client.xrevrange(self.key, count=1)
        if not found:
            return None
        *_before, last = _frames(found[0][1])
        return last

    async def restore(self) -> ReplyLog | None:
        """The whole log, rebuilt in this process, with the upstream's cursor
        and run id; None when it is gone or lost its start (capped)."""
        log = ReplyLog()
        entries = await self.client.xrange(self.key)
        for _entry_id, fields in entries:
            for event_id, frame in _frames(fields):
                if event_id != len(log):
                    return None
                if type(frame) is frames.Chunk:
                    log.append_chunk(frame.content)
                else:
                    log.append(frame, final=frame.type in FINAL_TYPES)
            if b"k" in fields:
                log.cursor = int(fields[b"k"])
            if b"r" in fields:
                log.run_id = fields[b"r"].decode()
        return log if len(log) else None
