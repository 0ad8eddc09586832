"""Accuracy of the served backends on real photos (pose_samples), scored by pycocotools.

Each backend is asked over HTTP (the app in-process, real workers), exactly as a user would.
Floors sit just under what was measured (README, Accuracy).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.evaluation import coco_keypoint_results, evaluate_keypoints
from service.config import Settings
from tests.support import client_for, coco_samples

pytestmark = [pytest.mark.integration, pytest.mark.accuracy]


def api_results(settings: Settings, backend: str) -> list[dict[str, Any]]:
    """COCO results of every pose_samples photo as ``POST /v1/pose?backend=`` answers it."""
    root, coco = coco_samples()

    async def scenario() -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        async with client_for(settings) as client:
            for image in coco["images"]:
                data = (root / image["file_name"]).read_bytes()
                content_type = "image/png" if image["file_name"].endswith(".png") else "image/jpeg"
                r = await client.post(
                    f"/v1/pose?min_score=0&backend={backend}", content=data, headers={"content-type": content_type}
                )
                assert r.status_code == 200, r.text
                persons = r.json()["persons"]
                if persons:
                    kps = np.array([p["keypoints"] for p in persons], dtype=np.float64)
                    results += coco_keypoint_results(image["id"], kps, np.array([p["score"] for p in persons]))
        return results

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("backend", "floor"),
    [("movenet-multipose", 0.26), ("topdown-movenet", 0.33), ("topdown-blazepose", 0.13)],
)
def test_keypoint_ap(model_dir: Path, topdown_models: Path, backend: str, floor: float) -> None:
    _, coco = coco_samples()
    assert coco["images"], "no images in pose_samples/person_keypoints.json"
    stats = evaluate_keypoints(coco, api_results(Settings(model_dir=model_dir, preload=()), backend))
    print(f"{backend} on pose_samples: {stats}")
    assert stats["AP"] >= floor, stats
