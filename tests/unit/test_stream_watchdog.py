"""Each camera heals alone: a reader that failed is restarted with growing delays, counted, never leaked.

Real `CameraReader` threads with an injected capture opener (no network, no FFmpeg).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from service.config import StreamSettings
from service.metrics import Metrics
from service.streams.manager import StreamManager
from service.streams.reader import CameraReader
from service.streams.states import StreamState
from service.streams.stream import ClientQueue
from service.streams.watchdog import ReaderWatchdog, RestartBackoff

pytestmark = pytest.mark.unit

FAST = StreamSettings(backoff_initial_s=0.02, backoff_max_s=0.2, read_timeout_ms=60_000)


class EndlessCapture:
    """A healthy camera: a small frame every `period_s`, forever."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.period_s)
        return True, np.zeros((8, 8, 3), np.uint8)

    def release(self) -> None:
        pass


class FailingOpener:
    """Raises (a fatal open error: the reader thread ends in `failed`) the first `failures` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.threads: list[threading.Thread] = []
        """the reader thread of each call"""
        self.lock = threading.Lock()

    def __call__(self, url: str, settings: StreamSettings) -> EndlessCapture:
        with self.lock:
            self.calls += 1
            self.threads.append(threading.current_thread())
            if self.calls <= self.failures:
                raise RuntimeError(f"open failure {self.calls}")
        return EndlessCapture()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def camera_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"camera-{name}"]


def test_restart_delays_double_up_to_the_bound_and_start_over_after_a_healthy_run() -> None:
    backoff = RestartBackoff(initial_s=1.0, max_s=8.0, rng=random.Random(1))
    delays = [backoff.next_delay_s(uptime_s=0.1) for _ in range(6)]
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(0.8 * b <= d <= b for d, b in zip(delays, bases, strict=True)), delays
    assert delays[0] < delays[1] < delays[2] < delays[3]
    assert max(delays) <= 8.0
    # a reader that ran for max_s before failing had healed: back to the initial delay
    assert backoff.next_delay_s(uptime_s=8.0) <= 1.0


def test_watchdog_restarts_a_failed_reader_with_growing_delays_and_no_thread_leak() -> None:
    opener = FailingOpener(failures=3)
    reader = CameraReader("rtsp://x", FAST, name="wd", open_capture=opener)
    # delays of seconds, but no test waits them out: the checks are given the due time instead
    watchdog = ReaderWatchdog(reader, RestartBackoff(1.0, 60.0, random.Random(0)))
    assert not watchdog.check(time.monotonic()), "a reader not started yet is not failed"
    reader.start()
    delays: list[float] = []
    try:
        for restart in range(1, 4):
            wait_until(lambda: reader.state == StreamState.FAILED and not reader.alive)
            assert not watchdog.check(time.monotonic()), "the first check only schedules the restart"
            assert watchdog.last_delay_s is not None and watchdog.due_mono is not None
            delays.append(watchdog.last_delay_s)
            assert not watchdog.check(watchdog.due_mono - 0.01), "restarted before its delay"
            assert watchdog.check(watchdog.due_mono)
            assert watchdog.restarts == restart and watchdog.due_mono is None
            assert len(camera_threads("wd")) <= 1
        wait_until(lambda: reader.state == StreamState.LIVE)  # the fourth open succeeds
        assert not watchdog.check(time.monotonic() + 3600.0), "a live reader is left alone"
        assert camera_threads("wd") == [opener.threads[-1]]
    finally:
        reader.stop()
    assert delays[0] < delays[1] < delays[2], delays
    assert opener.calls == 4 and watchdog.restarts == 3
    assert len(set(opener.threads)) == 4, "each restart runs a new thread"
    assert not any(t.is_alive() for t in opener.threads), "a reader thread outlived its reader"


def test_a_stopped_reader_is_never_restarted() -> None:
    reader = CameraReader("rtsp://x", FAST, name="stopped", open_capture=FailingOpener(failures=1))
    watchdog = ReaderWatchdog(reader, RestartBackoff(0.01, 0.02, random.Random(0)))
    reader.start()
    wait_until(lambda: reader.state == StreamState.FAILED and not reader.alive)
    reader.stop()
    assert not watchdog.check(0.0) and not watchdog.check(3600.0)
    assert not reader.restart() and watchdog.restarts == 0 and not reader.alive


class NoPersonsBackend:
    untrained: ClassVar[bool] = False
    queues_prepared: ClassVar[bool] = False  # the scheduler awaits `infer`
    images_at_once: ClassVar[int] = 1

    def spec(self, name: str) -> None:
        return None

    async def acquire(self, name: str) -> NoPersonsBackend:
        return self

    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        return image_rgb

    def admit(self) -> SimpleNamespace:
        return SimpleNamespace(release=lambda: None)

    async def infer(self, prepared: np.ndarray, **_: Any) -> Any:
        empty = SimpleNamespace(keypoints=np.zeros((0, 17, 3)), boxes_xyxy=np.zeros((0, 4)), scores=np.zeros((0,)))
        return SimpleNamespace(value=SimpleNamespace(above=lambda _: empty), queue_s=0.0, inference_s=0.0)


def test_manager_heals_the_failing_camera_alone_and_counts_its_restarts() -> None:
    openers = {"bad": FailingOpener(failures=2), "good": FailingOpener(failures=0)}

    def reader_factory(url: str, settings: StreamSettings, **kwargs: Any) -> CameraReader:
        return CameraReader(url, settings, open_capture=openers[kwargs["name"]], **kwargs)

    def restarts_metric(metrics: Metrics, name: str) -> float | None:
        return metrics.registry.get_sample_value("poseserve_stream_reader_restarts_total", {"stream": name})

    async def scenario() -> dict[str, Any]:
        metrics = Metrics()
        with ThreadPoolExecutor(1) as pool:
            manager = StreamManager(
                FAST,
                NoPersonsBackend(),  # type: ignore[arg-type]
                metrics,
                pool,
                default_backend="fake",
                inference_timeout_s=1.0,
                min_person_score=0.2,
                housekeeping_period_s=0.01,
                reader_factory=reader_factory,
            )
            manager.start()
            try:
                bad = await manager.create("rtsp://127.0.0.1/bad", name="bad", backend=None, max_fps=50)
                client = manager.subscribe(bad.id)  # before the watchdog's first restart (>= 16 ms)
                messages = asyncio.create_task(read_all(client))
                good = await manager.create("rtsp://127.0.0.1/good", name="good", backend=None, max_fps=50)
                deadline = time.monotonic() + 10.0
                while bad.state != StreamState.LIVE or not bad.outcomes or not good.outcomes:
                    assert time.monotonic() < deadline, f"not healed: {bad.snapshot()} beside {good.snapshot()}"
                    await asyncio.sleep(0.01)
                out = {
                    "bad": bad.snapshot(),
                    "good": good.snapshot(),
                    "bad_metric": restarts_metric(metrics, "bad"),
                    "good_metric": restarts_metric(metrics, "good"),
                }
                await manager.delete(bad.id)  # ends the client's queue: `read_all` returns
                out["events"] = await asyncio.wait_for(messages, timeout=5.0)
                out["bad_metric_after_delete"] = restarts_metric(metrics, "bad")
                return out
            finally:
                await manager.close()

    out = asyncio.run(scenario())
    assert out["bad"].reader_restarts == 2 and out["bad_metric"] == 2.0
    assert out["good"].reader_restarts == 0 and out["good_metric"] == 0.0  # the series exists from 0
    assert out["good"].frames.get("processed", 0) > 0, "the healthy camera was held up by the failing one"
    assert openers["bad"].calls >= 3 and openers["good"].calls == 1
    states = [e["state"] for e in out["events"] if e.get("event") == "state"]
    assert "failed" in states and "live" in states and states[-1] == "stopped", states
    assert out["bad_metric_after_delete"] is None, "the restart counter of a deleted stream is forgotten"
    assert camera_threads("bad") == [] and camera_threads("good") == []


async def read_all(client: ClientQueue) -> list[dict[str, Any]]:
    """Every message a WebSocket client would get, until the stream is deleted."""
    messages = []
    while (text := await client.get()) is not None:
        messages.append(json.loads(text))
    return messages


@pytest.fixture(autouse=True)
def _no_leftover_reader_threads() -> Any:
    yield
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("camera-")]
    assert leftovers == [], leftovers
