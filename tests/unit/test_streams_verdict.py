"""`loadtest.streams`' verdict: the most cameras served within the capture->result age budget."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from loadtest.streams import _counts, most_served, served


def _report(cameras: int, ages_p99: list[float], results: int = 100) -> dict[str, Any]:
    rows = [{"results": results, "result_fps": results / 40, "age_p99_ms": a} for a in ages_p99]
    return {"cameras": cameras, "rows": rows}


def test_a_count_is_served_only_when_every_camera_is_within_the_budget() -> None:
    assert served(_report(2, [300.0, 500.0]), 500.0)
    assert not served(_report(2, [300.0, 500.1]), 500.0)
    assert not served(_report(1, [0.0], results=0), 500.0)  # no results is not fresh results
    assert served(_report(1, [300.0], results=40), 500.0, min_result_fps=1.0)
    assert not served(_report(1, [300.0], results=39), 500.0, min_result_fps=1.0)  # fresh but too few


def test_most_served_stops_at_the_first_count_that_failed() -> None:
    reports = [_report(6, [480.0] * 6), _report(2, [200.0] * 2), _report(4, [450.0] * 4), _report(8, [900.0] * 8)]
    assert most_served(reports, 500.0) == 6
    reports[2] = _report(4, [520.0] * 4)  # 6 then passing is noise: 4 already failed
    assert most_served(reports, 500.0) == 2
    assert most_served(reports, 100.0) == 0


def test_camera_counts_parse_as_a_sorted_set() -> None:
    assert _counts("6,2,4,2") == [2, 4, 6]
    with pytest.raises(argparse.ArgumentTypeError):
        _counts("0,2")
