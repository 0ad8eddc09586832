"""ER-Pose keypoint-driven assignment (Sec. III-B, Algorithm 1) and the Task Alignment Error (Eq. 5).

For every ground-truth person g and every grid prediction p the assignment score is

    Score(p, g) = conf_p ** alpha * OKS(p, g) ** beta        (Eq. 1; alpha = 0.5, beta = 6)

with OKS as in COCO (Eq. 2): ``exp(-d_i^2 / (2 s^2 k_i^2))`` averaged over the visible keypoints
of g, s = sqrt(area of g's box), k_i = 2 * sigma_i with the COCO sigmas. The top-K predictions per
person become positives: K = 10 for the one-to-many head, K = 1 for the one-to-one head.

Choices the text leaves open (arguments of ``assign``):

* Candidates. Algorithm 1 scores every grid cell. Like YOLOv8's task-aligned assigner we keep only
  cells whose centre lies inside the person box (``center_in_box=True``), which stops far cells
  with tied, underflowed scores from being picked early in training; a person whose box holds no
  cell centre (smaller than a stride) falls back to all cells.
* A cell chosen by several persons goes to the one with the highest score (YOLOv8 convention).
* Scores are computed in float64 so OKS**6 of poor early predictions does not underflow to ties.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["COCO_SIGMAS", "assign", "oks_matrix", "task_alignment_error"]

COCO_SIGMAS: NDArray[np.float32] = (
    np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89])
    / 10.0
).astype(np.float32)


def oks_matrix(pred_xy: Tensor, gt_keypoints: Tensor, gt_areas: Tensor, sigmas: Tensor) -> Tensor:
    """Object keypoint similarity of every (person, prediction) pair.

    Args:
        pred_xy: ``(M, K, 2)`` predicted keypoints, pixels.
        gt_keypoints: ``(N, K, 3)`` ground truth x, y (pixels) and visibility v in {0, 1, 2}.
        gt_areas: ``(N,)`` box areas, pixels^2 (s^2 in Eq. 2).
        sigmas: ``(K,)`` per-keypoint sigmas (k_i = 2 * sigma_i).

    Returns:
        ``(N, M)`` OKS in [0, 1]; 0 for persons without visible keypoints.
    """
    d2 = (pred_xy[None] - gt_keypoints[:, None, :, :2]).pow(2).sum(-1)  # (N, M, K)
    k2 = (2.0 * sigmas).pow(2)
    e = d2 / (2.0 * gt_areas.clamp_min(1e-9)[:, None, None] * k2)
    visible = (gt_keypoints[..., 2] > 0).to(pred_xy.dtype)  # (N, K)
    return (torch.exp(-e) * visible[:, None]).sum(-1) / visible.sum(-1).clamp_min(1.0)[:, None]


@torch.no_grad()
def assign(
    conf_logits: Tensor,
    pred_xy: Tensor,
    anchor_xy: Tensor,
    gt_keypoints: Tensor,
    gt_boxes_xyxy: Tensor,
    *,
    topk: int,
    alpha: float = 0.5,
    beta: float = 6.0,
    sigmas: Tensor | None = None,
    center_in_box: bool = True,
) -> Tensor:
    """Per-person top-K assignment of one image's grid predictions (Algorithm 1).

    Args:
        conf_logits: ``(A,)`` person confidence logits of the head being assigned.
        pred_xy: ``(A, K, 2)`` that head's decoded keypoints, input pixels.
        anchor_xy: ``(A, 2)`` cell centres, input pixels.
        gt_keypoints: ``(N, K, 3)`` ground truth keypoints (pixels, visibility v).
        gt_boxes_xyxy: ``(N, 4)`` person boxes, pixels; s = sqrt(box area).
        topk: positives per person (10 one-to-many, 1 one-to-one).
        alpha, beta: exponents of confidence and OKS in the score.
        sigmas: ``(K,)``; COCO sigmas when None.
        center_in_box: restrict candidates to cells centred inside the person box.

    Returns:
        ``(A,)`` long: index of the person each anchor is a positive for, -1 for background.
    """
    num_anchors, num_gt = conf_logits.shape[0], gt_keypoints.shape[0]
    gt_index = torch.full((num_anchors,), -1, dtype=torch.long, device=conf_logits.device)
    if num_gt == 0 or num_anchors == 0:
        return gt_index
    dt = torch.float64
    sig = torch.from_numpy(COCO_SIGMAS) if sigmas is None else sigmas
    wh = (gt_boxes_xyxy[:, 2:] - gt_boxes_xyxy[:, :2]).clamp_min(0.0).to(dt)
    oks = oks_matrix(pred_xy.to(dt), gt_keypoints.to(dt), wh.prod(-1), sig.to(dt).to(conf_logits.device))
    score = torch.sigmoid(conf_logits.to(dt))[None].pow(alpha) * oks.pow(beta)  # (N, A)

    candidate = torch.ones_like(score, dtype=torch.bool)
    if center_in_box:
        inside = (anchor_xy[None] > gt_boxes_xyxy[:, None, :2]) & (anchor_xy[None] < gt_boxes_xyxy[:, None, 2:])
        inside = inside.all(-1)  # (N, A)
        candidate = torch.where(inside.any(-1, keepdim=True), inside, candidate)
    has_visible = (gt_keypoints[..., 2] > 0).any(-1, keepdim=True)
    candidate &= has_visible
    masked = torch.where(candidate, score, torch.full_like(score, -1.0))

    k = min(topk, num_anchors)
    top_score, top_idx = masked.topk(k, dim=1)  # (N, k)
    chosen = torch.zeros_like(candidate)
    chosen.scatter_(1, top_idx, top_score >= 0)
    best_score, best_gt = torch.where(chosen, score, torch.full_like(score, -1.0)).max(dim=0)
    return torch.where(best_score >= 0, best_gt, gt_index)


def task_alignment_error(
    gt_keypoints: NDArray[np.floating],
    gt_areas: NDArray[np.floating],
    pred_keypoints: NDArray[np.floating],
    selected: NDArray[np.integer],
    sigmas: NDArray[np.floating] = COCO_SIGMAS,
) -> float:
    """Task Alignment Error of one image (Eq. 5): OKS lost by the selected predictions against the
    OKS-optimal one-to-one matching (Eq. 4, Hungarian via ``scipy.optimize.linear_sum_assignment``).

    Args:
        gt_keypoints: ``(N, K, 3)`` ground truth (pixels, visibility).
        gt_areas: ``(N,)`` person scale s^2 (box area, pixels^2).
        pred_keypoints: ``(M, K, 2 or 3)`` candidate predictions, pixels (a score column is ignored).
        selected: ``(N,)`` index into the predictions of the positive actually selected for each
            person at inference; -1 where none was (counts OKS 0).
        sigmas: ``(K,)`` per-keypoint sigmas.

    Returns:
        TAE = sum_i OKS(g_i, optimal_i) - OKS(g_i, selected_i); 0 when the selection is
        OKS-optimal, >= 0 whenever ``selected`` is injective (as Eq. 4's mappings are). Persons
        left unmatched when M < N contribute OKS 0 on the optimal side.
    """
    num_gt = len(gt_keypoints)
    if num_gt == 0:
        return 0.0
    sim = oks_matrix(
        torch.as_tensor(np.asarray(pred_keypoints, dtype=np.float64)[..., :2]),
        torch.as_tensor(np.asarray(gt_keypoints, dtype=np.float64)),
        torch.as_tensor(np.asarray(gt_areas, dtype=np.float64)),
        torch.as_tensor(np.asarray(sigmas, dtype=np.float64)),
    ).numpy()
    optimal = np.zeros(num_gt)
    if sim.shape[1]:
        rows, cols = linear_sum_assignment(sim, maximize=True)
        optimal[rows] = sim[rows, cols]
    sel = np.asarray(selected, dtype=np.int64)
    chosen = np.where(sel >= 0, sim[np.arange(num_gt), np.clip(sel, 0, None)] if sim.shape[1] else 0.0, 0.0)
    return float((optimal - chosen).sum())
