"""Served latency and throughput of POST /v1/pose: in-process vs gateway + 1 worker vs gateway + 2 workers.

Starts a `redis-server` (loopback, no persistence), the servers and workers as subprocesses
(default backend, settings from the environment), and runs `service.bench.bench_http`'s closed loop
at each concurrency against each set-up in turn. Every process runs on this machine's cores: on a
small CPU-only machine the workers compete with each other and the gateway for the same cores.

    python -m loadtest.redis_bench [--seconds 8] [--concurrency 1,8] [--out bench-results/redis.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from service.bench import bench_http, format_table, write_json
from service.spawn import free_port, spawned_server
from tests.support import metric_samples, sample_jpeg


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def _workers(url: str, count: int) -> Iterator[None]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--redis-url", url, "--name", f"w{i + 1}"],
            env={**os.environ, "POSESERVE_LOG_LEVEL": "warning"},
            stdin=subprocess.DEVNULL,
        )
        for i in range(count)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_for_workers(base: str, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"{base}/metrics", timeout=5).text
        if sum(v for _, v in metric_samples(text, "poseserve_redis_workers")) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers not seen within {timeout_s:g} s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--out", type=Path, default=Path("bench-results/redis.json"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    image = sample_jpeg()
    quiet = {"POSESERVE_LOG_LEVEL": "warning"}
    rows: list[dict[str, Any]] = []

    def measure(setup: str, base: str) -> None:
        bench_http(base, image, concurrency=[1], seconds=1.0)  # warm the connections and the first batches
        for row in bench_http(base, image, concurrency=levels, seconds=args.seconds):
            rows.append({"setup": setup, **row})

    with spawned_server(quiet) as (base, _):
        measure("in-process", base)
    for count in (1, 2):
        with _redis() as url, _workers(url, count), spawned_server({**quiet, "POSESERVE_REDIS_URL": url}) as (base, _):
            _wait_for_workers(base, count)
            measure(f"redis, {count} worker{'s' if count > 1 else ''}", base)
    columns = ["setup", "concurrency", "requests", "latency_p50_ms", "latency_p99_ms", "throughput_rps", "errors"]
    print(format_table(rows, columns))
    write_json(args.out, "redis", rows, image="sample_jpeg()")


if __name__ == "__main__":
    main()
