"""Per-frame failures are logged with their traceback, at most once per interval, with a count."""

from __future__ import annotations

import logging

import pytest

from service.streams.errorlog import ThrottledLog
from tests.support import FakeClock

pytestmark = pytest.mark.unit


def fail(log: ThrottledLog, seq: int) -> bool:
    try:
        raise RuntimeError(f"boom {seq}")
    except RuntimeError:
        return log.exception("stream %s: frame %d failed", "cam", seq)


def test_first_failure_logged_then_one_line_per_interval_with_the_suppressed_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = ThrottledLog(logging.getLogger("test.errorlog"), interval_s=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.errorlog"):
        logged = [fail(log, seq) for seq in range(1, 101)]  # 100 failing frames within one instant
        clock.now += 29.9
        logged.append(fail(log, 101))
        clock.now += 0.2  # 30.1 s after the first line
        logged.append(fail(log, 102))

    assert logged[0] and logged[-1] and not any(logged[1:-1])
    assert [r.getMessage() for r in caplog.records] == [
        "stream cam: frame 1 failed",
        "stream cam: frame 102 failed (100 more since the last report, not logged)",
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records)
    excs = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [str(e) for e in excs] == ["boom 1", "boom 102"]
    assert log.total == 102 and log.suppressed == 0
