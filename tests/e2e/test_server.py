"""A real `poseserve serve` (uvicorn) subprocess on an ephemeral loopback port."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.support import (
    assert_clean_log,
    bad_inputs,
    batches_larger_than_one,
    four_person_grid,
    iou,
    running_server,
    sample_jpeg,
)

pytestmark = pytest.mark.e2e

MAX_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        "POSESERVE_MAX_IMAGE_BYTES": str(MAX_BYTES),
        "POSESERVE_BATCHING__MAX_WAIT_MS": "20",
        "POSESERVE_BATCHING__INTRA_OP_THREADS": "2",
        # these tests check answers and batching, not admission: no request is refused for its queue wait
        "POSESERVE_BATCHING__MAX_QUEUE_DELAY_MS": "30000",
    }
    with running_server(model_dir, log, **env) as (url, _):
        yield url
    assert_clean_log(log)


@pytest.mark.parametrize("backend", ["movenet-multipose", "topdown-movenet"])
def test_bad_inputs_then_still_ready(server: str, topdown_models: Path, backend: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for bad in bad_inputs(MAX_BYTES):
            query = bad.query or f"backend={backend}"
            url = f"/v1/pose?{query}"
            if bad.multipart:
                r = client.post(url, files={"file": ("x.jpg", bad.body, "image/jpeg")})
            else:
                r = client.post(
                    url,
                    content=bad.body,
                    headers={"content-type": bad.content_type} if bad.content_type else {},
                )
            assert r.status_code == bad.status, f"{bad.name}: {r.status_code} {r.text}"
            assert r.json()["error"]["code"] == bad.code, bad.name
            assert client.get("/readyz").status_code == 200, f"not ready after {bad.name}"


def test_sixteen_concurrent_requests_batch_together(server: str) -> None:
    image = sample_jpeg()

    def one(_: int) -> int:
        return httpx.post(
            f"{server}/v1/pose", content=image, headers={"content-type": "image/jpeg"}, timeout=60
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes == [200] * 16
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    assert batches_larger_than_one(metrics) >= 1
    for name in (
        "poseserve_queue_wait_seconds_count",
        "poseserve_inference_seconds_count",
        "poseserve_request_seconds_count",
    ):
        assert name in metrics


def test_curl_multipart_like_the_readme(server: str) -> None:
    r = httpx.post(f"{server}/v1/pose", files={"image": ("person.jpg", sample_jpeg(), "image/jpeg")}, timeout=30)
    assert r.status_code == 200
    persons = r.json()["persons"]
    assert len(persons) >= 2 and all(len(p["keypoints"]) == 17 for p in persons)


def test_topdown_four_people(server: str, topdown_models: Path) -> None:
    grid, people = four_person_grid()
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    r = httpx.post(
        f"{server}/v1/pose?backend=topdown-movenet",
        content=jpeg.tobytes(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    persons = r.json()["persons"]
    boxes = np.array([p["bbox"] for p in persons], np.float32).reshape(-1, 4)
    overlap = iou(people, boxes)
    # each of the 4 people is found exactly once, and they are the 4 best-scoring persons
    assert ((overlap >= 0.5).sum(axis=1) == 1).all(), overlap.round(2)
    assert sorted(overlap.argmax(axis=1).tolist()) == [0, 1, 2, 3]
    assert all(len(p["keypoints"]) == 17 for p in persons)
