"""ER-Pose training loss (Sec. III-C): Smooth-OKS pose loss, visibility and confidence BCE.

For a positive cell of person g with box area s^2, keypoint i at distance d_i (pixels) from its
target has u_i = d_i / (s * k_i), k_i = 2 * sigma_i (COCO), and

    SOKS(u) = exp(-u^2 / 2)        u <= 1      (Gaussian, = the OKS term)
              exp(-(u - 1/2))      u > 1       (Laplace tail; value and slope match at u = 1)
    L_pose  = 1 - mean over visible keypoints of SOKS(u_i)

L_vis is BCE-with-logits between the visibility logits and (v_i > 0) on positive cells; L_conf is
BCE-with-logits between every cell's confidence logit and 1 (positive) / 0 (background). Per head
L = 15 L_pose + 1 L_vis + 1 L_conf, and the total sums the one-to-many (top-10) and one-to-one
(top-1) heads, each assigned on its own predictions by ``models.train.assign.assign``.

Normalisation (the text is silent; YOLOv8-Pose conventions): L_pose averages over positive cells
that have visible keypoints, L_vis over positive cells x keypoints, and L_conf sums over all cells
and divides by the number of positives (so background cells do not swamp the few positives).
Keypoint predictions are decoded with the codec convention (``models.codecs.erpose``):
pixels = (cell centre + offset) * stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.codecs.erpose import anchor_grid
from models.train.assign import COCO_SIGMAS, assign

__all__ = ["ERPoseLoss", "ERPoseLossConfig", "smooth_oks"]


def smooth_oks(u: Tensor) -> Tensor:
    """SOKS(u) for normalised errors ``u >= 0`` (any shape); C1-continuous at u = 1."""
    return torch.where(u <= 1.0, torch.exp(-0.5 * u.pow(2)), torch.exp(0.5 - u))


@dataclass(frozen=True)
class ERPoseLossConfig:
    """Loss weights (pose:vis:conf = 15:1:1) and assignment settings per head."""

    pose_weight: float = 15.0
    vis_weight: float = 1.0
    conf_weight: float = 1.0
    topk_one_to_many: int = 10
    topk_one_to_one: int = 1
    alpha: float = 0.5
    beta: float = 6.0
    center_in_box: bool = True


class ERPoseLoss(nn.Module):
    """Assigns and scores both heads of ``models.nets.erpose.ERPose`` for a batch.

    Args:
        input_size: square network input side, pixels.
        strides: head-level strides, finest first (``ERPoseConfig.strides``).
        config: weights and assignment settings.
    """

    points: Tensor
    anchor_strides: Tensor
    sigmas: Tensor

    def __init__(self, input_size: int, strides: Sequence[int], config: ERPoseLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or ERPoseLossConfig()
        points, anchor_strides = anchor_grid(input_size, strides)
        self.register_buffer("points", torch.from_numpy(points), persistent=False)
        self.register_buffer("anchor_strides", torch.from_numpy(anchor_strides), persistent=False)
        self.register_buffer("sigmas", torch.from_numpy(COCO_SIGMAS), persistent=False)

    def forward(
        self, outputs: tuple[Tensor, Tensor], gt_keypoints: list[Tensor], gt_boxes_xyxy: list[Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its parts.

        Args:
            outputs: ``(one_to_many, one_to_one)`` raw head outputs, each ``(B, A, 1 + 3K)``.
            gt_keypoints: per image ``(N_b, K, 3)``: x, y in input pixels, visibility v in {0, 1, 2}.
            gt_boxes_xyxy: per image ``(N_b, 4)`` person boxes in input pixels.

        Returns:
            scalar total loss, and detached parts ``{"<head>/pose", "<head>/vis", "<head>/conf"}``.
        """
        cfg = self.config
        total = outputs[0].new_zeros(())
        parts: dict[str, Tensor] = {}
        for name, raw, topk in (
            ("one_to_many", outputs[0], cfg.topk_one_to_many),
            ("one_to_one", outputs[1], cfg.topk_one_to_one),
        ):
            pose, vis, conf = self._head_loss(raw, gt_keypoints, gt_boxes_xyxy, topk)
            total = total + cfg.pose_weight * pose + cfg.vis_weight * vis + cfg.conf_weight * conf
            parts.update({f"{name}/pose": pose.detach(), f"{name}/vis": vis.detach(), f"{name}/conf": conf.detach()})
        return total, parts

    def decode_xy(self, raw: Tensor) -> Tensor:
        """``(..., A, 1 + 3K)`` raw -> ``(..., A, K, 2)`` keypoints in input pixels."""
        k = (raw.shape[-1] - 1) // 3
        offsets = raw[..., 1 : 1 + 2 * k].unflatten(-1, (k, 2))
        return (self.points[:, None, :] + offsets) * self.anchor_strides[:, None, None]

    def _head_loss(
        self, raw: Tensor, gt_keypoints: list[Tensor], gt_boxes_xyxy: list[Tensor], topk: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.config
        k = (raw.shape[-1] - 1) // 3
        pred_xy = self.decode_xy(raw)  # (B, A, K, 2)
        anchor_xy = self.points * self.anchor_strides[:, None]
        conf_target = torch.zeros_like(raw[..., 0])
        pose_sum, vis_sum = raw.new_zeros(()), raw.new_zeros(())
        n_pose, n_pos = 0, 0
        for b, (kpts, boxes) in enumerate(zip(gt_keypoints, gt_boxes_xyxy, strict=True)):
            gt_idx = assign(
                raw[b, :, 0].detach(),
                pred_xy[b].detach(),
                anchor_xy,
                kpts,
                boxes,
                topk=topk,
                alpha=cfg.alpha,
                beta=cfg.beta,
                sigmas=self.sigmas,
                center_in_box=cfg.center_in_box,
            )
            pos = torch.nonzero(gt_idx >= 0).squeeze(1)
            if pos.numel() == 0:
                continue
            conf_target[b, pos] = 1.0
            tgt = kpts[gt_idx[pos]]  # (P, K, 3)
            box = boxes[gt_idx[pos]]
            scale = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).clamp_min(1.0).sqrt()  # s, pixels
            d = ((pred_xy[b, pos] - tgt[..., :2]).pow(2).sum(-1) + 1e-9).sqrt()  # (P, K) pixels
            u = d / (scale[:, None] * 2.0 * self.sigmas)
            visible = (tgt[..., 2] > 0).to(raw.dtype)
            n_visible = visible.sum(-1)
            has_visible = n_visible > 0
            per_person = 1.0 - (smooth_oks(u) * visible).sum(-1) / n_visible.clamp_min(1.0)
            pose_sum = pose_sum + per_person[has_visible].sum()
            n_pose += int(has_visible.sum())
            vis_logits = raw[b, pos, 1 + 2 * k :]
            vis_sum = vis_sum + F.binary_cross_entropy_with_logits(vis_logits, visible, reduction="sum")
            n_pos += pos.numel()
        conf = F.binary_cross_entropy_with_logits(raw[..., 0], conf_target, reduction="sum") / max(n_pos, 1)
        return pose_sum / max(n_pose, 1), vis_sum / max(n_pos * k, 1), conf
