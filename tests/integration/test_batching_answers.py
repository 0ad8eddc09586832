"""A photo's answer does not depend on the photos batched with it (rows swapped inside a batch fail here).

Eight different real photos (pose_samples) are posted at once to the app in-process, with a max wait
long enough that they share batches; then each is posted alone (a batch of one). Each photo's two
answers must agree: people, boxes, keypoints. They were measured identical; the tolerances only
absorb the JSON rounding (0.01 px, 1e-4 score).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import BackendSettings, Settings
from tests.support import batches_larger_than_one, client_for, metric_samples

pytestmark = pytest.mark.integration

PHOTOS = 8
PX_TOL = 0.05
SCORE_TOL = 1e-3
BACKEND = "movenet-multipose"


def batch_count(metrics_text: str) -> int:
    """Batches run by the backend so far."""
    return int(
        sum(v for lb, v in metric_samples(metrics_text, "poseserve_batch_size_count") if lb.get("backend") == BACKEND)
    )


def as_arrays(persons: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) scores, (N, 4) xyxy boxes, (N, 17, 3) keypoints of one answer."""
    scores = np.array([p["score"] for p in persons], np.float64)
    boxes = np.array([p["bbox"] for p in persons], np.float64).reshape(-1, 4)
    keypoints = np.array([p["keypoints"] for p in persons], np.float64).reshape(-1, 17, 3)
    return scores, boxes, keypoints


def assert_same_persons(batched: list[dict[str, Any]], alone: list[dict[str, Any]], photo: str) -> None:
    (s_b, box_b, kp_b), (s_a, box_a, kp_a) = as_arrays(batched), as_arrays(alone)
    assert len(s_b) == len(s_a), f"{photo}: {len(s_b)} persons batched, {len(s_a)} alone"
    np.testing.assert_allclose(s_b, s_a, rtol=0, atol=SCORE_TOL, err_msg=f"{photo}: person scores")
    np.testing.assert_allclose(box_b, box_a, rtol=0, atol=PX_TOL, err_msg=f"{photo}: boxes")
    np.testing.assert_allclose(kp_b[..., :2], kp_a[..., :2], rtol=0, atol=PX_TOL, err_msg=f"{photo}: keypoints")
    np.testing.assert_allclose(kp_b[..., 2], kp_a[..., 2], rtol=0, atol=SCORE_TOL, err_msg=f"{photo}: kpt scores")


def test_batched_answers_equal_single_answers(model_dir: Path, pose_sample_images: list[Path]) -> None:
    # the JPEGs: the two PNGs are near-black low-light frames in which nobody is found
    photos = [p for p in pose_sample_images if p.suffix.lower() in {".jpg", ".jpeg"}][:PHOTOS]
    assert len(photos) == PHOTOS, f"need {PHOTOS} JPEG photos in pose_samples, found {len(photos)}"
    bodies = [p.read_bytes() for p in photos]
    settings = Settings(
        model_dir=model_dir,
        preload=(BACKEND,),
        # no queue-delay bound: a batch of 8 took 775 ms on a 2-core AMD EPYC, and the admission
        # bound (500 ms) then refused a photo; this test is about answers, not admission
        batching=BackendSettings(
            max_batch=PHOTOS, max_wait_ms=50, max_queue=32, intra_op_threads=2, max_queue_delay_ms=None
        ),
    )

    async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
        return await client.post(f"/v1/pose?backend={BACKEND}", content=body, headers={"content-type": "image/jpeg"})

    async def scenario() -> tuple[list[httpx.Response], str, list[httpx.Response], str]:
        async with client_for(settings) as client:
            together = list(await asyncio.gather(*(post(client, body) for body in bodies)))
            after_together = (await client.get("/metrics")).text
            alone = [await post(client, body) for body in bodies]
            after_alone = (await client.get("/metrics")).text
        return together, after_together, alone, after_alone

    together, after_together, alone, after_alone = asyncio.run(scenario())

    assert [r.status_code for r in together + alone] == [200] * (2 * PHOTOS), [r.text for r in together + alone]
    assert batches_larger_than_one(after_together, BACKEND) >= 1, "the concurrent requests never shared a batch"
    # each photo sent alone was a batch of one
    assert batch_count(after_alone) - batch_count(after_together) == PHOTOS
    assert batches_larger_than_one(after_alone, BACKEND) == batches_larger_than_one(after_together, BACKEND)

    answers_alone = [r.json()["persons"] for r in alone]
    assert all(answers_alone), "a photo without people cannot show a swapped row"
    assert len({json.dumps(a) for a in answers_alone}) == PHOTOS, "two photos gave the same answer"
    for photo, batched, single in zip(photos, together, alone, strict=True):
        assert batched.json()["image"] == single.json()["image"], photo.name
        assert_same_persons(batched.json()["persons"], single.json()["persons"], photo.name)
