"""Waiting for something a test cannot await directly: a row another process
writes, a run the emulator sees cancelled, a line in a server's log.

There is one deadline, generous on purpose: a test says what it waits for, never
how soon it must happen.
"""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

WAIT_SECONDS = 15.0
POLL_SECONDS = 0.02


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = WAIT_SECONDS,
    interval: float = POLL_SECONDS,
) -> Any:
    """Polls `predicate` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(predicate, timeout))
        time.sleep(interval)
    return value


async def await_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = WAIT_SECONDS,
    interval: float = POLL_SECONDS,
) -> Any:
    """`wait_until` on the running event loop; `predicate` may be a coroutine
    function (an async ORM query)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(predicate, timeout))
        await asyncio.sleep(interval)


def _timed_out(predicate: Callable[[], Any], timeout: float) -> str:
    name = getattr(predicate, "__qualname__", type(predicate).__name__)
    return f"{name} still false after {timeout:g} s"
