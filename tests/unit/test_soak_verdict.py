"""The soak's verdict: growth, leaks, unbounded queues and dead cameras are each caught."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.soak import max_queue_depth, verdict

pytestmark = pytest.mark.unit


def sample(t_s: float, rss: float = 500.0, fds: int = 40, threads: int = 30, depth: float = 3.0, **states: str) -> dict:
    return {
        "t_s": t_s,
        "rss_mib": rss,
        "fds": fds,
        "threads": threads,
        "max_queue_depth": depth,
        "states": states or {"cam1": "live"},
    }


def problems(samples: list[dict[str, Any]]) -> list[str]:
    return verdict(samples, warmup_s=60, max_queue=64)["problems"]


def test_a_steady_run_passes_and_the_warm_up_is_ignored() -> None:
    run = [sample(30, rss=300, fds=20, threads=10), sample(60), sample(90, rss=510, fds=42, threads=31)]
    result = verdict(run, warmup_s=60, max_queue=64)
    assert result["ok"] and result["problems"] == []
    assert result["rss_growth"] == pytest.approx(0.02)


def test_each_kind_of_drift_is_a_problem() -> None:
    assert "RSS grew" in problems([sample(60), sample(90, rss=530)])[0]
    sawtooth = [sample(60, rss=520), sample(90, rss=480), sample(120, rss=490), sample(150, rss=525)]
    assert problems(sawtooth) == []  # 480 -> 525 first to last, but the peaks hold
    assert "descriptors" in problems([sample(60), sample(90, fds=50)])[0]
    creeping = [sample(60 + 30 * i, rss=500 + 8 * i) for i in range(8)]
    assert "RSS grew" in problems(creeping)[0]
    assert "threads" in problems([sample(60), sample(90, threads=40)])[0]
    # connections that come and go are no trend: an early peak as high as the late one passes
    wavy = [sample(60, fds=48), sample(90, fds=40), sample(120, fds=41), sample(150, fds=47)]
    assert problems(wavy) == []
    assert "queue" in problems([sample(60), sample(90, depth=65)])[0]
    assert "not live" in problems([sample(60), sample(90, cam1="live", cam2="reconnecting")])[0]
    assert "samples" in problems([sample(30), sample(90)])[0]


def test_queue_depth_is_read_from_the_metrics_text() -> None:
    text = (
        "# TYPE poseserve_queue_depth gauge\n"
        'poseserve_queue_depth{backend="movenet-multipose",stage="pose"} 7.0\n'
        'poseserve_queue_depth{backend="topdown-movenet",stage="detect"} 2.0\n'
    )
    assert max_queue_depth(text) == 7.0
    assert max_queue_depth("") == 0.0
