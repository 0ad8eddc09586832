"""The app in-process (httpx.ASGITransport) with real ORT workers and the real MoveNet model."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from service.config import BackendSettings, Settings
from tests.support import BadInput, bad_inputs, batches_larger_than_one, client_for, noise_jpeg, sample_jpeg

pytestmark = pytest.mark.integration

T = TypeVar("T")
MAX_BYTES = 2 * 1024 * 1024


def settings_for(model_dir: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "model_dir": model_dir,
        "max_image_bytes": MAX_BYTES,
        # a generous queue-time bound: these tests are about answers; admission is test_overload.py's
        "batching": BackendSettings(
            max_batch=8, max_wait_ms=20, max_queue=32, max_queue_delay_ms=30_000, intra_op_threads=2
        ),
    }
    return Settings(**{**base, **overrides})


def run(settings: Settings, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with client_for(settings) as client:
            return await scenario(client)

    return asyncio.run(main())


async def post(client: httpx.AsyncClient, bad: BadInput) -> httpx.Response:
    url = "/v1/pose" + (f"?{bad.query}" if bad.query else "")
    if bad.multipart:
        return await client.post(url, files={"file": ("x.jpg", bad.body, "image/jpeg")})
    headers = {"content-type": bad.content_type} if bad.content_type else {}
    return await client.post(url, content=bad.body, headers=headers)


def test_real_photo_returns_people(model_dir: Path) -> None:
    image = sample_jpeg()

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        raw = await client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"})
        form = await client.post("/v1/pose", files={"image": ("p.jpg", image, "image/jpeg")})
        return raw, form

    raw, form = run(settings_for(model_dir), scenario)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["backend"] == "movenet-multipose" and body["untrained"] is False
    assert len(body["persons"]) >= 2
    w, h = body["image"]["width"], body["image"]["height"]
    for person in body["persons"]:
        assert len(person["keypoints"]) == 17
        x1, y1, x2, y2 = person["bbox"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert all(0 <= x <= w and 0 <= y <= h and 0 <= s <= 1 for x, y, s in person["keypoints"])
    assert set(body["timing_ms"]) == {"queue", "inference", "total"}
    assert form.status_code == 200 and form.json()["persons"] == body["persons"]


def test_min_score_filters(model_dir: Path) -> None:
    image = sample_jpeg()
    settings = settings_for(model_dir)

    async def scenario(client: httpx.AsyncClient) -> tuple[list[dict[str, Any]], float, float, list[Any], list[Any]]:
        async def persons(query: str) -> list[dict[str, Any]]:
            r = await client.post(f"/v1/pose{query}", content=image, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            return r.json()["persons"]

        everyone = await persons("?min_score=0")
        assert len(everyone) >= 2, everyone
        # a threshold in the widest gap between two people's scores, so the JSON rounding of the
        # scores (1e-4) cannot move anyone across it
        scores = sorted((p["score"] for p in everyone), reverse=True)
        gap, threshold = max((hi - lo, round((hi + lo) / 2, 4)) for hi, lo in itertools.pairwise(scores))
        return everyone, gap, threshold, await persons(f"?min_score={threshold}"), await persons("")

    everyone, gap, threshold, confident, default = run(settings, scenario)
    assert len(everyone) <= 6  # MoveNet MultiPose proposes at most 6 people
    assert gap > 0.01, everyone
    assert 1 <= len(confident) < len(everyone)
    assert confident == [p for p in everyone if p["score"] >= threshold]
    assert default == [p for p in everyone if p["score"] >= settings.min_person_score]


def test_bad_inputs_get_4xx_and_server_stays_ready(model_dir: Path) -> None:
    cases = bad_inputs(MAX_BYTES)

    async def scenario(client: httpx.AsyncClient) -> tuple[list[tuple[BadInput, httpx.Response]], int, int]:
        results = [(bad, await post(client, bad)) for bad in cases]
        ready = await client.get("/readyz")
        good = await client.post("/v1/pose", content=noise_jpeg(), headers={"content-type": "image/jpeg"})
        return results, ready.status_code, good.status_code

    results, ready, good = run(settings_for(model_dir), scenario)
    for bad, response in results:
        assert response.status_code == bad.status, f"{bad.name}: {response.status_code} {response.text}"
        assert response.json()["error"]["code"] == bad.code, bad.name
        assert response.json()["error"]["message"], bad.name
    assert ready == 200 and good == 200


def test_concurrent_requests_share_batches(model_dir: Path) -> None:
    image = sample_jpeg()

    async def scenario(client: httpx.AsyncClient) -> tuple[list[int], str]:
        responses = await asyncio.gather(
            *(client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"}) for _ in range(16))
        )
        metrics = await client.get("/metrics")
        return [r.status_code for r in responses], metrics.text

    codes, metrics = run(settings_for(model_dir), scenario)
    assert codes == [200] * 16
    assert batches_larger_than_one(metrics) >= 1
    assert 'poseserve_requests_total{code="200",route="/v1/pose"} 16.0' in metrics


def test_full_queue_answers_503_with_retry_after(model_dir: Path) -> None:
    image = sample_jpeg()
    tight = settings_for(
        model_dir, batching=BackendSettings(max_batch=1, max_wait_ms=0, max_queue=1, intra_op_threads=1)
    )

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                *(client.post("/v1/pose", content=image, headers={"content-type": "image/jpeg"}) for _ in range(12))
            )
        )

    responses = run(tight, scenario)
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes, codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.json()["error"]["code"] == "overloaded"
    assert int(rejected.headers["retry-after"]) >= 1


def test_timeout_answers_504(model_dir: Path) -> None:
    slow = settings_for(model_dir, request_timeout_s=0.001)

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, int]:
        r = await client.post("/v1/pose", content=sample_jpeg(), headers={"content-type": "image/jpeg"})
        return r, (await client.get("/readyz")).status_code

    response, ready = run(slow, scenario)
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert ready == 200


def test_backends_listing_and_api_keys(model_dir: Path) -> None:
    keyed = settings_for(model_dir, api_keys=("s3cret",))

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await client.get("/v1/backends"),
            await client.get("/v1/backends", headers={"authorization": "Bearer wrong"}),
            await client.get("/v1/backends", headers={"authorization": "Bearer s3cret"}),
            await client.get("/v1/backends", headers={"x-api-key": "s3cret"}),
            await client.get("/healthz"),
        ]

    none, wrong, bearer, header, health = run(keyed, scenario)
    assert none.status_code == 401 and wrong.status_code == 401
    assert none.json()["error"]["code"] == "unauthorized"
    assert bearer.status_code == 200 and header.status_code == 200 and health.status_code == 200
    rows = {row["name"]: row for row in bearer.json()}
    mp = rows["movenet-multipose"]
    assert mp["weights_present"] and mp["loaded"] and mp["kind"] == "single-stage"
    assert "CPUExecutionProvider" in mp["providers"]


def test_missing_weights_answer_409(tmp_path: Path) -> None:
    empty = settings_for(tmp_path)  # the preloaded default backend cannot load: not ready

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        r = await client.post("/v1/pose", content=noise_jpeg(), headers={"content-type": "image/jpeg"})
        return r, await client.get("/readyz")

    response, ready = run(empty, scenario)
    assert response.status_code == 409 and response.json()["error"]["code"] == "weights_missing"
    assert "poseserve models pull movenet-multipose" in response.json()["error"]["message"]
    assert ready.status_code == 503
