"""Redis for replies that outlive their process: one client per event loop, and
the channel on which other replicas ask this one to stop a reply it writes.

Configured by `REDIS_URL` (the cache uses the same server). Without it there is
one process, and everything here is a no-op: `client()` is None.

Stop: each process listens on `chat:stop:<its process id>`; a replica that gets
a stop for a reply another process writes publishes the conversation id there.
PUBLISH answers how many listeners heard it, so the sender knows whether the
holder got the message (1) or is gone (0).
"""

import asyncio
import contextvars
import logging
from collections.abc import Callable
from uuid import UUID
from weakref import WeakKeyDictionary

import redis.asyncio as redis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from chat import lease

logger = logging.getLogger(__name__)

# Reconnect delays of the stop listener after Redis went away, in seconds.
LISTEN_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)

_clients: "WeakKeyDictionary[asyncio.AbstractEventLoop, redis.Redis]" = (
    WeakKeyDictionary()
)
_listener: asyncio.Task[None] | None = None


def client() -> redis.Redis | None:
    """This event loop's Redis client, or None without `REDIS_URL`."""
    if not settings.REDIS_URL:
        return None
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = _clients[loop] = redis.Redis.from_url(
            settings.REDIS_URL,
            # Never wait on an unreachable Redis for long: callers degrade, and
            # retry in their own loops (redis-py's default tries 10 times).
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
            socket_connect_timeout=2,
            socket_timeout=settings.CHAT_KEEPALIVE_SECONDS + 5,
            health_check_interval=30,
        )
    return found


def stop_channel(process_id: str) -> str:
    return f"chat:stop:{process_id}"


async def ask_to_stop(holder: str, conversation_id: UUID) -> bool:
    """Asks the process `holder` to stop the conversation's reply; whether it
    heard (False without Redis, or when the holder does not listen)."""
    redis_client = client()
    if redis_client is None:
        return False
    try:
        heard = await redis_client.publish(stop_channel(holder), str(conversation_id))
    except redis.RedisError:
        logger.warning("publishing a stop to %s failed", holder, exc_info=True)
        return False
    return heard > 0


async def ensure_listening(on_stop: Callable[[UUID], None]) -> None:
    """Listens for stops sent to this process, once per event loop; returns as
    soon as the subscription is in place (or has failed and is being retried)."""
    global _listener
    if client() is None:
        return
    loop = asyncio.get_running_loop()
    if _listener is not None and not _listener.done() and _listener.get_loop() is loop:
        return
    subscribed = loop.create_future()
    _listener = loop.create_task(
        _listen(on_stop, subscribed),
        name="chat-stop-listener",
        context=contextvars.Context(),
    )
    await asyncio.wait((subscribed, _listener), return_when=asyncio.FIRST_COMPLETED)


async def _listen(
    on_stop: Callable[[UUID], None], subscribed: asyncio.Future[None]
) -> None:
    channel = stop_channel(lease.PROCESS_ID)
    failures = 0
    while True:
        redis_client = client()
        assert redis_client is not None
        try:
            async with redis_client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                failures = 0
                if not subscribed.done():
                    subscribed.set_result(None)
                async for message in pubsub.listen():
                    _deliver(on_stop, message.get("data"))
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = LISTEN_RETRY_DELAYS[min(failures, len(LISTEN_RETRY_DELAYS) - 1)]
            failures += 1
            if failures == 1:
                logger.warning("stop listener lost Redis", exc_info=True)
            if not subscribed.done():
                subscribed.set_result(None)  # start-up goes on; this retries
            await asyncio.sleep(delay)


def _deliver(on_stop: Callable[[UUID], None], data: object) -> None:
    try:
        conversation_id = UUID(data.decode() if isinstance(data, bytes) else str(data))
    except ValueError:
        logger.warning("ignoring a malformed stop message %r", data)
        return
    on_stop(conversation_id)


async def aclose() -> None:
    """Stops the listener and closes this loop's client (at shutdown)."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None and not listener.done():
        listener.cancel()
        await asyncio.wait((listener,))
    loop = asyncio.get_running_loop()
    found = _clients.pop(loop, None)
    if found is not None:
        await found.aclose()
