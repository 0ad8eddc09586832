"""`FrameGate`: places granted first come, first served; resizable while held; a cancelled waiter
holds nothing and a waiter cancelled as it was granted gives its place on."""

from __future__ import annotations

import asyncio

import pytest

from service.streams.gate import FrameGate

pytestmark = pytest.mark.unit


async def _holder(gate: FrameGate, name: str, order: list[str]) -> None:
    await gate.acquire()
    order.append(name)


def test_places_go_in_arrival_order_and_never_past_the_capacity() -> None:
    async def scenario() -> list[str]:
        gate, order = FrameGate(2), []
        await gate.acquire()
        await gate.acquire()
        tasks = [asyncio.create_task(_holder(gate, n, order)) for n in "abc"]
        await asyncio.sleep(0)
        assert (gate.held, gate.waiting, order) == (2, 3, [])
        gate.release()
        await asyncio.sleep(0)
        assert order == ["a"] and gate.held == 2
        gate.release()
        gate.release()
        await asyncio.gather(*tasks)
        assert gate.held == 2 and gate.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c"]


def test_growing_the_capacity_lets_waiters_in_and_shrinking_it_waits_for_holders() -> None:
    async def scenario() -> None:
        gate, order = FrameGate(), []
        await gate.acquire()
        tasks = [asyncio.create_task(_holder(gate, n, order)) for n in "ab"]
        await asyncio.sleep(0)
        gate.resize(3)
        await asyncio.gather(*tasks)
        assert order == ["a", "b"] and gate.held == 3
        gate.resize(1)  # all three keep their places; the next waits until two have left
        late = asyncio.create_task(_holder(gate, "c", order))
        gate.release()
        await asyncio.sleep(0)
        assert order == ["a", "b"]
        gate.release()
        gate.release()
        await late
        assert order == ["a", "b", "c"] and gate.held == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("granted_first", [False, True])
def test_a_cancelled_waiter_holds_nothing_and_the_next_one_gets_the_place(granted_first: bool) -> None:
    """Cancelled while waiting, or as the place was granted to it (before it ran again): either
    way the place goes on to the next waiter."""

    async def scenario() -> None:
        gate, order = FrameGate(), []
        await gate.acquire()
        first = asyncio.create_task(_holder(gate, "a", order))
        second = asyncio.create_task(_holder(gate, "b", order))
        await asyncio.sleep(0)
        if granted_first:
            gate.release()  # grants "a" ...
        first.cancel()  # ... cancelled before it runs again; or still waiting
        with pytest.raises(asyncio.CancelledError):
            await first
        if not granted_first:
            gate.release()
        await second
        assert order == ["b"] and gate.held == 1 and gate.waiting == 0

    asyncio.run(scenario())


def test_a_place_freed_while_only_cancelled_waiters_remain_goes_to_the_next_caller_at_once() -> None:
    async def scenario() -> None:
        gate = FrameGate()
        await gate.acquire()
        gone = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gone.cancel()
        gate.release()
        await asyncio.sleep(0)
        await asyncio.wait_for(gate.acquire(), timeout=1.0)
        assert gate.held == 1

    asyncio.run(scenario())


def test_releasing_more_than_was_acquired_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="more often"):
        FrameGate().release()
