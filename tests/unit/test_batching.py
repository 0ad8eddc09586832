"""DynamicBatcher driven by a fake clock: no threads, no model."""

from __future__ import annotations

import pytest

from service.batching import DynamicBatcher
from service.errors import QueueFullError
from tests.support import FakeClock

pytestmark = pytest.mark.unit


def make(max_batch: int = 4, max_wait_ms: float = 10.0, max_queue: int = 16) -> tuple[DynamicBatcher[int], FakeClock]:
    clock = FakeClock()
    return DynamicBatcher(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, clock=clock), clock


def test_releases_full_batch_immediately() -> None:
    b, clock = make(max_batch=4)
    for i in range(3):
        b.submit(i, deadline=clock.now + 1)
    assert b.pop_batch() == []
    b.submit(3, deadline=clock.now + 1)
    batch = b.pop_batch()
    assert [p.item for p in batch] == [0, 1, 2, 3]
    assert len(b) == 0


def test_fills_to_max_batch_and_keeps_the_rest() -> None:
    b, clock = make(max_batch=4)
    for i in range(6):
        b.submit(i, deadline=clock.now + 1)
    assert [p.item for p in b.pop_batch()] == [0, 1, 2, 3]
    assert len(b) == 2
    assert b.pop_batch() == []  # the remaining two have not waited long enough
    clock.advance_ms(10)
    assert [p.item for p in b.pop_batch()] == [4, 5]


def test_flushes_partial_batch_at_max_wait() -> None:
    b, clock = make(max_batch=8, max_wait_ms=10)
    b.submit("a", deadline=clock.now + 1)
    clock.advance_ms(4)
    b.submit("b", deadline=clock.now + 1)
    assert b.next_event_at() == pytest.approx(100.010)
    clock.advance_ms(5.9)
    assert b.pop_batch() == []
    clock.advance_ms(0.1)
    assert [p.item for p in b.pop_batch()] == ["a", "b"]


def test_zero_wait_releases_at_once() -> None:
    b, clock = make(max_batch=8, max_wait_ms=0)
    b.submit(1, deadline=clock.now + 1)
    assert [p.item for p in b.pop_batch()] == [1]


def test_expired_items_are_dropped_before_batching() -> None:
    b, clock = make(max_batch=4, max_wait_ms=50)
    b.submit("late", deadline=clock.now + 0.005)
    b.submit("ok", deadline=clock.now + 1.0)
    # the earliest deadline is an event: the engine wakes up to expire it
    assert b.next_event_at() == pytest.approx(100.005)
    clock.advance_ms(6)
    expired = b.expire()
    assert [p.item for p in expired] == ["late"]
    assert len(b) == 1
    clock.advance_ms(50)
    assert [p.item for p in b.pop_batch()] == ["ok"]


def test_queue_is_bounded() -> None:
    b, clock = make(max_batch=2, max_queue=3)
    for i in range(3):
        b.submit(i, deadline=clock.now + 1)
    with pytest.raises(QueueFullError):
        b.submit(3, deadline=clock.now + 1)
    assert len(b) == 3
    b.pop_batch()
    b.submit(4, deadline=clock.now + 1)  # room again after a batch left
    assert len(b) == 2


def test_fair_across_keys() -> None:
    b, clock = make(max_batch=4, max_queue=32)
    for i in range(10):
        b.submit(("busy", i), deadline=clock.now + 1, key="busy-camera")
    clock.advance_ms(1)
    b.submit(("quiet", 0), deadline=clock.now + 1, key="quiet-camera")
    b.submit(("other", 0), deadline=clock.now + 1, key="other-camera")
    batch = [p.item for p in b.pop_batch()]
    assert ("quiet", 0) in batch and ("other", 0) in batch
    assert batch.count(("busy", 0)) == 1 and len(batch) == 4


def test_remove_cancelled_item() -> None:
    b, clock = make()
    p = b.submit("x", deadline=clock.now + 1)
    assert b.remove(p) is True
    assert b.remove(p) is False
    assert len(b) == 0 and b.next_event_at() is None


def test_rejects_bad_configuration() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError):
        DynamicBatcher(max_batch=0, max_wait_ms=1, max_queue=4, clock=clock)
    with pytest.raises(ValueError):
        DynamicBatcher(max_batch=8, max_wait_ms=1, max_queue=4, clock=clock)


def test_drain_empties_every_key() -> None:
    b, clock = make()
    for i in range(5):
        b.submit(i, deadline=clock.now + 1, key=i % 2)
    assert sorted(p.item for p in b.drain()) == [0, 1, 2, 3, 4]
    assert len(b) == 0 and b.next_event_at() is None
