import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.db import connections
from django.test import AsyncClient

from chat.backends import aclose_all
from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator


@pytest.fixture(autouse=True)
def clear_cache() -> None:
    cache.clear()


@pytest.fixture(autouse=True)
async def close_backends() -> AsyncIterator[None]:
    # Backends hold one upstream client per event loop; each test has its own loop.
    yield
    await aclose_all()
    # Async ORM calls in tests run on asgiref's shared thread; give its
    # connection back so the test database can be dropped.
    await sync_to_async(connections.close_all)()


@pytest.fixture
async def emulator() -> AsyncIterator[AgentsEmulator]:
    emulator = AgentsEmulator()
    await emulator.start(host="127.0.0.1", port=0)
    yield emulator
    await emulator.stop()


@pytest.fixture
def azure(settings, emulator: AgentsEmulator) -> AgentsEmulator:
    """Points the app at the emulator through the azure_agents backend."""
    settings.CHAT_BACKEND = "azure_agents"
    settings.AZURE_AI_PROJECT_ENDPOINT = emulator.endpoint
    settings.AZURE_AI_AGENT_ID = emulator.agent_id
    settings.AZURE_AI_CREDENTIAL = "dev"
    settings.CHAT_UPSTREAM_RETRIES = 0
    return emulator


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Frames as dicts: {"id": int | None, "data": dict} or {"comment": str}."""
    frames: list[dict[str, Any]] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        frame: dict[str, Any] = {"id": None}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame = {"comment": line[1:].strip()}
            elif line.startswith("id: "):
                frame["id"] = int(line[4:])
            elif line.startswith("data: "):
                frame["data"] = orjson.loads(line[6:])
        frames.append(frame)
    return frames


async def read_stream(response: Any) -> list[dict[str, Any]]:
    body = b"".join([part async for part in response.streaming_content])
    return parse_sse(body)


def data_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame["data"] for frame in frames if "data" in frame]


async def chat(client: AsyncClient, message: str = "Say hello", **fields: Any) -> Any:
    return await client.post(
        "/api/chat",
        {"message": message, **fields},
        content_type="application/json",
    )


@pytest.fixture
def foundry(settings, emulator: AgentsEmulator) -> AgentsEmulator:
    """Points the app at the emulator through the foundry backend (Responses)."""
    settings.CHAT_BACKEND = "foundry"
    settings.AZURE_AI_PROJECT_ENDPOINT = emulator.endpoint
    settings.AZURE_AI_AGENT_NAME = FOUNDRY_AGENT_NAME
    settings.AZURE_AI_AGENT_VERSION = ""
    settings.AZURE_AI_CREDENTIAL = "dev"
    settings.CHAT_UPSTREAM_RETRIES = 0
    return emulator


@pytest.fixture
def openai_backend(settings, emulator: AgentsEmulator) -> AgentsEmulator:
    """Points the app at the emulator's chat completions through the openai backend."""
    settings.CHAT_BACKEND = "openai"
    settings.OPENAI_BASE_URL = f"{emulator.base_url}/v1"
    settings.OPENAI_API_KEY = "test-key"
    settings.OPENAI_MODEL = "emulated-model"
    settings.OPENAI_SYSTEM_PROMPT = ""
    settings.OPENAI_HISTORY_CHARS = 32000
    settings.CHAT_UPSTREAM_RETRIES = 0
    return emulator


async def eventually(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    """Waits for `predicate`: the emulator notices a closed stream by polling."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")
