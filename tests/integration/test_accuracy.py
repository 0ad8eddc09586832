"""Accuracy of the served default backend on real photos (pose_samples), scored by pycocotools."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from models.evaluation import coco_keypoint_results, evaluate_keypoints
from service.config import Settings
from tests.support import client_for, coco_samples

pytestmark = [pytest.mark.integration, pytest.mark.accuracy]


def test_movenet_multipose_keypoint_ap(model_dir: Path) -> None:
    root, coco = coco_samples()
    settings = Settings(model_dir=model_dir)

    async def scenario() -> list[dict]:
        results: list[dict] = []
        async with client_for(settings) as client:
            for image in coco["images"]:
                data = (root / image["file_name"]).read_bytes()
                r = await client.post("/v1/pose?min_score=0", content=data, headers={"content-type": "image/jpeg"})
                assert r.status_code == 200, r.text
                persons = r.json()["persons"]
                if persons:
                    kps = np.array([p["keypoints"] for p in persons], dtype=np.float64)
                    results += coco_keypoint_results(image["id"], kps, np.array([p["score"] for p in persons]))
        return results

    stats = evaluate_keypoints(coco, asyncio.run(scenario()))
    print(f"movenet-multipose@384 on pose_samples: {stats}")
    assert stats["AP"] >= 0.26, stats
