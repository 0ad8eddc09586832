"""The bench report's arithmetic and rendering, from a real `Metrics` registry and a made-up run."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import pytest
from prometheus_client import generate_latest

from loadtest.report import batch_distribution, batch_histogram, markdown, max_cameras_within_budget, percentiles, write
from service.metrics import Metrics

pytestmark = pytest.mark.unit


def test_batch_distribution_is_the_difference_of_two_scrapes_summed_over_stages() -> None:
    metrics = Metrics()
    pose = metrics.batch_size.labels(backend="a", stage="pose")
    detect = metrics.batch_size.labels(backend="b", stage="detect")
    for size in (1, 1, 8):
        pose.observe(size)
    before = batch_histogram(generate_latest(metrics.registry).decode())
    for size in (1, 3, 3, 8, 8, 8):
        pose.observe(size)
    detect.observe(5)
    after = batch_histogram(generate_latest(metrics.registry).decode())
    # buckets 1, 2, 3, 4, 6, 8, ...: 3 lands in <=3, 5 in <=6, 8 in <=8
    assert batch_distribution(before, after) == {1: 1, 3: 2, 6: 1, 8: 3}
    assert batch_distribution(after, after) == {}


def test_percentiles_and_the_camera_budget() -> None:
    assert percentiles([10.0] * 99 + [1000.0])["p50"] == 10.0
    assert math.isnan(percentiles([])["p99"])

    def cell(n: int, p99s: list[float]) -> dict:
        return {"cameras": n, "rows": [{"age_ms": {"p99": p}} for p in p99s]}

    cells = [cell(1, [120.0]), cell(2, [200.0, 480.0]), cell(4, [300.0, 900.0, 310.0, 320.0])]
    assert max_cameras_within_budget(cells) == 2
    assert max_cameras_within_budget([cell(1, [600.0])]) == 0


def test_write_renders_tables_and_decodable_plots(tmp_path: Path) -> None:
    frames = {"processed": 90, "skipped": 10, "dropped_overload": 2, "dropped_stale": 0, "decode_error": 0, "error": 0}
    row = {
        "stream": "cam1",
        "input_fps": 25.0,
        "result_fps": 22.5,
        "age_ms": percentiles([50, 60, 70]),
        "frames": frames,
    }
    report = {
        "created_at": "2026-01-01T00:00:00Z",
        "machine": {"platform": "test", "cpus": 2},
        "camera_fps": 25,
        "seconds": 4.0,
        "camera_cells": [{"cameras": 1, "rows": [row], "batches": {1: 40}}],
        "http_cells": [
            {
                "concurrency": c,
                "requests": 100,
                "throughput_rps": 30.0 + c,
                "latency_p50_ms": 20.0 * c,
                "latency_p99_ms": 40.0 * c,
                "errors": {},
                "batches": {1: 10, 8: 5},
            }
            for c in (1, 8)
        ],
        "max_cameras_age_p99_within_500ms": 1,
    }
    path = write(report, tmp_path)
    text = path.read_text()
    for name in ("cameras_fps.png", "cameras_age.png", "cameras_outcomes.png", "http_latency.png", "batch_sizes.png"):
        image = cv2.imread(str(tmp_path / name))
        assert image is not None and image.std() > 0, name
        assert f"]({name})" in text
    assert "| 1 | cam1 | 25.0 | 22.5 |" in text
    assert "| 8 | 100 | 38.0 | 160.0 | 320.0 | - |" in text
    assert "p99 <= 500 ms: 1." in text
    assert markdown(report, []).count("|") > 20
