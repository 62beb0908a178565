from collections.abc import AsyncIterator

import pytest
from django.core.cache import cache

from chat.backends import aclose_all
from emulator import AgentsEmulator
from testing.browser import (  # noqa: F401  (the browser tests')
    chat,
    chromium,
)
from testing.upstream import answer_through


@pytest.fixture(autouse=True)
def clear_cache() -> None:
    cache.clear()


@pytest.fixture(autouse=True)
async def close_backends() -> AsyncIterator[None]:
    # Backends hold one upstream client per event loop; each test has its own loop.
    yield
    await aclose_all()


@pytest.fixture
async def emulator() -> AsyncIterator[AgentsEmulator]:
    emulator = AgentsEmulator()
    await emulator.start(host="127.0.0.1", port=0)
    yield emulator
    await emulator.stop()


@pytest.fixture
def azure(settings, emulator: AgentsEmulator) -> AgentsEmulator:
    """Points the app at the emulator through the azure_agents backend."""
    answer_through(settings, "azure_agents", emulator)
    return emulator


@pytest.fixture
def foundry(settings, emulator: AgentsEmulator) -> AgentsEmulator:
    """Points the app at the emulator through the foundry backend (Responses)."""
    answer_through(settings, "foundry", emulator)
    return emulator


@pytest.fixture
def openai_backend(settings, emulator: AgentsEmulator) -> AgentsEmulator:
    """Points the app at the emulator's chat completions through the openai backend."""
    answer_through(settings, "openai", emulator)
    return emulator
