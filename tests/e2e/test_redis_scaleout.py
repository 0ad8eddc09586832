"""Scale-out over Redis: a real `redis-server`, a `poseserve serve --redis-url` gateway and real
`poseserve worker` subprocesses (the pretrained default model), all on loopback ports."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from service.distributed.redis_jobs import GROUP, jobs_key
from tests.redis_support import (
    BACKEND,
    RedisServer,
    Worker,
    gateway_metric,
    running_redis,
    running_workers,
    wait_for,
)
from tests.support import assert_clean_log, metric_samples, running_server, sample_jpeg

pytestmark = pytest.mark.e2e

WORKERS = ("w1", "w2")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@dataclass
class Cluster:
    redis: RedisServer
    gateway: str
    workers: list[Worker]


@pytest.fixture
def cluster(model_dir: Path, redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """1 gateway + 2 workers over `redis_server`, ready (the gateway sees both heartbeats)."""
    with running_workers(model_dir, redis_server.url, tmp_path, WORKERS) as workers:
        gateway_log = tmp_path / "gateway.log"
        # a generous deadline: on a small shared machine a batch of 8 can take seconds
        env = {"POSESERVE_REDIS_URL": redis_server.url, "POSESERVE_REQUEST_TIMEOUT_S": "30"}
        with running_server(model_dir, gateway_log, **env) as (url, _):

            def both_alive() -> bool:
                for w in workers:
                    assert w.proc.poll() is None, w.log.read_text()[-3000:]
                return gateway_metric(url, "poseserve_redis_workers", backend=BACKEND) == len(WORKERS)

            wait_for(both_alive, 120, "both workers' heartbeats")
            yield Cluster(redis_server, url, workers)
        assert_clean_log(gateway_log)


def post(url: str, image: bytes, timeout_s: float = 30.0) -> httpx.Response:
    return httpx.post(f"{url}/v1/pose", content=image, headers={"content-type": "image/jpeg"}, timeout=timeout_s)


def load(
    url: str, count: int, concurrency: int, on_answer: Callable[[int], None] = lambda _: None
) -> list[httpx.Response]:
    """`count` POSTs of the sample photo, `concurrency` at a time; `on_answer(n)` after the n-th answer."""
    image = sample_jpeg()
    answered = 0

    def one(_: int) -> httpx.Response:
        nonlocal answered
        r = post(url, image)
        answered += 1
        on_answer(answered)
        return r

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(count)))


def worker_probe(worker: Worker, path: str) -> httpx.Response:
    return httpx.get(worker.metrics_url.removesuffix("/metrics") + path, timeout=10)


def test_two_workers_serve_every_request(cluster: Cluster) -> None:
    for worker in cluster.workers:  # probes on the worker's port (Kubernetes, compose)
        assert worker_probe(worker, "/healthz").status_code == 200
        ready = worker_probe(worker, "/readyz")
        assert ready.status_code == 200, ready.text
    responses = load(cluster.gateway, 200, 8)
    assert [r.status_code for r in responses] == [200] * 200, {r.status_code: r.text for r in responses}
    assert all(r.json()["persons"] for r in responses)
    served_by = [r.headers["x-poseserve-worker"] for r in responses]
    assert set(served_by) == set(WORKERS), {w: served_by.count(w) for w in WORKERS}
    # exactly once: one answer per job sent (a second reply, were there one, is dropped)
    assert gateway_metric(cluster.gateway, "poseserve_redis_jobs_total", outcome="answered") == 200
    assert gateway_metric(cluster.gateway, "poseserve_redis_jobs_total", outcome="sent") == 200

    def drained() -> bool:  # lag and pending are published, and fall back to 0 once all is answered
        text = httpx.get(f"{cluster.gateway}/metrics", timeout=10).text
        series = [
            v
            for name in ("poseserve_redis_stream_lag", "poseserve_redis_stream_pending")
            for lb, v in metric_samples(text, name)
            if lb.get("backend") == BACKEND
        ]
        return len(series) == 2 and series == [0.0, 0.0]

    wait_for(drained, 10, "stream lag and pending back to 0")


def test_killed_worker_jobs_are_redelivered_and_answered_once(cluster: Cluster) -> None:
    victim, survivor = cluster.workers
    client = redis.Redis(port=cluster.redis.port)
    killed_at: list[float] = []

    def held_by_victim() -> int:
        consumers = client.xpending(jobs_key(BACKEND), GROUP)["consumers"]
        return sum(c["pending"] for c in consumers if c["name"] == victim.name.encode())

    def kill_when_busy(answered: int) -> None:
        if answered < 20 or killed_at:
            return
        killed_at.append(time.monotonic())
        deadline = time.monotonic() + 10
        while held_by_victim() == 0 and time.monotonic() < deadline:  # kill it while it holds jobs
            time.sleep(0.001)
        os.kill(victim.proc.pid, signal.SIGKILL)

    responses = load(cluster.gateway, 200, 8, on_answer=kill_when_busy)
    client.close()
    assert killed_at and victim.proc.wait(timeout=10) == -signal.SIGKILL
    assert [r.status_code for r in responses] == [200] * 200, {r.status_code: r.text for r in responses}
    survivor_metrics = httpx.get(survivor.metrics_url, timeout=10).text
    assert sum(v for _, v in metric_samples(survivor_metrics, "poseserve_redis_jobs_redelivered_total")) >= 1
    # exactly once: one answer per request, whatever number of replies arrived
    assert gateway_metric(cluster.gateway, "poseserve_redis_jobs_total", outcome="answered") == 200
    assert gateway_metric(cluster.gateway, "poseserve_redis_jobs_total", outcome="sent") == 200
    served_after = [r.headers["x-poseserve-worker"] for r in responses[-50:]]
    assert set(served_after) == {survivor.name}


def test_redis_restart_recovers_without_restarting_anything(cluster: Cluster) -> None:
    image = sample_jpeg()
    assert post(cluster.gateway, image).status_code == 200
    cluster.redis.kill()
    refused = post(cluster.gateway, image)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "backend_unavailable" and refused.headers["retry-after"] == "1"
    ready = httpx.get(f"{cluster.gateway}/readyz", timeout=10)
    assert ready.status_code == 503 and "redis is unreachable" in ready.json()["problems"]
    live = [w for w in cluster.workers if w.proc.poll() is None]

    def workers_not_ready() -> bool:
        return all(
            (r := worker_probe(w, "/readyz")).status_code == 503 and "redis is unreachable" in r.json()["problems"]
            for w in live
        )

    wait_for(workers_not_ready, 10, "workers' /readyz to report Redis unreachable")
    assert all(worker_probe(w, "/healthz").status_code == 200 for w in live)  # alive: not restarted

    cluster.redis.start()  # the same port, a new (empty) server
    restarted = time.monotonic()
    codes: list[int] = []

    def served() -> bool:
        codes.append(post(cluster.gateway, image, timeout_s=5).status_code)
        return codes[-1] == 200

    wait_for(served, 10, "a request served after Redis came back")
    assert time.monotonic() - restarted < 10
    assert set(codes) <= {200, 503}, codes
    assert httpx.get(f"{cluster.gateway}/readyz", timeout=10).status_code == 200
    assert all(w.proc.poll() is None for w in live)
    wait_for(lambda: all(worker_probe(w, "/readyz").status_code == 200 for w in live), 10, "workers ready again")
    responses = load(cluster.gateway, 16, 4)
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses if r.status_code != 200]
    assert gateway_metric(cluster.gateway, "poseserve_redis_reconnects_total") >= 1
