"""Worker threads that die are restarted by their stage's supervisor (fault injection, no model)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from service.config import BackendSettings
from service.engine import StageRunner
from service.errors import BackendUnavailableError, WorkerLostError
from service.metrics import Metrics
from service.supervision import RestartBudget
from tests.support import metric_samples

pytestmark = pytest.mark.unit


class Boom(BaseException):
    """Not an `Exception`: `run_batch` failures are caught per batch, this one escapes the loop."""


class FaultySession:
    """Doubles its items; raises `Boom` on the next `faults` batches."""

    def __init__(self, faults: int = 0) -> None:
        self.faults = faults
        self.batches: list[list[int]] = []

    def run_batch(self, _: object, items: list[int]) -> tuple[list[int], float]:
        if self.faults:
            self.faults -= 1
            raise Boom("injected")
        self.batches.append(items)
        return [2 * i for i in items], 0.0


def make(session: FaultySession, budget: RestartBudget) -> tuple[StageRunner[int, int, FaultySession], Metrics]:
    metrics = Metrics()
    runner: StageRunner[int, int, FaultySession] = StageRunner(
        backend="fake",
        stage="pose",
        settings=BackendSettings(max_batch=4, max_wait_ms=1, max_queue=16, max_queue_delay_ms=5000),
        sessions=[session],
        run_batch=session.run_batch,
        metrics=metrics,
        restarts=budget,
    )
    runner.start()
    return runner, metrics


def restarts(metrics: Metrics) -> float:
    text = generate_latest(metrics.registry).decode()
    return sum(v for _, v in metric_samples(text, "poseserve_worker_restarts_total"))


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.005)


# -- the budget (pure) ----------------------------------------------------------------------------
def test_backoff_doubles_up_to_its_cap_then_gives_up() -> None:
    budget = RestartBudget(max_restarts=4, window_s=60, backoff_initial_s=0.1, backoff_max_s=0.3)
    assert [budget.on_death(t) for t in (0.0, 1.0, 2.0, 3.0)] == [0.1, 0.2, 0.3, 0.3]
    assert budget.on_death(4.0) is None  # a 5th death within 60 s: stay down


def test_old_deaths_leave_the_window() -> None:
    budget = RestartBudget(max_restarts=2, window_s=10, backoff_initial_s=0.1)
    assert budget.on_death(0.0) == 0.1
    assert budget.on_death(5.0) == 0.2
    assert budget.on_death(9.0) is None
    assert budget.on_death(15.5) == 0.1  # the deaths at 0 and 5 are older than 10 s


# -- a StageRunner ---------------------------------------------------------------------------------
def test_a_dead_worker_fails_its_batch_retryably_and_is_restarted() -> None:
    session = FaultySession(faults=1)
    runner, metrics = make(session, RestartBudget(backoff_initial_s=0.01))
    try:
        lost = runner.submit(1, deadline=time.monotonic() + 10)
        with pytest.raises(WorkerLostError) as error:
            lost.result(timeout=10)
        assert error.value.code == "backend_unavailable" and error.value.retry_after_s
        wait_until(lambda: restarts(metrics) == 1 and runner.alive_workers == 1)
        assert runner.problem() is None
        assert runner.submit(2, deadline=time.monotonic() + 10).result(timeout=10).value == 4
    finally:
        runner.stop()
    assert session.batches == [[2]]


def test_a_death_outside_the_model_call_is_survived_too() -> None:
    """A bug in the loop's own bookkeeping (here: metrics code after the run) kills the thread."""
    session = FaultySession()
    runner, metrics = make(session, RestartBudget(backoff_initial_s=0.01))
    real_labels = metrics.batch_size.labels
    calls = {"n": 0}

    def flaky_labels(**labels: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("metrics bug")
        return real_labels(**labels)

    metrics.batch_size.labels = flaky_labels  # type: ignore[method-assign]
    try:
        with pytest.raises(WorkerLostError):
            runner.submit(1, deadline=time.monotonic() + 10).result(timeout=10)
        wait_until(lambda: restarts(metrics) == 1)
        assert runner.submit(3, deadline=time.monotonic() + 10).result(timeout=10).value == 6
    finally:
        runner.stop()


def test_queued_items_survive_a_death_before_their_batch() -> None:
    """A death while taking a batch (a scheduling bug) loses nothing that was only queued."""
    session = FaultySession()
    runner, metrics = make(session, RestartBudget(backoff_initial_s=0.01))
    batcher = runner._batcher
    real_pop = batcher.pop_batch
    calls = {"n": 0}

    def flaky_pop(*, force: bool = False) -> Any:
        if len(batcher):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("scheduling bug")
        return real_pop(force=force)

    batcher.pop_batch = flaky_pop  # type: ignore[method-assign]
    try:
        future = runner.submit(5, deadline=time.monotonic() + 10)
        assert future.result(timeout=10).value == 10  # taken by the restarted worker
        assert restarts(metrics) == 1
    finally:
        runner.stop()


def test_a_dead_stage_refuses_and_says_so_while_restarting() -> None:
    session = FaultySession(faults=1)
    runner, _ = make(session, RestartBudget(backoff_initial_s=30))  # the restart is far away
    try:
        with pytest.raises(WorkerLostError):
            runner.submit(1, deadline=time.monotonic() + 10).result(timeout=10)
        wait_until(lambda: runner.alive_workers == 0)
        problem = runner.problem()
        assert problem is not None and "fake" in problem and "pose" in problem and "restarting" in problem
        with pytest.raises(BackendUnavailableError) as refused:
            runner.admit()
        assert refused.value.retry_after_s
    finally:
        runner.stop()
    assert not runner._supervisor.is_alive()  # stop woke it from its 30 s backoff


def test_a_crash_looping_worker_is_given_up_and_the_queue_failed() -> None:
    session = FaultySession(faults=1_000)
    runner, metrics = make(session, RestartBudget(max_restarts=2, backoff_initial_s=0.01))
    try:
        for i in range(3):
            wait_until(lambda: runner.alive_workers == 1 or runner._given_up)
            with pytest.raises(BackendUnavailableError):
                runner.submit(i, deadline=time.monotonic() + 10).result(timeout=10)
        wait_until(lambda: runner._given_up == 1)
        assert restarts(metrics) == 2 and runner.alive_workers == 0
        problem = runner.problem()
        assert problem is not None and "not restarted" in problem
        with pytest.raises(BackendUnavailableError) as refused:
            runner.admit()
        assert refused.value.retry_after_s is None
    finally:
        runner.stop()
    assert session.batches == []
