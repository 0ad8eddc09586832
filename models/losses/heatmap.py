"""Heatmap MSE loss (LE-HRNet Eq. 1, HRNet's JointsMSELoss), weighted per joint."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["HeatmapMSELoss"]


class HeatmapMSELoss(nn.Module):
    """Mean over batch, joints and pixels of ``w_nk * (pred - target)^2``.

    Args:
        joint_weights: optional ``(K,)`` static per-joint weights.
    """

    joint_weights: torch.Tensor | None

    def __init__(self, joint_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        jw = torch.as_tensor(joint_weights, dtype=torch.float32) if joint_weights is not None else None
        self.register_buffer("joint_weights", jw, persistent=False)

    def forward(self, heatmaps: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Scalar loss.

        Args:
            heatmaps: ``(N, K, h, w)`` network output.
            target: ``(N, K, h, w)`` codec targets.
            weights: ``(N, K)`` visibility weights from the codec (0 drops a joint).
        """
        w = weights.float()
        if self.joint_weights is not None:
            w = w * self.joint_weights
        per_joint = (heatmaps.float() - target).pow(2).mean(dim=(2, 3))
        return (per_joint * w).mean()
