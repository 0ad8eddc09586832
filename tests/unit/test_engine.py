"""StageRunner (batcher + worker threads) with a fake clock and fake sessions: no model.

The clock only moves when a test advances it, so a partial batch is released only by the test;
a full batch is released at once. Every wait on a future or an event has a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future

import pytest

from service.config import BackendSettings
from service.engine import ItemResult, StageRunner
from service.errors import DeadlineExceededError, QueueFullError
from service.metrics import Metrics
from tests.support import FakeClock

pytestmark = pytest.mark.unit

BACKEND, STAGE = "fake-backend", "pose"
LABELS = {"backend": BACKEND, "stage": STAGE}
WAIT_S = 5.0  # the longest any test waits for a worker thread


class FakeSession:
    """Upper-cases its payloads and records every batch it ran.

    A payload "boom" makes the whole batch raise. With ``gate`` set, each batch waits for the gate
    (after setting ``entered``), so a test can hold the worker busy.
    """

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate
        self.entered = threading.Event()

    def run(self, payloads: list[str]) -> tuple[list[str], float]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        self.batches.append(list(payloads))
        if "boom" in payloads:
            raise RuntimeError("the session failed this batch")
        return [p.upper() for p in payloads], 0.004


def run_batch(session: FakeSession, payloads: list[str]) -> tuple[list[str], float]:
    return session.run(payloads)


RunnerFactory = Callable[..., tuple[StageRunner[str, str, FakeSession], Metrics]]


@pytest.fixture
def make_runner(clock: FakeClock) -> Iterator[RunnerFactory]:
    """Builds runners on the test's fake clock; every runner is stopped at teardown."""
    runners: list[StageRunner[str, str, FakeSession]] = []

    def make(
        sessions: Sequence[FakeSession], *, max_batch: int = 4, max_wait_ms: float = 10.0, max_queue: int = 16
    ) -> tuple[StageRunner[str, str, FakeSession], Metrics]:
        metrics = Metrics()
        runner: StageRunner[str, str, FakeSession] = StageRunner(
            backend=BACKEND,
            stage=STAGE,
            settings=BackendSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue),
            sessions=sessions,
            run_batch=run_batch,
            metrics=metrics,
            clock=clock,
        )
        runners.append(runner)
        return runner, metrics

    yield make
    for runner in runners:
        runner.stop(timeout_s=WAIT_S)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value from the runner's own registry (0 when the series does not exist yet)."""
    value = metrics.registry.get_sample_value(name, {**LABELS, **labels})
    return 0.0 if value is None else value


def results(futures: list[Future[ItemResult[str]]]) -> list[ItemResult[str]]:
    return [f.result(timeout=WAIT_S) for f in futures]


def test_a_full_batch_runs_together(make_runner: RunnerFactory, clock: FakeClock) -> None:
    session = FakeSession()
    runner, metrics = make_runner([session], max_batch=4, max_wait_ms=10)
    runner.start()
    futures = [runner.submit(p, deadline=clock.now + 1) for p in ("a", "b", "c", "d")]

    done = results(futures)  # the clock never moved: only a full batch can have been released

    assert session.batches == [["a", "b", "c", "d"]]
    assert [r.value for r in done] == ["A", "B", "C", "D"]
    assert all(r.batch_size == 4 and r.inference_s == pytest.approx(0.004) for r in done)
    assert sample(metrics, "poseserve_batch_size_count") == 1
    assert sample(metrics, "poseserve_batch_size_sum") == 4
    assert sample(metrics, "poseserve_queue_wait_seconds_count") == 4
    assert sample(metrics, "poseserve_queue_depth") == 0


def test_a_partial_batch_waits_for_max_wait_on_the_clock(make_runner: RunnerFactory, clock: FakeClock) -> None:
    session = FakeSession()
    runner, _ = make_runner([session], max_batch=4, max_wait_ms=10)
    runner.start()
    futures = [runner.submit(p, deadline=clock.now + 1) for p in ("a", "b")]
    clock.advance_ms(9)
    with pytest.raises(TimeoutError):
        futures[0].result(timeout=0.2)  # 1 ms of clock time short of max_wait
    assert session.batches == []

    clock.advance_ms(1)
    done = results(futures)

    assert session.batches == [["a", "b"]]
    assert [r.batch_size for r in done] == [2, 2]
    assert [r.queue_s for r in done] == [pytest.approx(0.010), pytest.approx(0.010)]


def test_expired_items_fail_before_the_session_and_are_counted(make_runner: RunnerFactory, clock: FakeClock) -> None:
    session = FakeSession()
    runner, metrics = make_runner([session], max_batch=4, max_wait_ms=10)
    runner.start()
    late = [runner.submit(p, deadline=clock.now + 0.005) for p in ("late-1", "late-2")]
    on_time = runner.submit("ok", deadline=clock.now + 1)

    clock.advance_ms(6)  # past the late items' deadline, not yet max_wait
    for future in late:
        with pytest.raises(DeadlineExceededError, match="deadline passed"):
            future.result(timeout=WAIT_S)
    assert sample(metrics, "poseserve_items_dropped_total", reason="expired") == 2
    assert not on_time.done()

    clock.advance_ms(10)
    assert on_time.result(timeout=WAIT_S).value == "OK"
    assert session.batches == [["ok"]]  # the expired items never reached the session
    assert sample(metrics, "poseserve_items_dropped_total", reason="expired") == 2
    assert sample(metrics, "poseserve_batch_size_sum") == 1


