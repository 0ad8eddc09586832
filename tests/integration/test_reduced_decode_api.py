"""POST /v1/pose with a large JPEG: decoded reduced (`jpeg_decode_scale`), answered in full-size pixels.

The app in-process with the real movenet-multipose model, once with the default scale (a 1920x1080
photo is decoded at 960x540 for the 384 input) and once decoding at full size: same image size in
the answer, the same people at nearly the same keypoints.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from service.config import Settings
from tests.support import client_for, coco_samples

pytestmark = pytest.mark.integration


def large_photo() -> bytes:
    root, coco = coco_samples()
    image = next(i for i in coco["images"] if (i["width"], i["height"]) == (1920, 1080))
    return (root / image["file_name"]).read_bytes()


def answer(settings: Settings, data: bytes) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        async with client_for(settings) as client:
            r = await client.post("/v1/pose?min_score=0.2", content=data, headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            return dict(r.json())

    return asyncio.run(scenario())


def test_a_large_jpeg_decoded_reduced_gives_full_size_keypoints(model_dir: Path) -> None:
    data = large_photo()
    reduced = answer(Settings(model_dir=model_dir, preload=()), data)
    full = answer(Settings(model_dir=model_dir, preload=(), jpeg_decode_scale=0), data)
    assert reduced["image"] == full["image"] == {"width": 1920, "height": 1080}
    assert full["persons"] and len(reduced["persons"]) == len(full["persons"])
    for a, b in zip(reduced["persons"], full["persons"], strict=True):
        ka, kb = np.array(a["keypoints"]), np.array(b["keypoints"])
        seen = (ka[:, 2] > 0.3) & (kb[:, 2] > 0.3)
        height = b["bbox"][3] - b["bbox"][1]
        assert seen.sum() >= 5
        # the same person: keypoints within a few percent of the person's height
        assert np.median(np.linalg.norm(ka[seen, :2] - kb[seen, :2], axis=1)) < 0.03 * height, (a, b)
        assert abs(a["score"] - b["score"]) < 0.1
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2).shape[:2] == (540, 960)
