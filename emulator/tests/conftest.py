from collections.abc import AsyncIterator

import pytest

from emulator import AgentsEmulator, EmulatorConfig


@pytest.fixture
async def emulator() -> AsyncIterator[AgentsEmulator]:
    emulator = AgentsEmulator(EmulatorConfig())
    await emulator.start()
    yield emulator
    await emulator.stop()
