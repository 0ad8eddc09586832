"""`python -m loadtest.burst --floor`: the same burst against a bare 503-only ASGI app under uvicorn
(`loadtest.floor`), the floor a server's refusal latency is read against."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest import burst

pytestmark = pytest.mark.integration


def test_floor_refuses_every_request_of_the_burst(shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSESERVE_SHARED_DIR", str(shared_root))
    args = argparse.Namespace(
        url=None, floor=True, clients=20, requests=2, backend=None, photo=None, timeout_s=10.0, max_seconds=60.0, env=[]
    )
    report = burst.run(args)
    rows = {r["outcome"].strip(): r for r in report["rows"]}
    assert report["sent"] == 40 and report["unfinished_clients"] == 0
    assert rows["answered"]["count"] == 0 and rows["refused_503"]["count"] == 40
    assert report["refused_codes"] == ["overloaded"] and report["retry_after_values"] == ["1"]
    assert report["other_outcomes"] == {} and rows["refused_503"]["p99_ms"] > 0
