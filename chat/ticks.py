"""One timer for the deadlines of every open stream.

A reply's watchdog and its reader's keep-alive each need a deadline that moves
as events come and almost never fires. A timer handle each cost about half a
kilobyte of every open stream's memory. Here a `Ticker` calls `tick(now)` of
each of its members every `period` seconds from one timer, which runs only while
it has members: a member costs an entry in a set, and a deadline is met at most
one period late (`period_for`: a quarter of the shortest limit, at most 1 s).
"""

import asyncio
import logging
from typing import Protocol

logger = logging.getLogger(__name__)

# The longest a deadline is met late.
MAX_PERIOD = 1.0


class Member(Protocol):
    def tick(self, now: float) -> None: ...


class Ticker:
    __slots__ = ("_members", "_period", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop = loop
        self._period = period
        self._members: set[Member] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._members)

    @property
    def running(self) -> bool:
        return self._timer is not None

    def add(self, member: Member) -> None:
        self._members.add(member)
        if self._timer is None:
            self._timer = self.loop.call_later(self._period, self._tick)

    def discard(self, member: Member) -> None:
        self._members.discard(member)

    def _tick(self) -> None:
        if not self._members:
            self._timer = None
            return
        now = self.loop.time()
        for member in list(self._members):
            try:
                member.tick(now)
            except Exception:
                logger.exception("a deadline check failed")
        self._timer = self.loop.call_later(self._period, self._tick)


_tickers: dict[float, Ticker] = {}


def period_for(*limits: float) -> float:
    return min(MAX_PERIOD, min(limits) / 4)


def ticker(period: float) -> Ticker:
    """The running loop's ticker of `period` seconds."""
    loop = asyncio.get_running_loop()
    found = _tickers.get(period)
    if found is None or found.loop is not loop:
        found = _tickers[period] = Ticker(loop, period)
    return found
