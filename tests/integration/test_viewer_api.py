"""The live viewer page and the frame preview in-process: a real local video read by the real reader."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from service.config import Settings, StreamSettings
from tests.support import client_for

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 320, 240
DEAD_CAMERA = "rtsp://127.0.0.1:9/cam"  # nothing listens: the stream stays "connecting", no frame


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 10 fps MP4 of a moving white box on a blue-grey background."""
    path = tmp_path_factory.mktemp("viewer") / "box.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(20):
        image = np.full((HEIGHT, WIDTH, 3), (120, 80, 40), np.uint8)
        cv2.rectangle(image, (10 + 8 * i, 50), (60 + 8 * i, 150), (255, 255, 255), -1)
        writer.write(image)
    writer.release()
    return path


def settings_for(model_dir: Path, **streams: Any) -> Settings:
    return Settings(
        model_dir=model_dir,
        streams=StreamSettings(allow_file=True, default_max_fps=1, backoff_max_s=0.5, **streams),
    )


async def first_frame(client: httpx.AsyncClient, stream_id: str, timeout_s: float = 15.0) -> httpx.Response:
    """The first answer of frame.jpg that is not 503 no_frame (the camera opening)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/v1/streams/{stream_id}/frame.jpg")
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        assert response.json()["error"]["code"] == "no_frame" and response.headers["retry-after"] == "1"
        await asyncio.sleep(0.1)


def test_viewer_page(model_dir: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get("/viewer")

    response = asyncio.run(_run(Settings(model_dir=model_dir, preload=()), scenario))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<script>" in page and "window.poseserveViewer" in page
    assert "/v1/streams" in page and "frame.jpg" in page and "?token=" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def test_preview_is_off_by_default(model_dir: Path, video: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        created = await client.post("/v1/streams", json={"url": f"file://{video}"})
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        await asyncio.sleep(1.0)  # frames are being read: the refusal is not for want of a frame
        return {
            "off": await client.get(f"/v1/streams/{stream_id}/frame.jpg"),
            "unknown": await client.get("/v1/streams/nope/frame.jpg"),
        }

    out = asyncio.run(_run(settings_for(model_dir), scenario))
    assert out["off"].status_code == 403
    assert out["off"].json()["error"]["code"] == "preview_disabled"
    assert out["unknown"].status_code == 404 and out["unknown"].json()["error"]["code"] == "unknown_stream"


def test_preview_serves_the_latest_frame_at_a_low_rate(model_dir: Path, video: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> dict[str, Any]:
        created = await client.post("/v1/streams", json={"url": f"file://{video}"})
        dead = await client.post("/v1/streams", json={"url": DEAD_CAMERA})
        stream_id = created.json()["id"]
        first = await first_frame(client, stream_id)
        again = await client.get(f"/v1/streams/{stream_id}/frame.jpg")  # within 1 / preview_fps: the cached bytes
        await asyncio.sleep(2.5)
        later = await client.get(f"/v1/streams/{stream_id}/frame.jpg")  # a newer frame, encoded anew
        return {
            "first": first,
            "again": again,
            "later": later,
            "no_frame": await client.get(f"/v1/streams/{dead.json()['id']}/frame.jpg"),
            "unknown": await client.get("/v1/streams/nope/frame.jpg"),
        }

    out = asyncio.run(_run(settings_for(model_dir, preview_enabled=True, preview_fps=0.5), scenario))
    first = out["first"]
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/jpeg" and first.headers["cache-control"] == "no-store"
    image = cv2.imdecode(np.frombuffer(first.content, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (HEIGHT, WIDTH, 3)
    assert abs(float(image[200, 300, 0]) - 120) < 12  # the video's background (BGR), not a blank frame
    assert out["again"].content == first.content
    assert out["later"].status_code == 200 and out["later"].content != first.content
    assert out["no_frame"].status_code == 503 and out["no_frame"].json()["error"]["code"] == "no_frame"
    assert out["unknown"].status_code == 404 and out["unknown"].json()["error"]["code"] == "unknown_stream"


def test_a_skeleton_only_stream_has_no_preview(model_dir: Path, video: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        private = await client.post("/v1/streams", json={"url": f"file://{video}", "skeleton_only": True})
        public = await client.post("/v1/streams", json={"url": f"file://{video}", "name": "public"})
        assert private.status_code == public.status_code == 201, private.text
        await asyncio.sleep(1.0)
        return (
            await client.get(f"/v1/streams/{private.json()['id']}/frame.jpg"),
            await first_frame(client, public.json()["id"]),
        )

    private, public = asyncio.run(_run(settings_for(model_dir, preview_enabled=True), scenario))
    assert private.status_code == 403 and private.json()["error"]["code"] == "preview_disabled"
    assert "skeleton-only" in private.json()["error"]["message"]
    assert public.status_code == 200  # the preview itself is on


def test_preview_needs_the_streams_scope(model_dir: Path) -> None:
    settings = Settings(
        model_dir=model_dir,
        api_keys=("cams-key:streams", "pose-key:pose"),
        streams=StreamSettings(preview_enabled=True),
    )

    async def scenario(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        created = await client.post("/v1/streams", json={"url": DEAD_CAMERA}, headers=bearer("cams-key"))
        frame = f"/v1/streams/{created.json()['id']}/frame.jpg"
        return {
            "page": await client.get("/viewer"),
            "none": await client.get(frame),
            "pose": await client.get(frame, headers=bearer("pose-key")),
            "streams": await client.get(frame, headers=bearer("cams-key")),
        }

    out = asyncio.run(_run(settings, scenario))
    assert out["page"].status_code == 200  # the page holds no data; it calls the API with the user's key
    assert out["none"].status_code == 401 and out["none"].json()["error"]["code"] == "unauthorized"
    assert out["pose"].status_code == 403 and out["pose"].json()["error"]["code"] == "forbidden"
    assert out["streams"].status_code == 503 and out["streams"].json()["error"]["code"] == "no_frame"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _run(settings: Settings, scenario: Any) -> Any:
    async with client_for(settings) as client:
        return await scenario(client)
