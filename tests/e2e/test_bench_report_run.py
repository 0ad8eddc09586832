"""`make bench-report` end to end, shrunk: one real camera, one HTTP client, a few seconds each."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.fleet import fleet_available
from loadtest.report import run, write
from tests.support import shared_dir, skip_unless_ci

pytestmark = pytest.mark.e2e


def test_a_small_matrix_yields_a_report_with_data(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = fleet_available()
    if reason:
        skip_unless_ci(f"RTSP camera fleet unavailable: {reason}")
    monkeypatch.setenv("POSESERVE_MODEL_DIR", str(model_dir))
    lines: list[str] = []
    report = run([1], [1, 4], seconds=4.0, warmup_s=3.0, fps=25, shared=shared_dir(), say=lines.append)
    [cell] = report["camera_cells"]
    [row] = cell["rows"]
    assert row["result_fps"] > 0 and row["frames"]["processed"] > 0, row
    assert row["age_ms"]["p50"] > 0
    assert sum(cell["batches"].values()) > 0
    assert [c["requests"] > 0 for c in report["http_cells"]] == [True, True], report["http_cells"]
    assert len(lines) == 4 and lines[-1].endswith("done")  # one progress line per scenario, then done
    text = write(report, tmp_path).read_text()
    assert "## Cameras" in text and "## HTTP" in text and (tmp_path / "cameras_age.png").is_file()
