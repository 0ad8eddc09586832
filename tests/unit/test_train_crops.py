"""Training crops are the serving crops: one geometry (``crop_box`` + ``CropBox.matrix``) cuts both."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.codecs.heatmap import HeatmapCodec
from models.pipelines.base import CropPose, normalize_imagenet
from models.pipelines.topdown import make_crops
from models.train.data import CocoCropDataset, CropAugment, box_affine
from models.transforms import crop_box

pytestmark = pytest.mark.unit

INPUT_HW = (256, 192)
BOX_XYWH = (130.5, 40.25, 90.0, 210.0)


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A one-person COCO file over a random 480 x 640 photo: (annotation file, RGB image, keypoints)."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    x, y, w, h = BOX_XYWH
    kps = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], axis=1)
    ann = {"id": 7, "image_id": 1, "bbox": list(BOX_XYWH), "keypoints": kps.reshape(-1).tolist(), "num_keypoints": 17}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "photo.png"}], "annotations": [ann]}))
    return path, rgb, kps


def test_training_crop_equals_the_serving_crop(coco: tuple[Path, np.ndarray, np.ndarray]) -> None:
    ann_file, rgb, kps = coco
    sample = CocoCropDataset(ann_file, ann_file.parent, INPUT_HW)[0]
    x, y, w, h = BOX_XYWH
    box_xyxy = np.array([[x, y, x + w, y + h]])

    crop_wh = (INPUT_HW[1], INPUT_HW[0])
    pose = CropPose("heatmaps", crop_wh, normalize_imagenet, HeatmapCodec(crop_wh, (48, 64)))  # as LE-HRNet serves
    rows, crops = make_crops(rgb, box_xyxy, pose, padding=1.25)
    np.testing.assert_array_equal(sample.image, rows[0])
    np.testing.assert_allclose(sample.keypoints, crops[0].to_crop(kps[:, :2]), atol=1e-4)
    np.testing.assert_allclose(sample.affine, crops[0].matrix(), atol=1e-5)


def test_rotation_and_scale_turn_about_the_crop_centre() -> None:
    region = crop_box(np.array([100.0, 50.0, 200.0, 350.0]), (192, 256))
    centre_px = np.array([region.center_xy[0] - 0.5, region.center_xy[1] - 0.5, 1.0])  # pixel-centre coords
    for rotation in (0.0, 30.0, -90.0):
        np.testing.assert_allclose(region.matrix(rotation) @ centre_px, [95.5, 127.5], atol=1e-9)
    assert np.array_equal(region.matrix(0.0), region.matrix())
    turned = box_affine((100.0, 50.0, 100.0, 300.0), (256, 192), rotation_deg=90.0)
    zoom = 192 / (300 * 0.75 * 1.25)  # the box grows to the crop's aspect (225 x 300), then by the padding
    np.testing.assert_allclose(turned[:, :2], [[0, zoom], [-zoom, 0]], atol=1e-9)


def test_flipped_training_sample_mirrors_the_crop_and_swaps_joints(coco: tuple[Path, np.ndarray, np.ndarray]) -> None:
    ann_file, _, _ = coco
    plain = CocoCropDataset(ann_file, ann_file.parent, INPUT_HW)[0]
    flipped = CocoCropDataset(ann_file, ann_file.parent, INPUT_HW, augment=CropAugment(0.0, (1.0, 1.0), 1.0))[0]
    np.testing.assert_array_equal(flipped.image, plain.image[:, :, ::-1])
    np.testing.assert_allclose(flipped.keypoints[1], [INPUT_HW[1] - 1 - plain.keypoints[2][0], plain.keypoints[2][1]])
