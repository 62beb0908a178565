"""Per-caller rate limits on POST /api/chat, in local memory and in Redis."""

import uuid

import pytest
from django.core.cache import caches
from django.test import AsyncClient

from chat.models import Message
from testing.sse import chat, data_frames, parse_sse, read_stream
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_CACHE = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/0",
        # A fresh prefix per test: Redis outlives the test process.
        "KEY_PREFIX": f"chatsite-test-{uuid.uuid4().hex}",
    }
}


@pytest.fixture(params=["locmem", "redis"])
def cache_backend(request, settings) -> str:
    if request.param == "redis":
        settings.CACHES = REDIS_CACHE
        settings.REDIS_URL = REDIS_CACHE["default"]["LOCATION"]
    return request.param


async def test_it_limits_messages_per_minute(
    async_client: AsyncClient, settings, cache_backend: str
) -> None:
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 2
    for _ in range(2):
        assert (await chat(async_client)).status_code == 200
    response = await chat(async_client)
    assert response.status_code == 429
    assert response.json()["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 61

    async def both_stored() -> bool:
        # On one replica, once their first words are out.
        return await Message.objects.filter(role="user").acount() == 2

    await await_until(both_stored)


async def test_it_counts_each_user_separately(
    settings, django_user_model, cache_backend: str
) -> None:
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    alice, bob = AsyncClient(), AsyncClient()
    await alice.aforce_login(await django_user_model.objects.acreate_user("alice"))
    await bob.aforce_login(await django_user_model.objects.acreate_user("bob"))
    assert (await chat(alice)).status_code == 200
    assert (await chat(bob)).status_code == 200
    assert (await chat(alice)).status_code == 429


async def test_it_limits_concurrent_streams(
    async_client: AsyncClient, settings, cache_backend: str
) -> None:
    settings.CHAT_MAX_CONCURRENT_STREAMS = 1
    # Slow enough that the first reply is still streaming when the second comes.
    settings.CHAT_LOCAL_DELAY_MS = 200
    first = await chat(async_client, "first")
    stream = aiter(first.streaming_content)
    conversation_id = parse_sse(await anext(stream))[0]["data"]["conversation_id"]
    second = await chat(async_client, "second")
    assert second.status_code == 429
    assert second["Retry-After"]
    await async_client.post(f"/api/chat/{conversation_id}/stop")
    async for _ in stream:
        pass
    settings.CHAT_LOCAL_DELAY_MS = 1
    third = await chat(async_client, "third")
    assert third.status_code == 200
    assert data_frames(await read_stream(third))[-1]["type"] == "done"
    assert await Message.objects.filter(role="user").acount() == 2


async def test_it_frees_the_stream_slot_when_a_request_is_refused(
    async_client: AsyncClient, settings, cache_backend: str
) -> None:
    settings.CHAT_MAX_CONCURRENT_STREAMS = 1
    missing = await chat(async_client, conversation_id=str(uuid.uuid4()))
    assert missing.status_code == 404
    response = await chat(async_client)
    assert response.status_code == 200
    await read_stream(response)


def test_redis_is_the_shared_store_when_configured(settings) -> None:
    settings.CACHES = REDIS_CACHE
    cache = caches["default"]
    assert type(cache).__name__ == "RedisCache"
    cache.set("probe", 1)
    assert cache.get("probe") == 1
