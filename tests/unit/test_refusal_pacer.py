"""`RefusalPacer`: refusals beyond a rate wait their turn, boundedly (pure logic, injected clock)."""

from __future__ import annotations

import asyncio

import pytest

from service.api.shed import RefusalPacer

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_seconds_worth_goes_at_once_then_each_waits_its_turn() -> None:
    clock = Clock()
    pacer = RefusalPacer(rate=10.0, burst=10, max_delay_s=1.0, max_waiting=100, clock=clock)
    assert [pacer.delay_s() for _ in range(10)] == [0.0] * 10
    assert [round(pacer.delay_s(), 6) for _ in range(3)] == [0.1, 0.2, 0.3]
    clock.now += 0.3  # the three waited out their turns: the next waits a full period again
    assert round(pacer.delay_s(), 6) == 0.1


def test_a_wait_never_exceeds_the_bound_and_reserves_nothing_past_it() -> None:
    clock = Clock()
    pacer = RefusalPacer(rate=10.0, burst=10, max_delay_s=0.25, max_waiting=100, clock=clock)
    for _ in range(10):
        pacer.delay_s()
    assert [round(pacer.delay_s(), 6) for _ in range(5)] == [0.1, 0.2, 0.25, 0.25, 0.25]
    clock.now += 0.2  # the two reserved turns passed: the bucket is empty, not in debt for the rest
    assert round(pacer.delay_s(), 6) == 0.1


def test_a_burst_goes_at_once_and_the_bucket_refills_to_it_at_most() -> None:
    clock = Clock()
    pacer = RefusalPacer(rate=10.0, burst=800, max_delay_s=1.0, max_waiting=100, clock=clock)
    assert [pacer.delay_s() for _ in range(800)] == [0.0] * 800  # a burst of new clients: none waits
    assert pacer.delay_s() > 0
    clock.now += 3600.0
    assert [pacer.delay_s() for _ in range(800)] == [0.0] * 800
    assert pacer.delay_s() > 0


def test_off_or_too_many_waiting_answers_at_once() -> None:
    clock = Clock()
    assert RefusalPacer(rate=0.0, burst=1, max_delay_s=1.0, max_waiting=100, clock=clock).delay_s() == 0.0
    pacer = RefusalPacer(rate=1.0, burst=1, max_delay_s=1.0, max_waiting=2, clock=clock)
    assert pacer.delay_s() == 0.0
    pacer.waiting = 2
    assert pacer.delay_s() == 0.0  # no more held: the next goes at once
    pacer.waiting = 1
    assert pacer.delay_s() > 0


def test_pace_counts_the_refusals_it_holds() -> None:
    pacer = RefusalPacer(rate=100.0, burst=100, max_delay_s=0.05, max_waiting=10)

    async def scenario() -> list[int]:
        for _ in range(100):
            pacer.delay_s()  # the second's worth spent
        seen = []
        held = [asyncio.create_task(pacer.pace()) for _ in range(3)]
        await asyncio.sleep(0)
        seen.append(pacer.waiting)
        await asyncio.gather(*held)
        seen.append(pacer.waiting)
        return seen

    assert asyncio.run(scenario()) == [3, 0]
