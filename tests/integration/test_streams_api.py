"""Stream subscriptions in-process: every bad request is a 4xx and starts nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings, StreamSettings
from tests.support import client_for

pytestmark = pytest.mark.integration

# a loopback port nothing listens on: the stream is accepted and keeps trying to connect
DEAD_CAMERA = "rtsp://127.0.0.1:9/cam"


def settings_for(model_dir: Path) -> Settings:
    return Settings(model_dir=model_dir, streams=StreamSettings(max_streams=2, backoff_max_s=0.5))


def test_bad_stream_requests(model_dir: Path) -> None:
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({"url": "not a url"}, 400, "invalid_stream_url"),
        ({"url": "ftp://127.0.0.1/cam"}, 400, "invalid_stream_url"),
        ({"url": "file:///etc/passwd"}, 400, "invalid_stream_url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, 400, "invalid_stream_url"),
        ({"url": "rtsp://[fe80::1]/cam"}, 400, "invalid_stream_url"),
        ({"url": DEAD_CAMERA, "backend": "nope"}, 404, "unknown_backend"),
        ({"url": DEAD_CAMERA, "max_fps": 0}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "name": "has spaces"}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "surprise": 1}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "tracking": {"min_hits": 0}}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "tracking": {"max_age_frames": 5000}}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "smoothing": {"min_cutoff": 0}}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "smoothing": {"beta": -1}}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "smoothing": {"enabled": True, "gain": 2}}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "skeleton_only": "sometimes"}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "skeleton_only": 1}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "tracking": {"min_hits": True}}, 422, "validation_error"),
        ({"url": DEAD_CAMERA, "smoothing": {"beta": False}}, 422, "validation_error"),
        ({}, 422, "validation_error"),
    ]

    async def scenario(client: httpx.AsyncClient) -> tuple[list[httpx.Response], list[Any]]:
        responses = [await client.post("/v1/streams", json=body) for body, _, _ in bad]
        return responses, (await client.get("/v1/streams")).json()

    responses, listed = asyncio.run(_run(settings_for(model_dir), scenario))
    for (body, status, code), response in zip(bad, responses, strict=True):
        assert response.status_code == status, f"{body}: {response.status_code} {response.text}"
        assert response.json()["error"]["code"] == code, body
    assert listed == []


def test_limits_duplicates_and_lifecycle(model_dir: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first = await client.post("/v1/streams", json={"url": DEAD_CAMERA, "name": "door"})
        out["first"] = first
        out["duplicate"] = await client.post("/v1/streams", json={"url": DEAD_CAMERA, "name": "door"})
        out["second"] = await client.post(
            "/v1/streams",
            json={
                "url": DEAD_CAMERA,
                "tracking": {"enabled": False},
                "smoothing": {"enabled": True, "beta": 0.5},
                "skeleton_only": True,
            },
        )
        out["third"] = await client.post("/v1/streams", json={"url": DEAD_CAMERA})
        stream_id = first.json()["id"]
        await asyncio.sleep(1.0)
        out["one"] = await client.get(f"/v1/streams/{stream_id}")
        out["ready"] = await client.get("/readyz")
        out["delete"] = await client.delete(f"/v1/streams/{stream_id}")
        out["gone"] = await client.get(f"/v1/streams/{stream_id}")
        out["delete_again"] = await client.delete(f"/v1/streams/{stream_id}")
        out["list"] = await client.get("/v1/streams")
        return out

    out = asyncio.run(_run(settings_for(model_dir), scenario))
    assert out["first"].status_code == 201
    created = out["first"].json()
    assert created["name"] == "door" and created["backend"] == "movenet-multipose"
    assert created["state"] == "connecting"
    assert set(created) == {
        "id", "name", "url", "backend", "max_fps", "state", "created_at", "input_fps", "result_fps",
        "last_frame_age_s", "reconnects", "reader_restarts", "frames", "drops", "reader_cpu_s", "ws_clients",
        "tracking", "smoothing", "skeleton_only",
    }  # fmt: skip
    assert created["tracking"] == {"enabled": True, "max_age_frames": 30, "min_hits": 3}
    assert created["smoothing"]["enabled"] is False and created["skeleton_only"] is False
    assert created["reconnects"] == 0 and created["reader_restarts"] == 0 and created["frames"] == {}
    assert out["duplicate"].status_code == 409 and out["duplicate"].json()["error"]["code"] == "duplicate_stream"
    assert out["second"].status_code == 201
    second = out["second"].json()
    assert second["tracking"]["enabled"] is False and second["skeleton_only"] is True
    assert second["smoothing"] == {"enabled": True, "min_cutoff": 1.0, "beta": 0.5, "d_cutoff": 1.0}
    assert out["third"].status_code == 409 and out["third"].json()["error"]["code"] == "too_many_streams"
    # a camera that never connects stays "connecting" and does not affect the service
    assert out["one"].json()["state"] == "connecting" and out["ready"].status_code == 200
    assert out["delete"].status_code == 204
    assert out["gone"].status_code == 404 and out["gone"].json()["error"]["code"] == "unknown_stream"
    assert out["delete_again"].status_code == 404
    assert len(out["list"].json()) == 1


async def _run(settings: Settings, scenario: Any) -> Any:
    async with client_for(settings) as client:
        return await scenario(client)


def test_a_stream_body_over_the_limit_is_413_and_never_parsed(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, max_json_body_bytes=4096)
    padded = b'{"url": "' + DEAD_CAMERA.encode() + b'", "name": "' + b"x" * 8000 + b'"}'

    async def chunks() -> Any:
        for start in range(0, len(padded), 1000):
            yield padded[start : start + 1000]

    async def scenario(client: httpx.AsyncClient) -> dict[str, Any]:
        json_type = {"content-type": "application/json"}
        return {
            "declared": await client.post("/v1/streams", content=padded, headers=json_type),
            "chunked": await client.post("/v1/streams", content=chunks(), headers=json_type),
            "small": await client.post("/v1/streams", json={"url": DEAD_CAMERA, "name": "yard"}),
            "listed": await client.get("/v1/streams"),
            "metrics": await client.get("/metrics"),
        }

    out = asyncio.run(_run(settings, scenario))
    for key in ("declared", "chunked"):
        assert out[key].status_code == 413, out[key].text
        assert out[key].json()["error"]["code"] == "too_large"
    assert out["small"].status_code == 201, out["small"].text
    assert [s["name"] for s in out["listed"].json()] == ["yard"]
    assert 'poseserve_requests_total{code="413",route="/v1/streams"} 2.0' in out["metrics"].text
