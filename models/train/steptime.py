"""`poseserve bench train`: wall time of one training step per seed model on this machine.

A step here is what the training loop spends in the network: forward, a loss over every output,
backward, gradient clipping and the family's optimiser step (``PAPER``), on random batches at the
catalogue input size (or ``input_hw``) in the layout training uses (channels-last). Data loading is
left out: it runs in loader worker processes beside the step. The first step (allocations,
oneDNN kernel selection) is not counted. ``paper_hours`` scales the step time to the paper's
schedule on COCO train2017 (``COCO_TRAIN_PERSONS`` top-down samples, ``COCO_TRAIN_IMAGES`` images
for ER-Pose) at the paper's batch size: what a full run would take here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.export import SEED_MODELS, build
from models.train.trainer import PAPER, family

__all__ = ["COCO_TRAIN_IMAGES", "COCO_TRAIN_PERSONS", "step_times"]

COCO_TRAIN_PERSONS = 149_813
"""Person instances with keypoints in COCO train2017 (the top-down training samples)."""
COCO_TRAIN_IMAGES = 56_599
"""COCO train2017 images with at least one person with keypoints (bottom-up samples)."""


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [t for item in out for t in _outputs(item)]


def step_times(
    models: Sequence[str], *, batch: int, steps: int = 3, input_hw: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """One row per model: median seconds per step of ``steps`` timed steps at ``batch``."""
    rows = []
    for name in models:
        fam = family(name)
        hw = input_hw or SEED_MODELS[name].input_hw
        torch.manual_seed(0)
        net = build(name, hw).train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        paper = PAPER[fam]
        opt_cls = torch.optim.AdamW if paper["optimizer"] == "adamw" else torch.optim.Adam
        optimizer = opt_cls(net.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, *hw).contiguous(memory_format=torch.channels_last)
        times = []
        for _ in range(steps + 1):
            started = time.perf_counter()
            loss = sum(o.float().square().mean() for o in _outputs(net(x)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimizer.step()
            times.append(time.perf_counter() - started)
        per_step = statistics.median(times[1:])
        samples = COCO_TRAIN_IMAGES if fam == "erpose" else COCO_TRAIN_PERSONS
        per_image = per_step / batch
        rows.append(
            {
                "model": name,
                "input_hw": f"{hw[0]}x{hw[1]}",
                "batch": batch,
                "s_per_step": round(per_step, 3),
                "ms_per_image": round(per_image * 1000, 1),
                "paper_batch": paper["batch_size"],
                "paper_epochs": paper["epochs"],
                "paper_hours": round(per_image * samples * paper["epochs"] / 3600, 0),
            }
        )
    return rows
