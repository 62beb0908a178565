"""Per-caller chat limits, counted in Django's cache (Redis when REDIS_URL is set,
so every replica shares them; local memory otherwise).

Two limits: messages per minute (a fixed one-minute window) and replies streaming
at once. Both are checked before any stream starts; over a limit the caller gets
429 with Retry-After.
"""

import contextlib
import time
from collections.abc import AsyncIterator

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from chatsite.api import BadRequest


def caller_key(request: HttpRequest) -> str:
    user = request.api_user
    if user.is_authenticated:
        return f"user:{user.pk}"
    # Behind the Container Apps proxy, uvicorn's --proxy-headers puts the client's
    # address here from X-Forwarded-For.
    return f"ip:{request.META.get('REMOTE_ADDR', 'unknown')}"


def _limited(message: str, retry_after: int) -> BadRequest:
    return BadRequest(
        message,
        429,
        code="rate_limited",
        headers={"Retry-After": str(retry_after)},
    )


async def check_message_rate(request: HttpRequest) -> None:
    limit = settings.CHAT_RATE_LIMIT_PER_MINUTE
    if not limit:
        return
    now = time.time()
    window = int(now // 60)
    key = f"chat:rate:{caller_key(request)}:{window}"
    await cache.aadd(key, 0, timeout=90)
    if await cache.aincr(key) > limit:
        retry_after = max(1, int((window + 1) * 60 - now) + 1)
        raise _limited(f"too many messages: at most {limit} per minute", retry_after)


@contextlib.asynccontextmanager
async def stream_slot(caller: str) -> AsyncIterator[None]:
    """Holds one of the caller's concurrent-stream slots for the life of a reply.

    Entering raises the 429 when the caller has none left; leaving gives the slot
    back, whatever ended the reply."""
    limit = settings.CHAT_MAX_CONCURRENT_STREAMS
    if not limit:
        yield
        return
    key = f"chat:streams:{caller}"
    # The timeout only matters if a process dies holding slots.
    await cache.aadd(key, 0, timeout=int(settings.CHAT_MAX_STREAM_SECONDS) + 60)
    if await cache.aincr(key) > limit:
        await cache.adecr(key)
        raise _limited(f"too many replies streaming at once (at most {limit})", 5)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # expired meanwhile
            await cache.adecr(key)
