"""A 30-step run on real person crops halves the loss, for amfacpose-r18 and lehrnet-w32.

Crops come from ``shared/data/pose_samples`` (COCO keypoints + images; never copied into the
project). To keep the run to seconds on two CPU cores the networks are built at half their served
input size and overfit one fixed batch of two crops; the data, codec, loss, network and optimiser
path is the one full training uses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.codecs.heatmap import HeatmapCodec
from models.codecs.simcc import SimCCCodec
from models.losses.heatmap import HeatmapMSELoss
from models.losses.simcc import KLDDiscretLoss
from models.nets.amfacpose import amfacpose_r18
from models.nets.lehrnet import lehrnet_w32
from models.train.data import CocoCropDataset, CropAugment, stack_samples
from models.train.loop import LossFn, train_step
from models.transforms import COCO_FLIP_PAIRS
from tests.support import require_pose_samples

pytestmark = [pytest.mark.integration, pytest.mark.train]

STEPS = 30
BATCH = 2


def _batch(input_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    root = require_pose_samples()
    dataset = CocoCropDataset(root / "person_keypoints.json", root, input_hw, min_keypoints=8)
    assert len(dataset) >= BATCH
    batch = stack_samples([dataset[i] for i in range(BATCH)])
    assert batch["images"].shape == (BATCH, 3, *input_hw)
    assert batch["visible"].sum() >= 8 * BATCH
    return batch


def _overfit(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, loss_fn: LossFn
) -> list[float]:
    return [train_step(model, optimizer, images, loss_fn, max_grad_norm=10.0) for _ in range(STEPS)]


def _assert_halved(losses: list[float]) -> None:
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) <= 0.5 * losses[0], losses


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


def test_amfacpose_r18_overfits() -> None:
    input_hw = (128, 128)
    batch = _batch(input_hw)
    codec = SimCCCodec((input_hw[1], input_hw[0]), split_ratio=2.0)
    encoded = [codec.encode(k, v) for k, v in zip(batch["keypoints"], batch["visible"], strict=True)]
    target_x, target_y, weights = (torch.from_numpy(np.stack(parts)) for parts in zip(*encoded, strict=True))
    criterion = KLDDiscretLoss()

    def loss_fn(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return criterion(out[0], out[1], target_x, target_y, weights)

    model = amfacpose_r18(input_hw)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    _assert_halved(_overfit(model, optimizer, torch.from_numpy(batch["images"]), loss_fn))


def test_lehrnet_w32_overfits() -> None:
    input_hw = (128, 96)
    batch = _batch(input_hw)
    codec = HeatmapCodec((input_hw[1], input_hw[0]), (input_hw[1] // 4, input_hw[0] // 4), sigma=2.0)
    encoded = [codec.encode(k, v) for k, v in zip(batch["keypoints"], batch["visible"], strict=True)]
    target, weights = (torch.from_numpy(np.stack(parts)) for parts in zip(*encoded, strict=True))
    criterion = HeatmapMSELoss()
    loss_fn: Callable[[torch.Tensor], torch.Tensor] = lambda out: criterion(out, target, weights)  # noqa: E731

    model = lehrnet_w32(input_hw)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = _overfit(model, optimizer, torch.from_numpy(batch["images"]), loss_fn)
    _assert_halved(losses)
    # The head starts near zero, so halving means fitting the Gaussians, not shrinking init noise.
    assert losses[0] < 2 * float((target**2).mean())


def test_crops_carry_keypoints_with_the_pixels(tmp_path: Path) -> None:
    """Scale / rotation / flip augmentation moves keypoints exactly as it moves the image."""
    image = np.zeros((240, 320, 3), np.uint8)
    grid = np.stack(np.meshgrid(np.arange(115, 215, 25), np.arange(50, 200, 30)), axis=-1).reshape(-1, 2)
    xy = grid[:17].astype(np.float64)
    for k, (x, y) in enumerate(xy):  # joint k painted with red level 50 + 10 k (BGR image)
        cv2.circle(image, (int(x), int(y)), 6, (0, 0, 50 + 10 * k), -1)
    cv2.imwrite(str(tmp_path / "img.png"), image)
    keypoints = np.concatenate([xy, np.full((17, 1), 2.0)], axis=1).ravel().tolist()
    annotation = {"id": 7, "image_id": 1, "bbox": [100, 40, 120, 160], "keypoints": keypoints}
    annotation |= {"num_keypoints": 17, "iscrowd": 0}
    coco = {"images": [{"id": 1, "file_name": "img.png", "width": 320, "height": 240}], "annotations": [annotation]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    augment = CropAugment(rotation_deg=30.0, scale_range=(0.8, 1.2), flip_prob=0.5)
    dataset = CocoCropDataset(tmp_path / "ann.json", tmp_path, (128, 96), augment=augment, seed=3)
    mirror = dict(COCO_FLIP_PAIRS) | {b: a for a, b in COCO_FLIP_PAIRS}
    seen_flip = set()
    for _ in range(8):
        sample = dataset[0]
        flipped = bool(np.linalg.det(sample.affine[:, :2]) < 0)
        seen_flip.add(flipped)
        red = sample.image[0] * 58.395 + 123.675  # undo the normalisation of the R channel
        assert sample.visible.sum() >= 12
        for k, (x, y) in enumerate(sample.keypoints):
            if sample.visible[k]:
                source = mirror.get(k, k) if flipped else k
                assert abs(red[round(float(y)), round(float(x))] - (50 + 10 * source)) < 4, (k, flipped)
    assert seen_flip == {False, True}
