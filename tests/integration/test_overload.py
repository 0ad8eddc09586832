"""Overload and worker deaths through the app in-process, with the real MoveNet model behind a
session wrapper that slows it down (so the burst overloads it on any hardware) or injects a fault."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import cv2
import httpx
import numpy as np
import pytest

import service.backends.single_stage as single_stage
import service.distributed.transport as transport
import service.engine as engine
from models.runtime import Session
from service.config import BackendSettings, Settings
from service.supervision import RestartBudget
from tests.support import client_for, metric_samples

pytestmark = pytest.mark.integration

T = TypeVar("T")
QUEUE_DELAY_MS = 400.0


class Boom(BaseException):
    """Escapes the worker's per-batch `except Exception`: the thread dies."""


class WrappedSession:
    """The real session, plus a fixed delay per batch and an injectable fault."""

    def __init__(self, inner: Session, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.faults = 0
        self.lock = threading.Lock()

    @property
    def providers(self) -> Any:
        return self.inner.providers

    @property
    def output_names(self) -> Any:
        return self.inner.output_names

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            fault = self.faults > 0
            self.faults -= fault
        if fault:
            raise Boom("injected worker fault")
        time.sleep(self.delay_s)
        return self.inner.run(batch)


def wrap_sessions(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> list[WrappedSession]:
    made: list[WrappedSession] = []
    real = single_stage.load_sessions

    def load(*args: Any, **kwargs: Any) -> list[Session]:
        made.extend(WrappedSession(s, delay_s) for s in real(*args, **kwargs))
        return list(made)

    monkeypatch.setattr(single_stage, "load_sessions", load)
    return made


def settings_for(model_dir: Path, **batching: Any) -> Settings:
    knobs = {"max_batch": 2, "max_wait_ms": 5, "max_queue": 32, "intra_op_threads": 1, **batching}
    return Settings(model_dir=model_dir, batching=BackendSettings(**knobs))


def run(settings: Settings, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with client_for(settings) as client:
            return await scenario(client)

    return asyncio.run(main())


def distinct_jpegs(n: int) -> list[bytes]:
    """`n` different small JPEGs (each body identifies its request)."""
    out = []
    for i in range(n):
        image = np.full((120, 160, 3), 40 + 4 * i, np.uint8)
        ok, buf = cv2.imencode(".jpg", image)
        assert ok
        out.append(buf.tobytes())
    return out


def test_burst_refuses_before_decoding_and_answers_within_the_queue_bound(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrap_sessions(monkeypatch, delay_s=0.15)  # >= 0.3 s per batch of 2: the burst cannot all start in time
    decoded: list[bytes] = []
    real_decode = transport.decode_image_reduced

    def counting_decode(data: bytes, *, max_pixels: int, long_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
        decoded.append(data)
        return real_decode(data, max_pixels=max_pixels, long_side=long_side)

    monkeypatch.setattr(transport, "decode_image_reduced", counting_decode)  # where POST /v1/pose decodes
    bodies = distinct_jpegs(40)

    async def scenario(client: httpx.AsyncClient) -> tuple[list[httpx.Response], str]:
        responses = await asyncio.gather(
            *(client.post("/v1/pose", content=b, headers={"content-type": "image/jpeg"}) for b in bodies)
        )
        return list(responses), (await client.get("/metrics")).text

    responses, metrics = run(settings_for(model_dir, max_queue_delay_ms=QUEUE_DELAY_MS), scenario)
    answered = [(b, r) for b, r in zip(bodies, responses, strict=True) if r.status_code == 200]
    refused = [(b, r) for b, r in zip(bodies, responses, strict=True) if r.status_code == 503]
    assert len(answered) + len(refused) == len(bodies), [r.status_code for r in responses]
    assert answered and refused
    for _, r in refused:
        assert r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
    # refused at admission: the body was never decoded; answered: decoded once
    at_admission = [b for b, r in refused if "would wait" in r.json()["error"]["message"]]
    assert at_admission
    assert not set(at_admission) & set(decoded)
    assert all(decoded.count(b) == 1 for b, _ in answered)
    # what was decoded was admitted: answered, or dropped after waiting the bound in the queue
    dropped_in_queue = len(refused) - len(at_admission)
    assert len(decoded) == len(answered) + dropped_in_queue
    # answered requests waited less than the bound in the queue
    assert all(r.json()["timing_ms"]["queue"] < QUEUE_DELAY_MS for _, r in answered)
    drops = {lb["reason"]: v for lb, v in metric_samples(metrics, "poseserve_items_dropped_total")}
    assert drops.get("overloaded") == len(at_admission)
    assert drops.get("queue_delay", 0) == dropped_in_queue


def test_a_worker_death_answers_503_then_heals(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = wrap_sessions(monkeypatch, delay_s=0.0)
    image = distinct_jpegs(1)[0]

    async def post(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"})

    async def scenario(client: httpx.AsyncClient) -> tuple[list[httpx.Response], int, str]:
        before = await post(client)
        sessions[0].faults = 1
        lost = await post(client)
        deadline = time.monotonic() + 30
        while (ready := await client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        after = await post(client)
        return [before, lost, after], ready.status_code, (await client.get("/metrics")).text

    (before, lost, after), ready, metrics = run(settings_for(model_dir), scenario)
    assert before.status_code == 200
    assert lost.status_code == 503, lost.text
    assert lost.json()["error"]["code"] == "backend_unavailable" and int(lost.headers["retry-after"]) >= 1
    assert ready == 200 and after.status_code == 200
    restarts = metric_samples(metrics, "poseserve_worker_restarts_total")
    assert restarts == [({"backend": "movenet-multipose", "stage": "pose"}, 1.0)]


def test_a_stage_without_live_workers_is_not_ready(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = wrap_sessions(monkeypatch, delay_s=0.0)
    monkeypatch.setattr(engine, "RestartBudget", lambda: RestartBudget(max_restarts=1, backoff_initial_s=0.01))
    image = distinct_jpegs(1)[0]

    async def scenario(client: httpx.AsyncClient) -> tuple[list[httpx.Response], httpx.Response]:
        sessions[0].faults = 1_000  # every batch kills its worker
        answers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answers.append(await client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"}))
            ready = await client.get("/readyz")
            if ready.status_code == 503 and "not restarted" in str(ready.json()["problems"]):
                break
            await asyncio.sleep(0.02)
        answers.append(await client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"}))
        return answers, ready

    answers, ready = run(settings_for(model_dir), scenario)
    assert ready.status_code == 503
    assert any("movenet-multipose" in p and "0 of 1" in p for p in ready.json()["problems"]), ready.json()
    assert {r.status_code for r in answers} == {503}
    assert {r.json()["error"]["code"] for r in answers} == {"backend_unavailable"}


def test_slots_admitted_at_the_edge_are_released_whatever_the_route_answers(model_dir: Path) -> None:
    """`ShedOverload` reserves a slot before routing; requests that then fail in the route (415,
    422, 400) give it back: more of them than `max_queue` leave the backend admitting."""
    image = distinct_jpegs(1)[0]

    async def scenario(client: httpx.AsyncClient) -> tuple[list[int], int, str]:
        await client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"})  # loaded
        codes = []
        for i in range(40):  # each kind of failure more often than max_queue (32)
            for url, body, content_type in (
                ("/v1/pose", image, "text/plain"),  # 415 in the route
                (f"/v1/pose?min_score={i + 2}", image, "image/jpeg"),  # 422 before the route runs
                ("/v1/pose", b"\xff\xd8junk", "image/jpeg"),  # 400 after decoding
            ):
                r = await client.post(url, content=body, headers={"content-type": content_type})
                codes.append(r.status_code)
        good = await client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"})
        return codes, good.status_code, (await client.get("/metrics")).text

    codes, good, metrics = run(settings_for(model_dir, max_queue_delay_ms=None), scenario)
    assert sorted(set(codes)) == [400, 415, 422], codes
    assert good == 200
    answered = {(lb["route"], lb["code"]): v for lb, v in metric_samples(metrics, "poseserve_requests_total")}
    assert answered[("/v1/pose", "415")] == 40 and answered[("/v1/pose", "200")] == 2


def test_refusals_at_the_edge_are_counted_under_their_route(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrap_sessions(monkeypatch, delay_s=0.15)
    bodies = distinct_jpegs(30)

    async def scenario(client: httpx.AsyncClient) -> tuple[list[httpx.Response], str]:
        await client.post("/v1/pose", content=bodies[0], headers={"content-type": "image/jpeg"})  # loaded
        responses = await asyncio.gather(
            *(client.post("/v1/pose", content=b, headers={"content-type": "image/jpeg"}) for b in bodies)
        )
        return list(responses), (await client.get("/metrics")).text

    responses, metrics = run(settings_for(model_dir, max_queue_delay_ms=QUEUE_DELAY_MS), scenario)
    refused = [r for r in responses if r.status_code == 503]
    assert refused and all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
    answered = {(lb["route"], lb["code"]): v for lb, v in metric_samples(metrics, "poseserve_requests_total")}
    assert answered[("/v1/pose", "503")] == len(refused)
    assert ("unmatched", "503") not in answered


@pytest.mark.parametrize("rate", [0.0, 10.0])
def test_clients_retrying_refusals_at_once_draw_them_at_the_paced_rate(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, rate: float
) -> None:
    """Six closed-loop clients that retry a 503 at once, for 2 s, against a model that takes 2
    images per 0.15 s: unpaced (rate 0) they drew 1,861 refusals (and 5 answers) here; paced, the
    burst of 10 plus `rate` a second, plus those held the whole `max_refusal_delay_ms` (34, and 10
    answers)."""
    wrap_sessions(monkeypatch, delay_s=0.15)
    body = distinct_jpegs(1)[0]
    seconds, clients = 2.0, 6

    async def scenario(client: httpx.AsyncClient) -> tuple[dict[int, int], float]:
        await client.post("/v1/pose", content=body, headers={"content-type": "image/jpeg"})  # loaded
        codes: dict[int, int] = {}
        started = time.monotonic()

        async def user() -> None:
            while time.monotonic() - started < seconds:
                r = await client.post("/v1/pose", content=body, headers={"content-type": "image/jpeg"})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        await asyncio.gather(*(user() for _ in range(clients)))
        return codes, time.monotonic() - started

    settings = settings_for(model_dir, max_queue_delay_ms=200.0).model_copy(
        update={"max_refusals_per_s": rate, "max_refusal_burst": 10, "max_refusal_delay_ms": 1000.0}
    )
    codes, elapsed = run(settings, scenario)
    assert set(codes) <= {200, 503} and codes.get(200), codes
    # the burst, its refill, and those held the full second (they reserve nothing)
    paced_bound = 10 + 10 * elapsed + clients * (elapsed / 1.0 + 1)
    if rate == 0:
        assert codes[503] > 3 * paced_bound, codes  # the storm the pacing is for
    else:
        assert codes.get(503, 0) <= paced_bound, (codes, elapsed)
