"""SHaRPose training loss (Sec. 3.4): heatmap MSE on both stages + lambda * |Q - OKS_gt|.

    L = L_heatmap + lambda(epoch) * L_qp                                   (Eq. 9)
    L_heatmap = MSE(H_coarse, H_gt) + MSE(H_fine, H_gt), mean over joints  (Eq. 10)
    L_qp = |Q - OKS_gt|, OKS_gt the coarse prediction's OKS to the labels  (Eq. 11)

``OKS_gt`` is a target (no gradient): the coarse heatmaps' argmax keypoints against the labelled
ones, with COCO's per-keypoint sigmas and the person's area. The paper trains with lambda = 0 for
180 of 210 epochs, then 0.03 (``QualityWeight``'s defaults); any ``epoch -> lambda`` works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.losses.heatmap import HeatmapMSELoss
from models.train.assign import COCO_SIGMAS

__all__ = ["QualityWeight", "SHaRPoseLoss", "heatmap_oks"]


@dataclass(frozen=True)
class QualityWeight:
    """lambda(epoch): 0 before ``start_epoch``, ``value`` from it on."""

    value: float = 0.03
    start_epoch: int = 180

    def __call__(self, epoch: int) -> float:
        return self.value if epoch >= self.start_epoch else 0.0


def heatmap_oks(heatmaps: Tensor, keypoints: Tensor, visible: Tensor, area: Tensor, stride: float = 4.0) -> Tensor:
    """OKS ``(N,)`` of the heatmaps' argmax keypoints against ``keypoints (N, K, 2)`` (input pixels).

    ``visible (N, K)`` selects the labelled keypoints (a person without any gets 0); ``area (N,)``
    is the person's area in input pixels squared. No gradient.
    """
    with torch.no_grad():
        n, k, _, w = heatmaps.shape
        idx = heatmaps.reshape(n, k, -1).argmax(dim=-1)
        xy = torch.stack([idx % w, idx // w], dim=-1).to(keypoints.dtype) * stride
        d2 = ((xy - keypoints) ** 2).sum(-1)
        sigmas = torch.as_tensor(COCO_SIGMAS, dtype=keypoints.dtype, device=keypoints.device)
        e = d2 / (2 * area[:, None].clamp_min(1.0) * (2 * sigmas) ** 2)
        vis = (visible > 0).to(keypoints.dtype)
        return (torch.exp(-e) * vis).sum(-1) / vis.sum(-1).clamp_min(1.0)


class SHaRPoseLoss(nn.Module):
    """``forward((coarse, fine, quality), target, weights, oks_gt, epoch)`` -> scalar loss.

    Args:
        quality_weight: ``epoch -> lambda`` (default: the paper's schedule).
    """

    def __init__(self, quality_weight: Callable[[int], float] = QualityWeight()) -> None:
        super().__init__()
        self.quality_weight = quality_weight
        self.mse = HeatmapMSELoss()

    def forward(
        self,
        outputs: tuple[Tensor, Tensor, Tensor],
        target: Tensor,
        weights: Tensor,
        oks_gt: Tensor,
        epoch: int = 0,
    ) -> Tensor:
        coarse, fine, quality = outputs
        loss = self.mse(coarse, target, weights) + self.mse(fine, target, weights)
        lam = self.quality_weight(epoch)
        if lam:
            loss = loss + lam * (quality - oks_gt.detach()).abs().mean()
        return loss
