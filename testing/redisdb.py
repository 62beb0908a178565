"""A Redis database of a test's own, emptied before and after, with the app
pointed at it (`REDIS_URL`). Skips without Redis, except under CI=true."""

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from chat import bus

HOST_PORT = "127.0.0.1:6379"


def url(db: int, host_port: str = HOST_PORT) -> str:
    return f"redis://{host_port}/{db}"


@contextlib.asynccontextmanager
async def scratch_redis(settings: Any, db: int) -> AsyncIterator[redis.Redis]:
    """The database `db`, empty, as the app's Redis; an admin client to it."""
    admin = redis.Redis.from_url(url(db))
    try:
        await admin.ping()
    except (redis.ConnectionError, OSError):
        await admin.aclose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"needs Redis on {HOST_PORT}")
    await admin.flushdb()
    settings.REDIS_URL = url(db)
    try:
        yield admin
    finally:
        await bus.aclose()
        await admin.flushdb()
        await admin.aclose()
