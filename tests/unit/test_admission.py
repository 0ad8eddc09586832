"""Admission control: the pure decision and EWMA with a fake clock, queue-delay expiry in the
batcher, and a StageRunner's tickets and drops (fake sessions, a fake clock, no model)."""

from __future__ import annotations

import math
import threading

import pytest
from prometheus_client import generate_latest

from service.admission import AdmissionControl, BatchTimes
from service.batching import DynamicBatcher
from service.config import BackendSettings
from service.engine import StageRunner
from service.errors import BackendUnavailableError, OverloadedError, QueueDelayError, QueueFullError
from service.metrics import Metrics
from tests.support import FakeClock, metric_samples

pytestmark = pytest.mark.unit


def control(
    *, max_batch: int = 4, max_queue: int = 64, delay_ms: float | None = 250, batch_s: float | None = 0.1
) -> tuple[AdmissionControl, FakeClock]:
    clock = FakeClock()
    ac = AdmissionControl(max_batch=max_batch, max_queue=max_queue, max_queue_delay_ms=delay_ms, clock=clock)
    if batch_s is not None:
        ac.times.observe(max_batch, batch_s)
    return ac, clock


# -- the batch-time estimate ----------------------------------------------------------------------
def test_ewma_per_batch_size() -> None:
    times = BatchTimes(alpha=0.5)
    assert times.seconds(4) is None
    times.observe(4, 0.2)
    assert times.seconds(4) == pytest.approx(0.2)
    times.observe(4, 0.4)
    assert times.seconds(4) == pytest.approx(0.3)
    times.observe(1, 0.05)
    assert times.seconds(1) == pytest.approx(0.05)  # sizes are tracked apart
    assert times.seconds(4) == pytest.approx(0.3)


def test_unmeasured_size_scales_from_the_nearest_measured_one() -> None:
    times = BatchTimes()
    times.observe(8, 0.24)
    assert times.seconds(4) == pytest.approx(0.12)
    assert times.seconds(16) == pytest.approx(0.48)
    times.observe(2, 0.1)
    assert times.seconds(3) == pytest.approx(0.15)  # from 2, the nearest
    assert times.seconds(6) == pytest.approx(0.18)  # from 8
    assert times.seconds(5) == pytest.approx(0.15)  # a tie: from the larger size, 8


# -- the decision ---------------------------------------------------------------------------------
def test_idle_stage_admits_at_once() -> None:
    ac, _ = control()
    d = ac.decide(queued=0, workers=1)
    assert d.admitted and d.wait_s == 0 and d.drain_s == 0


def test_wait_grows_one_batch_time_per_full_batch_ahead() -> None:
    ac, _ = control(max_batch=4, delay_ms=250, batch_s=0.1)
    waits = {q: ac.decide(queued=q, workers=1) for q in (3, 4, 8, 11, 12)}
    assert waits[3].wait_s == 0 and waits[3].admitted  # joins the first, partial batch
    assert waits[4].wait_s == pytest.approx(0.1) and waits[4].admitted
    assert waits[8].wait_s == pytest.approx(0.2) and waits[8].admitted
    assert waits[11].wait_s == pytest.approx(0.2) and waits[11].admitted
    refused = waits[12]
    assert not refused.admitted and refused.reason == "delay"
    assert refused.wait_s == pytest.approx(0.3) and refused.drain_s == pytest.approx(0.3)


def test_running_batches_count_by_their_remaining_time() -> None:
    ac, clock = control(max_batch=4, delay_ms=250, batch_s=0.1)
    ac.started("w0", 4)
    clock.advance_ms(60)
    assert ac.decide(queued=0, workers=1).wait_s == pytest.approx(0.04)
    assert ac.decide(queued=8, workers=1).wait_s == pytest.approx(0.24)
    assert not ac.decide(queued=12, workers=1).admitted
    clock.advance_ms(500)  # the batch overran its estimate: it counts as finishing now
    assert ac.decide(queued=0, workers=1).wait_s == 0


def test_more_workers_drain_faster() -> None:
    ac, _ = control(max_batch=4, delay_ms=250, batch_s=0.1)
    one, two = ac.decide(queued=16, workers=1), ac.decide(queued=16, workers=2)
    assert one.wait_s == pytest.approx(0.4) and not one.admitted
    assert two.wait_s == pytest.approx(0.2) and two.admitted
    assert two.drain_s == pytest.approx(0.2)


