"""Background responses: generated on the emulator, not on a connection.

A response created with ``"background": true`` runs in a task of its own
(`BackgroundResponse.run`): a client that closes its stream, or dies, does not
stop it; ``POST /responses/{id}/cancel``, deleting its conversation or resetting
the emulator does. Every event it sends is kept in its `EventLog` under its
sequence number, so that any number of streams can follow it: the creating
request's (with ``"stream": true``) and each ``GET
/responses/{id}?stream=true&starting_after=N``, which get the kept events after N,
then each new one, until the terminal event ends their body.

The Responses stream has no event of its own for a cancel: a cancelled background
response ends its streams with response.failed, whose response has status
"cancelled" (and no error). The disconnect and incomplete faults cut or end the
streams following at that moment, after the events they were given; the response
goes on, as it does on the service, and can be followed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .response_events import ResponseEvents
from .stream import CLIENT_POLL_SECONDS, SERVER_ERROR, RecordedDelta

logger = logging.getLogger("emulator")

# How a follower stops: at a disconnect fault (its socket is closed), at an
# incomplete one or at the end of the log (its body ends), or when its client left.
CUT = "disconnect"
ENDED = "incomplete"
LEFT = "left"


@dataclass(eq=False)
class Follower:
    """One stream following a log: the next sequence number it sends, and where
    it must stop early (a position and how), if a fault said so."""

    position: int
    stop: tuple[int, str] | None = None


class EventLog:
    """A background response's SSE frames, by sequence number, and the streams
    that follow them."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed = False
        self._followers: set[Follower] = set()
        self._changed = asyncio.Event()

    def append(self, frame: str) -> None:
        self.frames.append(frame)
        self._notify()

    def close(self) -> None:
        """No event will follow: each stream ends once it has sent them all."""
        self.closed = True
        self._notify()

    def interrupt(self, how: str) -> None:
        """Stops the streams following now once they have sent the frames kept so
        far: `CUT` closes their sockets, `ENDED` ends their bodies cleanly."""
        for follower in self._followers:
            follower.stop = (len(self.frames), how)
        self._notify()

    async def follow(
        self, request: web.Request, response: web.StreamResponse, after: int
    ) -> None:
        """Writes the frames after sequence number `after` into `response`, then
        each new one, until the log closes or a fault interrupts it."""
        follower = Follower(position=after + 1)
        self._followers.add(follower)
        try:
            how = await self._relay(request, response, follower)
        except ConnectionError:
            return
        finally:
            self._followers.discard(follower)
        if how == CUT:
            if request.transport is not None:
                request.transport.close()
        elif how != LEFT:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()

    async def _relay(
        self, request: web.Request, response: web.StreamResponse, follower: Follower
    ) -> str:
        while True:
            changed = self._changed
            stop = follower.stop
            end = len(self.frames) if stop is None else stop[0]
            if follower.position < end:
                await response.write(self.frames[follower.position].encode())
                follower.position += 1
            elif stop is not None:
                return stop[1]
            elif self.closed:
                return ENDED
            elif not await _changed(changed, request):
                return LEFT

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


async def _changed(changed: asyncio.Event, request: web.Request) -> bool:
    """Waits for `changed`; False if the client went away first."""
    while True:
        try:
            async with asyncio.timeout(CLIENT_POLL_SECONDS):
                await changed.wait()
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return False
        else:
            return True


class BackgroundResponse(ResponseEvents):
    """A response in background mode: `run` takes it to a terminal status, its
    events going to `log`; `finished` is set once it is there."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.log = EventLog()
        self.finished = asyncio.Event()

    async def run(self) -> None:
        try:
            await self.drive()
        except Exception:
            logger.exception("Emulator background response %s failed", self.run_id)
            if self.response.active:
                self.response.error = dict(SERVER_ERROR)
                self._stop("failed")
            self.log.interrupt(CUT)
        finally:
            self.log.close()
            self.finished.set()

    async def _send(self, frame: str, delta: tuple[int, str] | None = None) -> None:
        self.log.append(frame)
        if delta is not None:
            index, text = delta
            self.deltas.append(
                RecordedDelta(
                    self.run_id,
                    self.thread_id,
                    index,
                    text,
                    time.time(),
                    time.monotonic(),
                )
            )

    async def _strike(self, fault: str) -> bool:
        if fault in (CUT, ENDED):
            # The connection fails, not the response.
            self.log.interrupt(fault)
            return False
        return await super()._strike(fault)

    async def _cancelled(self) -> None:
        self._stop("cancelled")
        await self._emit("response.failed", response=self.response.to_dict())
