"""Who holds what, and whether it is still alive: a process identity and its
heartbeat, in Django's cache (Redis when REDIS_URL is set, so every replica sees
every other; local memory otherwise, where only this process exists).

A process that streams replies writes `alive:<its id>` every third of
`CHAT_LEASE_SECONDS`, with that expiry. Conversation locks record their holder's
id, and the caller's stream slots are cache entries of their own that the
heartbeat keeps from expiring. When a process dies (kill -9, an OOM kill, a lost
node) its heartbeat stops: within one lease its slots expire and its locks count
as free, and the next request in the conversation stores the reply it lost.
"""

import asyncio
import contextvars
import logging
import os
import secrets
import socket

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

# Cache keys this process keeps alive: its stream slots.
_held: set[str] = set()
_heartbeat: asyncio.Task[None] | None = None


def _alive_key(process_id: str) -> str:
    return f"chat:alive:{process_id}"


def is_alive(process_id: str) -> bool:
    """Whether `process_id` still beats (blocking; for database steps' threads)."""
    return process_id == PROCESS_ID or cache.get(_alive_key(process_id)) is not None


async def alive(process_id: str) -> bool:
    return (
        process_id == PROCESS_ID or await cache.aget(_alive_key(process_id)) is not None
    )


async def dead(process_id: str) -> bool:
    """Whether `process_id` died: its lease is missing, and still missing a
    moment later. A live process whose beats failed while the cache was
    unreachable beats again within `_retry_delay()` of the cache coming back;
    taking its work over in that window would make two writers of one reply."""
    if await alive(process_id):
        return False
    await asyncio.sleep(_confirm_delay())
    return not await alive(process_id)


def _confirm_delay() -> float:
    return max(1.0, settings.CHAT_LEASE_SECONDS / 5)


def _retry_delay() -> float:
    return min(0.5, settings.CHAT_LEASE_SECONDS / 6)


async def ensure_heartbeat() -> None:
    """Starts this process's heartbeat on the running loop, once (at start-up
    under a server; at the first reply otherwise)."""
    global _heartbeat
    loop = asyncio.get_running_loop()
    running = _heartbeat is not None and not _heartbeat.done()
    if running and _heartbeat.get_loop() is loop:
        return
    await _beat()
    # A context of its own: the task outlives the request that may start it.
    _heartbeat = loop.create_task(
        _beat_forever(), name="chat-lease-heartbeat", context=contextvars.Context()
    )


async def _beat() -> None:
    lease = settings.CHAT_LEASE_SECONDS
    await cache.aset(_alive_key(PROCESS_ID), 1, timeout=lease)
    for key in list(_held):
        await cache.atouch(key, lease)


async def _beat_forever() -> None:
    delay = settings.CHAT_LEASE_SECONDS / 3
    while True:
        await asyncio.sleep(delay)
        try:
            await _beat()
            delay = settings.CHAT_LEASE_SECONDS / 3
        except Exception:
            # The cache is unreachable: beat again as soon as it answers, before
            # another process counts this one as dead.
            if delay != _retry_delay():
                logger.warning("lease heartbeat failed", exc_info=True)
            delay = _retry_delay()


async def take(key: str) -> bool:
    """Takes `key` for this process unless another holder has it; it lasts one
    lease, renewed by the heartbeat until `give_back`."""
    if await cache.aadd(key, PROCESS_ID, timeout=settings.CHAT_LEASE_SECONDS):
        _held.add(key)
        return True
    return False


async def give_back(key: str) -> None:
    _held.discard(key)
    try:
        if await cache.aget(key) == PROCESS_ID:
            await cache.adelete(key)
    except Exception:
        # The cache is unreachable: the entry expires with its lease.
        logger.warning("giving back %s failed", key, exc_info=True)