def test_reservations_count_until_released() -> None:
    ac, _ = control(max_batch=4, delay_ms=250, batch_s=0.1)
    admitted = 0
    while ac.reserve(queued=0, workers=1).admitted:
        admitted += 1
    assert admitted == 12  # 3 batches of 4 start within 250 ms (at 0, 100, 200 ms)
    assert ac.reserved == 12
    ac.release()
    assert ac.reserve(queued=0, workers=1).admitted
    with pytest.raises(RuntimeError):
        AdmissionControl(max_batch=1, max_queue=1, max_queue_delay_ms=None, clock=FakeClock()).release()


def test_item_bound_refuses_even_when_time_allows() -> None:
    ac, _ = control(max_batch=4, max_queue=6, delay_ms=60_000, batch_s=0.001)
    ac.reserve(queued=4, workers=1)
    d = ac.decide(queued=5, workers=1)
    assert not d.admitted and d.reason == "items"


def test_no_time_bound_admits_by_items_only() -> None:
    ac, _ = control(max_batch=4, max_queue=64, delay_ms=None, batch_s=10.0)
    assert ac.decide(queued=63, workers=1).admitted
    assert ac.decide(queued=64, workers=1).reason == "items"


def test_before_any_measurement_only_items_count() -> None:
    ac, _ = control(max_batch=4, max_queue=64, delay_ms=1, batch_s=None)
    assert ac.decide(queued=60, workers=1).admitted


def test_without_workers_nothing_is_admitted() -> None:
    ac, _ = control()
    d = ac.decide(queued=0, workers=0)
    assert not d.admitted and d.reason == "no_workers" and math.isinf(d.drain_s)


def test_finished_batches_are_measured_on_the_clock() -> None:
    ac, clock = control(max_batch=4, batch_s=None)
    ac.started("w0", 4)
    clock.advance_ms(120)
    assert ac.finished("w0") == pytest.approx(0.12)
    assert ac.times.seconds(4) == pytest.approx(0.12)
    ac.started("w0", 4)
    ac.abandoned("w0")  # a worker that died measures nothing
    assert ac.running_items == 0 and ac.times.seconds(4) == pytest.approx(0.12)


# -- the batcher's time bound ---------------------------------------------------------------------
def test_batcher_drops_items_that_waited_the_queue_delay() -> None:
    clock = FakeClock()
    b: DynamicBatcher[str] = DynamicBatcher(
        max_batch=4, max_wait_ms=10, max_queue=16, max_queue_delay_ms=50, clock=clock
    )
    b.submit("a", deadline=clock.now + 10)
    clock.advance_ms(30)
    b.submit("b", deadline=clock.now + 10)
    assert b.next_event_at() == pytest.approx(100.010)  # a's batching wait comes first
    clock.advance_ms(19.9)
    assert b.expire_delayed() == []
    clock.advance_ms(0.1)  # a has waited exactly 50 ms: it may not start any more
    assert [p.item for p in b.expire_delayed()] == ["a"]
    assert b.expire() == [] and len(b) == 1
    assert [p.item for p in b.pop_batch()] == ["b"]  # b has waited 20 ms


def test_the_queue_delay_counts_from_admission_when_given() -> None:
    clock = FakeClock()
    b: DynamicBatcher[str] = DynamicBatcher(
        max_batch=4, max_wait_ms=10, max_queue=16, max_queue_delay_ms=50, clock=clock
    )
    admitted_at = clock.now
    clock.advance_ms(45)  # reading and decoding the input
    b.submit("slow-input", deadline=clock.now + 10, since=admitted_at)
    assert b.next_event_at() == pytest.approx(admitted_at + 0.050)  # before its batching wait ends
    clock.advance_ms(5)
    assert [p.item for p in b.expire_delayed()] == ["slow-input"]
    b.submit("late", deadline=clock.now + 10, since=clock.now - 0.060)  # over the bound on arrival
    assert [p.item for p in b.expire_delayed()] == ["late"]
    b.submit("future", deadline=clock.now + 10, since=clock.now + 1)  # never later than now
    clock.advance_ms(50)
    assert [p.item for p in b.expire_delayed()] == ["future"]


def test_queue_delay_must_exceed_the_batching_wait() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(max_batch=4, max_wait_ms=10, max_queue=16, max_queue_delay_ms=10, clock=FakeClock())
    with pytest.raises(ValueError):
        BackendSettings(max_wait_ms=20, max_queue_delay_ms=5)
    assert BackendSettings(max_queue_delay_ms=None).max_queue_delay_ms is None


