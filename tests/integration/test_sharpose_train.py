"""30 training steps of SHaRPose-Small on real person crops halve the loss (both stages' heatmap
MSE + lambda * |Q - OKS_gt|).

Crops come from ``shared/data/pose_samples`` (never copied into the project). As for the other seed
networks (test_train_overfit.py), the network is built at half its served input size (128x96: 12
coarse patches, 6 refined) and overfits one fixed batch of two crops; the data, codec, loss,
network and optimiser path is the one full training uses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.codecs.heatmap import HeatmapCodec
from models.losses.sharpose import QualityWeight, SHaRPoseLoss, heatmap_oks
from models.nets.sharpose import sharpose_s
from models.train.data import CocoCropDataset, stack_samples
from models.train.loop import train_step
from tests.support import require_pose_samples

pytestmark = [pytest.mark.integration, pytest.mark.train]

STEPS = 30
BATCH = 2
INPUT_HW = (128, 96)


def test_sharpose_s_overfits() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
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
    criterion = SHaRPoseLoss(QualityWeight(value=0.03, start_epoch=0))  # the quality term from the start
    seen_oks: list[float] = []

    def loss_fn(out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        oks = heatmap_oks(out[0], keypoints, visible, area)
        seen_oks.append(float(oks.mean()))
        return criterion(out, target, weights, oks, epoch=0)

    model = sharpose_s(INPUT_HW)
    assert model.cfg.num_coarse == 12 and model.cfg.num_refined == 6
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    images = torch.from_numpy(batch["images"])
    losses = [train_step(model, optimizer, images, loss_fn, max_grad_norm=10.0) for _ in range(STEPS)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) <= 0.5 * losses[0], losses
    # the heads start near zero: halving means fitting the Gaussians of both stages, not shrinking noise
    assert losses[0] < 2 * 2 * float((target**2).mean()) + 0.03
    assert seen_oks[-1] > seen_oks[0], seen_oks