def test_cancelling_a_future_frees_its_queue_slot(make_runner: RunnerFactory, clock: FakeClock) -> None:
    gate = threading.Event()
    session = FakeSession(gate)
    runner, metrics = make_runner([session], max_batch=1, max_wait_ms=0, max_queue=2)
    runner.start()
    try:
        running = runner.submit("running", deadline=clock.now + 1)
        assert session.entered.wait(WAIT_S), "the worker never took the first item"
        queued = runner.submit("queued", deadline=clock.now + 1)
        given_up = runner.submit("given-up", deadline=clock.now + 1)
        with pytest.raises(QueueFullError):
            runner.submit("refused", deadline=clock.now + 1)
        assert sample(metrics, "poseserve_items_dropped_total", reason="overloaded") == 1
        assert sample(metrics, "poseserve_queue_depth") == 2

        assert given_up.cancel()
        assert sample(metrics, "poseserve_items_dropped_total", reason="cancelled") == 1
        assert sample(metrics, "poseserve_queue_depth") == 1
        accepted = runner.submit("accepted", deadline=clock.now + 1)
    finally:
        gate.set()

    assert [r.value for r in results([running, queued, accepted])] == ["RUNNING", "QUEUED", "ACCEPTED"]
    assert session.batches == [["running"], ["queued"], ["accepted"]]
    with pytest.raises(CancelledError):
        given_up.result(timeout=WAIT_S)


def test_a_failing_batch_fails_only_its_items_and_the_worker_goes_on(
    make_runner: RunnerFactory, clock: FakeClock
) -> None:
    session = FakeSession()
    runner, metrics = make_runner([session], max_batch=2, max_wait_ms=10)
    # queued before the worker starts: two full batches, the first of which raises
    bad = [runner.submit(p, deadline=clock.now + 1) for p in ("boom", "x")]
    good = [runner.submit(p, deadline=clock.now + 1) for p in ("a", "b")]
    runner.start()

    for future in bad:
        with pytest.raises(RuntimeError, match="failed this batch"):
            future.result(timeout=WAIT_S)
    assert [r.value for r in results(good)] == ["A", "B"]
    later = [runner.submit(p, deadline=clock.now + 1) for p in ("c", "d")]
    assert [r.value for r in results(later)] == ["C", "D"]

    assert session.batches == [["boom", "x"], ["a", "b"], ["c", "d"]]
    assert runner.alive_workers == runner.worker_count == 1
    assert sample(metrics, "poseserve_batch_size_count") == 2  # only batches that produced outputs


def test_an_item_wakes_the_worker_that_went_idle_last(make_runner: RunnerFactory, clock: FakeClock) -> None:
    """One item at a time, each submitted once both workers wait: the same worker takes them all
    (its runtime stays warm), where waking the longest waiter would alternate the two."""
    sessions = [FakeSession(), FakeSession()]
    runner, _ = make_runner(sessions, max_batch=1)
    runner.start()
    for payload in "abcdef":
        deadline = time.monotonic() + WAIT_S
        while len(runner._idle) < 2:  # both wait: the last to finish is on top
            assert time.monotonic() < deadline, "the workers never went idle"
            time.sleep(0.001)
        assert runner.submit(payload, deadline=clock.now + 1).result(WAIT_S).value == payload.upper()
    ran = sorted(len(s.batches) for s in sessions)
    assert ran[-1] >= 5, [s.batches for s in sessions]  # the first item may go to either


def test_stop_cancels_queued_items_and_joins_the_workers(make_runner: RunnerFactory, clock: FakeClock) -> None:
    sessions = [FakeSession(), FakeSession()]
    runner, metrics = make_runner(sessions, max_batch=4, max_wait_ms=10)
    runner.start()
    assert runner.alive_workers == 2
    queued = [runner.submit(p, deadline=clock.now + 1) for p in ("a", "b", "c")]  # never a full batch
    assert sample(metrics, "poseserve_queue_depth") == 3

    runner.stop(timeout_s=WAIT_S)

    assert runner.alive_workers == 0
    assert all(f.cancelled() for f in queued)
    assert all(s.batches == [] for s in sessions)
    assert sample(metrics, "poseserve_queue_depth") == 0
    late = runner.submit("after-stop", deadline=clock.now + 1)
    assert late.cancelled()


def test_a_runner_needs_a_session() -> None:
    with pytest.raises(ValueError, match="at least one session"):
        StageRunner(
            backend=BACKEND,
            stage=STAGE,
            settings=BackendSettings(),
            sessions=[],
            run_batch=run_batch,
            metrics=Metrics(),
            clock=FakeClock(),
        )
