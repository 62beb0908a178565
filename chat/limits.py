"""Per-caller chat limits, counted in Django's cache (Redis when REDIS_URL is set,
so every replica shares them; local memory otherwise).

Two limits: messages per minute (a fixed one-minute window) and replies streaming
at once. Both are checked before any stream starts; over a limit the caller gets
429 with Retry-After.

A caller is a user; an anonymous visitor's browser session (so that people
behind one address, an office NAT, each have their own limits); or, without
cookies, an IP address. The sessions from one address also share a looser
ceiling, so that throwing the cookie away does not lift the limits.
"""

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from chat import lease
from chat.models import Owner
from chatsite.api import BadRequest


@dataclass(frozen=True, slots=True)
class Caller:
    key: str  # what the limits count: "user:…", "session:…" or "ip:…"
    ceiling: str = ""  # for a session: what all its address's sessions share


def caller_of(request: HttpRequest, owner: Owner) -> Caller:
    # Behind the Container Apps ingress, chatsite.middleware.ClientAddressMiddleware
    # puts here the address the ingress appended to X-Forwarded-For.
    address = f"ip:{request.META.get('REMOTE_ADDR', 'unknown')}"
    if owner.user_id is not None:
        return Caller(f"user:{owner.user_id}")
    if owner.session_key:
        return Caller(f"session:{owner.session_key}", ceiling=f"sessions-at-{address}")
    return Caller(address)


def _limited(message: str, retry_after: int) -> BadRequest:
    return BadRequest(
        message,
        429,
        code="rate_limited",
        headers={"Retry-After": str(retry_after)},
    )


async def check_message_rate(caller: Caller) -> None:
    now = time.time()
    window = int(now // 60)
    retry_after = max(1, int((window + 1) * 60 - now) + 1)
    for key, limit in _counted(
        caller,
        settings.CHAT_RATE_LIMIT_PER_MINUTE,
        settings.CHAT_RATE_LIMIT_PER_MINUTE_PER_IP,
    ):
        counter = f"chat:rate:{key}:{window}"
        await cache.aadd(counter, 0, timeout=90)
        if await cache.aincr(counter) > limit:
            raise _limited(
                f"too many messages: at most {limit} per minute", retry_after
            )


def _counted(caller: Caller, limit: int, ceiling: int) -> list[tuple[str, int]]:
    """The counters a caller's request takes, with their limits (0 = off)."""
    counted = [(caller.key, limit)] if limit else []
    if caller.ceiling and ceiling:
        counted.append((caller.ceiling, ceiling))
    return counted


def stream_slot(caller: Caller) -> contextlib.AbstractAsyncContextManager[None] | None:
    """Holds one of the caller's concurrent-stream slots for the life of a reply
    (and one of its address's, for a session); None when no limit applies.

    Entering raises the 429 when none is left; leaving gives the slots back,
    whatever ended the reply."""
    counted = _counted(
        caller,
        settings.CHAT_MAX_CONCURRENT_STREAMS,
        settings.CHAT_MAX_CONCURRENT_STREAMS_PER_IP,
    )
    return _slots(counted) if counted else None


@contextlib.asynccontextmanager
async def _slots(counted: list[tuple[str, int]]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as slots:
        for key, limit in counted:
            await slots.enter_async_context(_slot(f"chat:streams:{key}", limit))
        yield


@contextlib.asynccontextmanager
async def _slot(key: str, limit: int) -> AsyncIterator[None]:
    """One of `limit` slots, each an entry of its own that lives while its holder
    beats (chat.lease): a process that dies frees its slots within a lease."""
    start = secrets.randbelow(limit)
    for n in range(limit):
        slot = f"{key}:{(start + n) % limit}"
        if await lease.take(slot):
            break
    else:
        raise _limited(f"too many replies streaming at once (at most {limit})", 5)
    try:
        yield
    finally:
        await lease.give_back(slot)
