"""Process shutdown: end open replies cleanly and store them before exiting.

On SIGTERM uvicorn stops accepting, waits up to `--timeout-graceful-shutdown` for
open connections, then cancels what is left and exits. Replies still streaming
after `CHAT_DRAIN_SECONDS` are stopped here first: each stores its partial text,
cancels its upstream run and sends a final `server_shutdown` error frame, so the
client sees a clean end it can retry instead of a cut connection.

On SIGUSR1 the process logs one line counting what is open (asyncio tasks, open
replies, threads): `kill -USR1 <pid>` tells an operator, or a test, whether
anything outlives the requests that started it.
"""

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.conf import settings

from chat import bus, lease, relay
from chat.backends import aclose_all

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 8.0
# For the last frames of stopped replies to reach Redis.
MIRROR_GRACE_SECONDS = 2.0

_drain: asyncio.TimerHandle | None = None


def watch_for_termination() -> None:
    """Chains a drain step in front of the server's SIGTERM/SIGINT handlers.

    Called at lifespan startup, when uvicorn's own handlers are installed.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(
            received: int, frame: FrameType | None, previous: Any = previous
        ) -> None:
            loop.call_soon_threadsafe(_schedule_drain, loop)
            if callable(previous):
                previous(received, frame)

        signal.signal(signum, handler)


# The collector runs on a clock, not on allocation counts (tune_garbage_collector).
YOUNG_COLLECTION_SECONDS = 0.25
# While no request begins or ends, the young collection waits this long at most.
QUIET_YOUNG_COLLECTION_SECONDS = 2.0
FULL_COLLECTION_SECONDS = 900.0
# The full collection waits for this long without a reply streaming: right after
# a burst more requests are likely, and it walks every object (about 95 ms of
# CPU with 160,000 of them).
IDLE_SECONDS = 60.0
_collector: "_Clock | None" = None


def tune_garbage_collector(turnover: Callable[[], int] | None = None) -> None:
    """Collects on a clock: the young generation every quarter second, after which
    what survived is frozen; everything once no reply has streamed for a
    minute, every quarter hour at most. `turnover` counts the requests begun
    and ended so far: a quarter second in which none began or ended skips its
    young collection, up to two seconds (without it, none is skipped). Called at
    lifespan startup, on the serving loop.

    Why, from the soak (bench/SOAK.md): CPython starts a young collection when
    allocations minus deallocations pass a threshold. While hundreds of streams
    run, objects of streams that began since the last collection pile up in the
    young generation while objects of streams that ended are freed, so the
    count stays low as the generation grows: young collections walked 150,000-
    175,000 objects at 500 streams, 70-116 ms each, and found nothing (this app
    leaves no garbage in cycles per request). Collected every quarter second,
    the young generation holds what the last quarter second made (a collection
    takes about 1 µs per object walked, so the pause is about a quarter of a
    second's new survivors); frozen afterwards, survivors are never walked
    again, and still freed as soon as nothing refers to them. A cycle that
    outlives a quarter second waits for the next collection of everything,
    which runs only once no reply has streamed for a minute, so that no stream
    waits for it (in a half-hour soak it found 10 objects).

    Why the quiet skip: what a young collection walks is what requests that
    began or ended left alive (hundreds of objects each while they start, a
    finished reply kept for late readers) and, per open stream, the few
    awaitables that relaying each delta makes anew (a waiter, a task's step),
    which are as many a quarter second later as two seconds later. While no
    request begins or ends, the second part is all there is, and walking it
    every quarter second found nothing. With 1,000 streams open for 40 s (bench
    `hold1000`, same run, `--experiments everytick` for the clock before): 99
    young collections instead of 221, 461 instead of 1,532 ms of the collector's
    CPU, the longest 14.7 against 14.5 ms."""
    global _collector
    gc.collect()
    gc.freeze()
    gc.disable()
    _collector = _Clock(asyncio.get_running_loop(), turnover)


def restore_garbage_collector() -> None:
    """Back to CPython's own collector (for tests)."""
    global _collector
    if _collector is not None:
        _collector.cancel()
        _collector = None
    gc.unfreeze()
    gc.enable()


class _Clock:
    """The collections of tune_garbage_collector, on the loop's timer."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, turnover: Callable[[], int] | None
    ) -> None:
        self._loop = loop
        self._turnover = turnover
        now = loop.time()
        self._full_due = now + FULL_COLLECTION_SECONDS
        self._busy_at = 0.0
        self._young_at = now
        self._seen = turnover() if turnover is not None else 0
        self._timer = loop.call_later(YOUNG_COLLECTION_SECONDS, self._tick)

    def cancel(self) -> None:
        self._timer.cancel()

    def _tick(self) -> None:
        loop = self._loop
        now = loop.time()
        self._timer = loop.call_later(YOUNG_COLLECTION_SECONDS, self._tick)
        if relay.open_replies():
            self._busy_at = now
        turnover = self._turnover
        seen = turnover() if turnover is not None else self._seen + 1
        # Half a tick early: the timer's ticks drift by a little.
        quiet_for = now - self._young_at + YOUNG_COLLECTION_SECONDS / 2
        if seen == self._seen and quiet_for < QUIET_YOUNG_COLLECTION_SECONDS:
            return
        self._seen = seen
        self._young_at = now
        gc.collect(0)
        if now >= self._full_due and now - self._busy_at >= IDLE_SECONDS:
            gc.unfreeze()
            gc.collect()
            self._full_due = loop.time() + FULL_COLLECTION_SECONDS
        gc.freeze()


async def start_heartbeat() -> None:
    """Starts the process's lease heartbeat (chat.lease). Called at lifespan
    startup, so that it counts among the tasks that are always there."""
    try:
        await lease.ensure_heartbeat()
        await relay.listen_for_stops()
    except Exception:
        # The shared cache is unreachable: the first reply tries again.
        logger.warning("starting the lease heartbeat failed", exc_info=True)


def watch_for_count_requests() -> None:
    """Logs `log_counts()` on SIGUSR1. Called at lifespan startup."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_counts)


def log_counts() -> dict[str, int]:
    counts = {
        "asyncio_tasks": len(asyncio.all_tasks()),
        "open_replies": len(relay.open_replies()),
        "threads": threading.active_count(),
    }
    # Asked for explicitly, so it shows at every usual LOG_LEVEL.
    logger.warning("runtime counts", extra=counts)
    return counts


def _schedule_drain(loop: asyncio.AbstractEventLoop) -> None:
    global _drain
    if _drain is None:
        _drain = loop.call_later(settings.CHAT_DRAIN_SECONDS, stop_open_replies)


def stop_open_replies() -> list[relay.Reply]:
    replies = relay.open_replies()
    for reply in replies:
        reply.stop(relay.SHUTDOWN)
    if replies:
        logger.info("stopping %d open replies for shutdown", len(replies))
    return replies


async def shutdown(grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """Stops replies that are still open and waits for their cleanup.

    uvicorn cancels the request tasks before this runs, but they only run their
    cleanup when the loop gets control again, which is here: waiting lets each
    producer store its partial reply and cancel its upstream run.
    """
    stopped = stop_open_replies()
    pending = await relay.wait_closed(stopped, grace)
    if pending:
        logger.warning("%d replies did not finish storing at shutdown", pending)
    await relay.wait_copied(stopped, MIRROR_GRACE_SECONDS)
    await aclose_all()
    await bus.aclose()
