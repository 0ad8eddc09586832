"""ER-Pose codec (numpy only): anchor tables, offset encode for training targets, NMS-free decode.

Convention, shared by training targets and inference (``models.nets.erpose`` documents the raw
layout ``(A, 1 + 2K + K)``: confidence logit, interleaved offsets, visibility logits):

* Anchors: for each head level of stride ``s`` (finest first) and each cell (x, y) in row-major
  order, the grid point is the cell centre ``(x + 0.5, y + 0.5)`` in grid units.
* Keypoint in input pixels = (grid point + offset) * stride, i.e. offsets are in grid units of
  their own level; ``encode_offsets`` is the exact inverse used to build regression targets.
* Person score = sigmoid(confidence logit); keypoint score = sigmoid(visibility logit).
* Only the one-to-one head is decoded: a threshold on the person score, no NMS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from models.codecs.base import Decoded

__all__ = ["ERPoseCodec", "anchor_grid", "decode", "decode_offsets", "encode_offsets", "sigmoid"]

FloatArray = NDArray[np.float32]


def sigmoid(x: NDArray[np.floating]) -> FloatArray:
    """Numerically stable logistic function, float32 out."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))).astype(np.float32)


def anchor_grid(input_size: int, strides: Sequence[int]) -> tuple[FloatArray, FloatArray]:
    """Per-anchor grid points and strides in the network's anchor order.

    Args:
        input_size: square network input side, pixels (a multiple of every stride).
        strides: head-level strides in pixels, finest first, e.g. ``(16, 32)``.

    Returns:
        points ``(A, 2)``: cell centres (x + 0.5, y + 0.5) in grid units of their level;
        strides ``(A,)``: the stride of each anchor in pixels.
    """
    points, anchor_strides = [], []
    for stride in strides:
        if input_size % stride:
            raise ValueError(f"input_size {input_size} is not a multiple of stride {stride}")
        side = input_size // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        points.append(np.stack((xs.ravel(), ys.ravel()), axis=1) + 0.5)
        anchor_strides.append(np.full(side * side, stride))
    return (np.concatenate(points).astype(np.float32), np.concatenate(anchor_strides).astype(np.float32))


def decode_offsets(offsets: NDArray[np.floating], points: FloatArray, strides: FloatArray) -> FloatArray:
    """Offsets ``(P, K, 2)`` in grid units at anchors ``points (P, 2)``, ``strides (P,)`` ->
    keypoints ``(P, K, 2)`` in input pixels."""
    return ((points[:, None, :] + offsets) * strides[:, None, None]).astype(np.float32)


def encode_offsets(keypoints_xy: NDArray[np.floating], points: FloatArray, strides: FloatArray) -> FloatArray:
    """Inverse of ``decode_offsets``: keypoints ``(P, K, 2)`` in input pixels -> offsets
    ``(P, K, 2)`` in grid units relative to the anchors ``points (P, 2)``, ``strides (P,)``."""
    return (keypoints_xy / strides[:, None, None] - points[:, None, :]).astype(np.float32)


def decode(
    raw: NDArray[np.floating],
    *,
    input_size: int,
    strides: Sequence[int],
    conf_threshold: float = 0.25,
    visible_threshold: float = 0.5,
    max_persons: int = 100,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Persons in one image from the one-to-one head output (no NMS).

    Args:
        raw: ``(A, 1 + 3K)`` raw network output for one image (see module docstring).
        input_size: square network input side, pixels.
        strides: head-level strides, finest first (``ERPoseConfig.strides``).
        conf_threshold: minimum person score (sigmoid of the confidence logit).
        visible_threshold: keypoints scoring at least this span the person box; when none does,
            all keypoints of the person span it.
        max_persons: keep at most this many persons (highest scores).

    Returns:
        keypoints ``(P, K, 3)``: x, y in input pixels and keypoint score in [0, 1];
        boxes_xyxy ``(P, 4)``: input pixels, clipped to the input;
        scores ``(P,)``: person scores, sorted descending.
    """
    raw = np.asarray(raw, dtype=np.float32)
    k = (raw.shape[1] - 1) // 3
    if raw.ndim != 2 or raw.shape[1] != 1 + 3 * k:
        raise ValueError(f"raw must be (A, 1 + 3K), got {raw.shape}")
    points, anchor_strides = anchor_grid(input_size, strides)
    if points.shape[0] != raw.shape[0]:
        raise ValueError(f"raw has {raw.shape[0]} anchors, grid for {input_size}/{tuple(strides)} has {len(points)}")

    scores = sigmoid(raw[:, 0])
    keep = np.flatnonzero(scores >= conf_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_persons]
    if keep.size == 0:
        empty = np.zeros((0,), np.float32)
        return np.zeros((0, k, 3), np.float32), np.zeros((0, 4), np.float32), empty

    sel = raw[keep]
    xy = decode_offsets(sel[:, 1 : 1 + 2 * k].reshape(-1, k, 2), points[keep], anchor_strides[keep])
    kpt_scores = sigmoid(sel[:, 1 + 2 * k :])
    keypoints = np.concatenate((xy, kpt_scores[..., None]), axis=2)

    visible = kpt_scores >= visible_threshold
    visible[~visible.any(axis=1)] = True
    lo = np.where(visible[..., None], xy, np.inf).min(axis=1)
    hi = np.where(visible[..., None], xy, -np.inf).max(axis=1)
    boxes = np.clip(np.concatenate((lo, hi), axis=1), 0.0, float(input_size)).astype(np.float32)
    return keypoints.astype(np.float32), boxes, scores[keep]


class ERPoseCodec:
    """``decode`` with the contract's signature: the one-to-one head ``(A, 1 + 3K)`` -> persons."""

    output_names: tuple[str, ...] = ("one_to_one",)

    def __init__(self, input_size: int, strides: Sequence[int], conf_threshold: float = 0.25) -> None:
        if input_size % max(strides):
            raise ValueError(f"ER-Pose input size must be a multiple of {max(strides)}, got {input_size}")
        self.input_size, self.strides, self.conf_threshold = input_size, tuple(strides), conf_threshold

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        keypoints, boxes, scores = decode(
            outputs[0], input_size=self.input_size, strides=self.strides, conf_threshold=self.conf_threshold
        )
        return Decoded(keypoints, boxes, scores)
