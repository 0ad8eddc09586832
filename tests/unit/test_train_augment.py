"""Augmented training samples keep every keypoint on its pixels (within 1 px) and swap left / right
joints when they mirror the image: top-down crops (scale, rotation, flip, half-body) and bottom-up
ER-Pose samples (Mosaic, scale, shift, flip)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.persons import COCO_FLIP_PAIRS
from models.train.data import CocoCropDataset, CropAugment
from models.train.erpose_data import ERPoseAugment, ERPoseDataset

pytestmark = pytest.mark.unit

MIRROR = dict(COCO_FLIP_PAIRS) | {b: a for a, b in COCO_FLIP_PAIRS}


def _green(k: int) -> int:
    return 20 + 13 * k


@pytest.fixture
def dots(tmp_path: Path) -> Path:
    """A black 400 x 320 photo with joint k painted as a disc of red 255 and green ``_green(k)``."""
    image = np.zeros((400, 320, 3), np.uint8)
    xs, ys = np.meshgrid(np.arange(70, 260, 40), np.arange(80, 330, 45))
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1)[:17].astype(np.float64)
    for k, (x, y) in enumerate(xy):
        cv2.circle(image, (int(x), int(y)), 5, (0, _green(k), 255), -1)  # BGR
    cv2.imwrite(str(tmp_path / "dots.png"), image)
    kps = np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)
    ann = {"id": 1, "image_id": 1, "bbox": [50.0, 60.0, 230.0, 290.0], "keypoints": kps.ravel().tolist()}
    ann |= {"num_keypoints": 17, "iscrowd": 0, "area": 230.0 * 290.0, "category_id": 1}
    coco = {
        "images": [{"id": 1, "file_name": "dots.png", "width": 320, "height": 400}],
        "annotations": [ann],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path


def _check_on_pixels(rgb: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, flipped: bool) -> int:
    """Every visible joint: the red disc's centroid lies within 1 px and its green names the joint."""
    red, green = rgb[..., 0].astype(np.float64), rgb[..., 1].astype(np.float64)
    h, w = red.shape
    checked = 0
    for k, (x, y) in enumerate(keypoints):
        if not visible[k]:
            continue
        cx, cy = round(float(x)), round(float(y))
        if not (6 <= cx < w - 6 and 6 <= cy < h - 6):  # a disc cut by the edge has a shifted centroid
            continue
        x1, x2, y1, y2 = cx - 5, cx + 6, cy - 5, cy + 6
        window = red[y1:y2, x1:x2] * (red[y1:y2, x1:x2] > 60)
        gy, gx = np.mgrid[y1:y2, x1:x2]
        centroid = np.array([(gx * window).sum(), (gy * window).sum()]) / window.sum()
        assert np.linalg.norm(centroid - [x, y]) <= 1.0, (k, centroid, (x, y))
        source = MIRROR.get(k, k) if flipped else k
        assert abs(green[cy, cx] - _green(source)) <= 6, (k, flipped, green[cy, cx])
        checked += 1
    return checked


def _unnormalise(chw: np.ndarray) -> np.ndarray:
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    return (chw.transpose(1, 2, 0) * std + mean).clip(0, 255)


def test_top_down_crops_keep_keypoints_on_their_pixels(dots: Path) -> None:
    augment = CropAugment(rotation_deg=45.0, scale_range=(0.65, 1.35), flip_prob=0.5, half_body_prob=0.3)
    dataset = CocoCropDataset(dots / "ann.json", dots, (192, 144), augment=augment, seed=5)
    flips, checked = set(), 0
    for _ in range(24):
        sample = dataset[0]
        flipped = bool(np.linalg.det(sample.affine[:, :2]) < 0)
        flips.add(flipped)
        checked += _check_on_pixels(_unnormalise(sample.image), sample.keypoints, sample.visible, flipped)
    assert flips == {False, True}
    assert checked >= 24 * 6


def test_flip_alone_mirrors_and_swaps(dots: Path) -> None:
    plain = CocoCropDataset(dots / "ann.json", dots, (192, 144))[0]
    flipped = CocoCropDataset(dots / "ann.json", dots, (192, 144), augment=CropAugment(0.0, (1.0, 1.0), 1.0))[0]
    for left, right in COCO_FLIP_PAIRS:
        mirrored = [143 - plain.keypoints[right][0], plain.keypoints[right][1]]
        np.testing.assert_allclose(flipped.keypoints[left], mirrored)
    assert _check_on_pixels(_unnormalise(flipped.image), flipped.keypoints, flipped.visible, True) == 17


@pytest.mark.parametrize("mosaic_prob", [0.0, 1.0])
def test_bottom_up_samples_keep_keypoints_on_their_pixels(dots: Path, mosaic_prob: float) -> None:
    augment = ERPoseAugment(mosaic_prob=mosaic_prob, scale_range=(0.7, 1.3), flip_prob=0.5, hsv_gain=(0, 0, 0))
    dataset = ERPoseDataset(dots / "ann.json", dots, 320, augment=augment, seed=2)
    checked = 0
    for _ in range(12):
        flip_state = dataset._rng.bit_generator.state
        image, keypoints, boxes = (t.numpy() for t in dataset[0])
        rgb = image.transpose(1, 2, 0) * 255.0
        assert image.shape == (3, 320, 320) and boxes.shape == (len(keypoints), 4)
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 320
        for person in keypoints:
            vis = person[:, 2] > 0
            # flipped iff more joints carry their mirror joint's colour than their own
            votes = 0
            for k in np.flatnonzero(vis & np.isin(np.arange(17), list(MIRROR))):
                x, y = np.clip(np.round(person[k, :2]).astype(int), 0, 319)
                votes += int(abs(rgb[y, x, 1] - _green(MIRROR[k])) <= 6) - int(abs(rgb[y, x, 1] - _green(k)) <= 6)
            flipped = votes > 0
            checked += _check_on_pixels(rgb, person[:, :2], vis, flipped)
        assert flip_state != dataset._rng.bit_generator.state
    assert checked >= 12 * 6