# -- a StageRunner ---------------------------------------------------------------------------------
class GatedSession:
    """Runs a batch only when the test opens the gate; records batch sizes."""

    providers = ("CPUExecutionProvider",)
    output_names = ("rows",)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.batches: list[list[int]] = []

    def run_batch(self, _: object, items: list[int]) -> tuple[list[int], float]:
        self.entered.release()
        assert self.gate.wait(10), "the test never opened the gate"
        self.batches.append(items)
        return [i * 10 for i in items], 0.0


def runner(
    session: GatedSession, clock: FakeClock | None = None, **settings: float
) -> tuple[StageRunner[int, int, GatedSession], Metrics]:
    metrics = Metrics()
    kwargs = {"clock": clock} if clock is not None else {}
    r: StageRunner[int, int, GatedSession] = StageRunner(
        backend="fake",
        stage="pose",
        settings=BackendSettings(**{"max_batch": 1, "max_wait_ms": 0, "max_queue": 8, **settings}),
        sessions=[session],
        run_batch=session.run_batch,
        metrics=metrics,
        **kwargs,
    )
    r.start()
    return r, metrics


def dropped(metrics: Metrics, reason: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return sum(v for lb, v in metric_samples(text, "poseserve_items_dropped_total") if lb["reason"] == reason)


def test_tickets_hold_their_slot_until_queued_or_released() -> None:
    session = GatedSession()
    r, metrics = runner(session, max_queue_delay_ms=500)
    r.seed_batch_time(1, 10.0)  # one item takes 10 s: only an item with nothing ahead starts in time
    try:
        first = r.admit()
        with pytest.raises(QueueDelayError) as refused:
            r.admit()  # counts the first one, still decoding
        assert isinstance(refused.value, QueueFullError | OverloadedError)
        assert refused.value.retry_after_s == pytest.approx(10.0)
        first.release()
        first.release()  # idempotent
        second = r.admit()
        future = r.submit(1, deadline=1e12, ticket=second)  # queued in its slot, not admitted again
        assert session.entered.acquire(timeout=10)
        with pytest.raises(QueueDelayError):  # without a ticket (streams): admitted now, or not
            r.submit(2, deadline=1e12)
        session.gate.set()
        assert future.result(timeout=10).value == 10
        assert dropped(metrics, "overloaded") == 2
    finally:
        session.gate.set()
        r.stop()


def test_items_that_waited_too_long_never_reach_the_model() -> None:
    clock = FakeClock()
    session = GatedSession()
    r, metrics = runner(session, clock, max_queue_delay_ms=100)
    try:
        running = r.submit(1, deadline=1e12)
        assert session.entered.acquire(timeout=10)  # 1 is in the model, the worker is busy
        late = r.submit(2, deadline=1e12)  # nothing measured yet: admitted
        clock.advance_ms(150)
        session.gate.set()
        assert running.result(timeout=10).value == 10
        with pytest.raises(QueueDelayError) as error:
            late.result(timeout=10)
        assert error.value.retry_after_s is not None and error.value.retry_after_s >= 0
        on_time = r.submit(3, deadline=1e12)
        result = on_time.result(timeout=10)
        assert result.value == 30 and result.queue_s < 0.1
    finally:
        session.gate.set()
        r.stop()
    assert session.batches == [[1], [3]]
    assert dropped(metrics, "queue_delay") == 1


def test_a_ticket_whose_input_took_too_long_is_dropped_before_the_model() -> None:
    clock = FakeClock()
    session = GatedSession()
    r, metrics = runner(session, clock, max_queue_delay_ms=100)
    try:
        ticket = r.admit()
        clock.advance_ms(150)  # the body and its decoding took longer than the whole bound
        late = r.submit(1, deadline=1e12, ticket=ticket)
        with pytest.raises(QueueDelayError, match="since admission"):
            late.result(timeout=10)
        on_time = r.submit(2, deadline=1e12, ticket=r.admit())
        session.gate.set()
        assert on_time.result(timeout=10).value == 20
    finally:
        session.gate.set()
        r.stop()
    assert session.batches == [[2]]
    assert dropped(metrics, "queue_delay") == 1


def test_stopping_stage_refuses_admission() -> None:
    r, _ = runner(GatedSession())
    r.stop()
    with pytest.raises(BackendUnavailableError):
        r.admit()
    assert r.submit(1, deadline=1e12).cancelled()
