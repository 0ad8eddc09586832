"""`python -m loadtest.served_vs_raw`, the pure parts: reading `wrk` and taking medians round by round."""

from __future__ import annotations

import pytest

from loadtest.served_vs_raw import Level, parse_wrk, summarize

pytestmark = pytest.mark.unit

WRK = """Running 15s test @ http://127.0.0.1:8998/v1/pose
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   104.08ms    9.22ms 135.46ms   72.22%
    Req/Sec    76.70      7.47    90.00     82.67%
  Latency Distribution
     50%  {median}
     75%  109.54ms
     90%  115.73ms
     99%    1.27s
  1152 requests in 15.04s, 1.28MB read
{extra}Requests/sec:     76.60
Transfer/sec:     87.47KB
"""


@pytest.mark.parametrize(("median", "ms"), [("103.70ms", 103.7), ("950.00us", 0.95), ("1.50s", 1500.0)])
def test_wrk_median_in_milliseconds_whatever_its_unit(median: str, ms: float) -> None:
    level = parse_wrk(WRK.format(median=median, extra=""))
    assert level == Level(p50_ms=pytest.approx(ms), rps=pytest.approx(1152 / 15.04), errors=0)


def test_wrk_errors_count_refusals_and_socket_errors_and_only_answers_count_as_served() -> None:
    extra = "  Socket errors: connect 0, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 1000\n"
    level = parse_wrk(WRK.format(median="10.00ms", extra=extra))
    assert level.errors == 1005
    assert level.rps == pytest.approx(152 / 15.04)  # not wrk's 76.6/s: 1000 of its 1152 were refusals


def test_output_without_a_latency_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="wrk --latency"):
        parse_wrk("unable to connect to 127.0.0.1:8998 Connection refused\n")


def test_gap_and_ratio_are_medians_of_each_rounds_own_pair() -> None:
    """A slow round slows both sides: the gap is taken within each round, then the median."""
    rounds = [
        {"bare_alone_ms": 10.0, "bare_best_img_per_s": 100.0, "a": {"c1_p50_ms": 15.0, "loaded_rps": 70.0}},
        {"bare_alone_ms": 20.0, "bare_best_img_per_s": 50.0, "a": {"c1_p50_ms": 24.0, "loaded_rps": 40.0}},
        {"bare_alone_ms": 11.0, "bare_best_img_per_s": 90.0, "a": {"c1_p50_ms": 17.0, "loaded_rps": 72.0}},
    ]
    summary = summarize(rounds, ["a"])
    assert summary["bare_alone_ms"] == 11.0 and summary["bare_best_img_per_s"] == 90.0
    assert summary["a"]["c1_p50_ms"] == 17.0 and summary["a"]["loaded_rps"] == 70.0
    assert summary["a"]["gap_ms"] == 5.0  # round gaps 5, 4, 6; the medians' difference would be 6
    assert summary["a"]["ratio"] == 0.8  # round ratios 0.7, 0.8, 0.8
