"""`Idempotency-Key` on POST /api/chat: a retried POST never sends the message twice.

The first POST with a key claims it in Django's cache (Redis when REDIS_URL is set,
so every replica sees it), then records which reply it started. A retry with the
same key, from the same caller, with the same body, gets that reply instead of a
new run: attached to it while it streams, or as stored once it has finished. The
same key with another body is refused. Keys live `CHAT_IDEMPOTENCY_SECONDS`.
"""

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from django.conf import settings
from django.core.cache import cache

from chatsite.api import BadRequest

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# A retry that races the first POST waits this long for it to start the reply.
CLAIM_WAIT_SECONDS = 5.0
_PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Started:
    """The reply a key's first POST started."""

    conversation_id: UUID
    message_id: UUID


def key_of(headers: Any) -> str | None:
    key = headers.get(HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise BadRequest(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters",
            code="invalid_request",
        )
    return key


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps([str(part) for part in parts])).hexdigest()


def _cache_key(caller: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"chat:idempotency:{caller}:{digest}"


class Claim:
    """A key this request holds: `record` the reply it starts, or `release` the
    key when the request fails before starting one."""

    def __init__(self, cache_key: str, body: str) -> None:
        self.cache_key = cache_key
        self.body = body

    async def record(self, conversation_id: UUID, message_id: UUID) -> None:
        await cache.aset(
            self.cache_key,
            {"body": self.body, "reply": [str(conversation_id), str(message_id)]},
            timeout=settings.CHAT_IDEMPOTENCY_SECONDS,
        )

    async def release(self) -> None:
        await cache.adelete(self.cache_key)


class Once:
    """What `once` found: `started`, the reply an earlier request with the same
    key started; otherwise this request goes ahead and `record`s its reply."""

    def __init__(self, claim: Claim | Started | None) -> None:
        self.started = claim if isinstance(claim, Started) else None
        self._claim = claim if isinstance(claim, Claim) else None
        self.recorded = False

    async def record(self, conversation_id: UUID, message_id: UUID) -> None:
        if self._claim is not None:
            await self._claim.record(conversation_id, message_id)
        self.recorded = True


@contextlib.asynccontextmanager
async def once(headers: Any, caller: str, *body: object) -> AsyncIterator[Once]:
    """The request's Idempotency-Key (if any) for `body` from `caller`: claimed
    for the block, and let go again if the block fails before `record`."""
    key = key_of(headers)
    found = Once(None if key is None else await claim(caller, key, fingerprint(*body)))
    try:
        yield found
    except BaseException:
        if found._claim is not None and not found.recorded:
            await found._claim.release()
        raise


async def claim(caller: str, key: str, body: str) -> Claim | Started:
    """Claims `key` for this request, or returns the reply an earlier request
    with the same key started. Raises 409 when that request had another body or
    has not started its reply after a while."""
    cache_key = _cache_key(caller, key)
    pending = {"body": body, "reply": _PENDING}
    deadline = asyncio.get_running_loop().time() + CLAIM_WAIT_SECONDS
    while True:
        # Free, or let go by a first request that failed: this one takes it.
        if await cache.aadd(
            cache_key, pending, timeout=settings.CHAT_IDEMPOTENCY_SECONDS
        ):
            return Claim(cache_key, body)
        entry = await cache.aget(cache_key)
        if entry is not None and entry["body"] != body:
            raise BadRequest(
                f"this {HEADER} was used for another message",
                409,
                code="idempotency_key_reused",
            )
        if entry is not None and entry["reply"] != _PENDING:
            conversation_id, message_id = entry["reply"]
            return Started(UUID(conversation_id), UUID(message_id))
        if asyncio.get_running_loop().time() >= deadline:
            raise BadRequest(
                f"a request with this {HEADER} is still starting; retry shortly",
                409,
                code="idempotency_key_in_use",
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(0.05)
