"""30 training steps of SHaRPose on real person crops halve the loss (both stages' heatmap MSE,
lambda = 0 as in the paper's first 180 epochs), and the quality term then pulls Q towards OKS_gt.

Crops come from ``shared/data/pose_samples`` (never copied into the project). As for the other seed
networks (test_train_overfit.py) the network is built at half its served input size (128x96: 12
coarse patches, 6 refined) and overfits one fixed batch of two crops; the data, codec, loss,
network and optimiser path is the one full training uses. The default test runs a 4-layer, 128-wide
SHaRPose (the same code: both stages, EMA selection, shared ViT and decoder): the 12-layer Small
network from scratch (the paper starts from MAE weights) needs a lower learning rate and minutes on
two busy cores, so it runs as the slow test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.codecs.heatmap import HeatmapCodec
from models.losses.sharpose import QualityWeight, SHaRPoseLoss, heatmap_oks
from models.nets.sharpose import SHaRPose, SHaRPoseConfig, sharpose_s
from models.train.data import CocoCropDataset, stack_samples
from models.train.loop import train_step
from tests.support import require_pose_samples

pytestmark = [pytest.mark.integration, pytest.mark.train]

STEPS = 30
BATCH = 2
INPUT_HW = (128, 96)


def _overfit(model: SHaRPose, lr: float) -> None:
    torch.set_num_threads(2)
    root = require_pose_samples()
    dataset = CocoCropDataset(root / "person_keypoints.json", root, INPUT_HW, min_keypoints=8)
    batch = stack_samples([dataset[i] for i in range(BATCH)])
    assert batch["visible"].sum() >= 8 * BATCH
    h, w = INPUT_HW
    codec = HeatmapCodec((w, h), (w // 4, h // 4), sigma=2.0)
    encoded = [codec.encode(k, v) for k, v in zip(batch["keypoints"], batch["visible"], strict=True)]
    target, weights = (torch.from_numpy(np.stack(parts)) for parts in zip(*encoded, strict=True))
    keypoints, visible = torch.from_numpy(batch["keypoints"]), torch.from_numpy(batch["visible"])
    area = torch.full((BATCH,), h * w / 1.25**2)  # the person box inside the padded crop
    criterion = SHaRPoseLoss()  # the paper's schedule: lambda = 0 before epoch 180
    gaps: list[float] = []

    def loss_at(epoch: int):  # type: ignore[no-untyped-def]
        def loss_fn(out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
            oks = heatmap_oks(out[0], keypoints, visible, area)
            gaps.append(float((out[2].detach() - oks).abs().mean()))
            return criterion(out, target, weights, oks, epoch=epoch)

        return loss_fn

    assert model.cfg.num_coarse == 12 and model.cfg.num_refined == 6
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    images = torch.from_numpy(batch["images"])
    losses = [train_step(model, optimizer, images, loss_at(0), max_grad_norm=10.0) for _ in range(STEPS)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) <= 0.5 * losses[0], losses
    # the heads start near zero: halving means fitting both stages' Gaussians, not shrinking noise
    assert losses[0] < 1.5 * 2 * float((target**2).mean())
    # from epoch 180 on the quality term trains Q towards the coarse prediction's OKS
    gaps.clear()
    criterion.quality_weight = QualityWeight(value=1.0, start_epoch=180)
    for _ in range(10):
        train_step(model, optimizer, images, loss_at(180), max_grad_norm=10.0)
    assert np.mean(gaps[-5:]) < 0.9 * gaps[0], gaps


def test_small_sharpose_overfits() -> None:
    torch.manual_seed(0)
    _overfit(SHaRPose(SHaRPoseConfig(dim=128, alpha=0.5, input_hw=INPUT_HW, depth=4)), lr=1e-3)


@pytest.mark.slow
def test_sharpose_s_overfits() -> None:
    torch.manual_seed(0)
    _overfit(sharpose_s(INPUT_HW), lr=3e-4)
