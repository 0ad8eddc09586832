"""Real Redis-backed clusters for the e2e tests: a `redis-server` that can be killed and restarted on
its port, `poseserve worker` subprocesses, and metric / wait helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from service.spawn import free_port
from tests.support import metric_samples, skip_unless_ci

BACKEND = "movenet-multipose"


class RedisServer:
    """`redis-server` on a fixed loopback port, no persistence; `kill` (SIGKILL) and `start` again."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self._log_dir / "redis.log").open("ab")
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            assert self._proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)


@contextlib.contextmanager
def running_redis(log_dir: Path) -> Iterator[RedisServer]:
    """A started `RedisServer`, killed on exit; skips (fails under CI=true) without `redis-server`."""
    if shutil.which("redis-server") is None:
        skip_unless_ci("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(log_dir)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_url: str
    log: Path


@contextlib.contextmanager
def running_workers(
    model_dir: Path, redis_url: str, log_dir: Path, names: tuple[str, ...], **env_overrides: str
) -> Iterator[list[Worker]]:
    """`poseserve worker` processes (not waited for: see the gateway's `poseserve_redis_workers`); stopped on exit."""
    workers = []
    try:
        for name in names:
            port = free_port()
            log = log_dir / f"{name}.log"
            env = {
                **os.environ,
                "POSESERVE_MODEL_DIR": str(model_dir),
                "POSESERVE_BATCHING__INTRA_OP_THREADS": "1",
                **env_overrides,
            }
            cmd = [sys.executable, "-m", "service", "worker", "--redis-url", redis_url, "--name", name]
            proc = subprocess.Popen(
                [*cmd, "--backend", BACKEND, "--metrics-port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
            workers.append(Worker(name, proc, f"http://127.0.0.1:{port}/metrics", log))
        yield workers
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in workers:
            try:
                w.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=5)


def gateway_metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(v for lb, v in metric_samples(text, name) if all(lb.get(k) == x for k, x in labels.items()))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(0.1)
