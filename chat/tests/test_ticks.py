"""One timer for many deadlines (chat.ticks)."""

import asyncio

import pytest

from chat import ticks

pytestmark = pytest.mark.no_database


class Member:
    def __init__(self, ticked: asyncio.Event | None = None) -> None:
        self.ticks: list[float] = []
        self.ticked = ticked or asyncio.Event()

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        self.ticked.set()


class Failing:
    def tick(self, now: float) -> None:
        raise RuntimeError("a check that fails")


async def test_every_member_is_ticked_from_one_timer_while_it_has_members() -> None:
    ticker = ticks.ticker(0.01)
    assert ticks.ticker(0.01) is ticker
    assert not ticker.running
    first, second = Member(), Member()
    ticker.add(first)
    ticker.add(Failing())  # does not keep the others from their ticks
    ticker.add(second)
    ticker.add(second)  # once is once
    assert ticker.running and len(ticker) == 3
    await first.ticked.wait()
    await second.ticked.wait()
    assert first.ticks == second.ticks
    ticker.discard(first)
    ticker.discard(second)
    ticker.discard(second)  # gone is gone
    ticker.discard(next(iter(ticker._members)))
    assert len(ticker) == 0 and ticker.running
    ticker._tick()  # the next tick finds no member: no timer after it
    assert not ticker.running
    ticker.add(first)
    assert ticker.running  # and the next member starts one
    ticker.discard(first)


async def test_a_tick_comes_at_most_a_period_late() -> None:
    loop = asyncio.get_running_loop()
    period = 0.05
    ticker = ticks.ticker(period)
    member = Member()
    added = loop.time()
    ticker.add(member)
    await member.ticked.wait()
    assert member.ticks[0] >= added + period
    ticker.discard(member)


def test_the_period_is_a_quarter_of_the_shortest_limit_and_at_most_a_second() -> None:
    assert ticks.period_for(0.2, 900) == 0.05
    assert ticks.period_for(120, 900) == ticks.MAX_PERIOD == 1.0
