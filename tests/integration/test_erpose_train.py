"""ER-Pose-n learns on the shared real photos: 30 steps on whole letterboxed images halve the loss.

One fixed batch of the first ``BATCH`` photos (16 persons) is fitted, which keeps the test to a
few seconds of CPU; cycling mini-batches over all 11 photos only reaches ~0.67x in 30 steps.
"""

from __future__ import annotations

import pytest
import torch

from models.losses.erpose import ERPoseLoss
from models.nets.erpose import erpose_n
from models.train.erpose_data import ERPoseDataset, collate
from tests.support import require_pose_samples, skip_unless_ci

pytestmark = [pytest.mark.integration, pytest.mark.train]

INPUT_SIZE = 320
STEPS = 30
BATCH = 4


def test_thirty_steps_halve_the_loss() -> None:
    root = require_pose_samples()
    ann = root / "person_keypoints.json"
    if not (root / "images").is_dir():
        skip_unless_ci(f"pose sample photos not found at {root / 'images'} (set POSESERVE_SHARED_DIR)")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dataset = ERPoseDataset(ann, root, INPUT_SIZE)
    assert len(dataset) > 0
    images, keypoints, boxes = collate([dataset[i] for i in range(min(BATCH, len(dataset)))])

    model = erpose_n(INPUT_SIZE).train()
    criterion = ERPoseLoss(INPUT_SIZE, model.strides)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    losses = []
    for _ in range(STEPS):
        loss, _parts = criterion(model(images), keypoints, boxes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
