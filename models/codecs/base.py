"""The one decode contract: one image's raw outputs -> `Decoded` persons in input pixels.

Every codec answers through ``decode(outputs) -> Decoded``, where ``outputs`` are one image's
(or one crop's) raw network outputs with the batch axis removed, in the codec's
``output_names`` order. Training-target ``encode`` methods live beside ``decode`` where a codec
is trained here (SimCC, heatmaps, ER-Pose offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Codec", "Decoded", "keypoint_extent"]


@dataclass(frozen=True)
class Decoded:
    """Persons (or person boxes) decoded from one input, best first, in input-tensor pixels.

    keypoints: (N, K, 3) float32 x, y and a score in [0, 1] (K = 0 for a box-only detector).
    boxes_xyxy: (N, 4) float32 x1, y1, x2, y2.
    scores: (N,) float32 person scores in [0, 1].
    """

    keypoints: np.ndarray
    boxes_xyxy: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray) -> Decoded:
        """The persons at ``index`` (integer or boolean array over N)."""
        return Decoded(self.keypoints[index], self.boxes_xyxy[index], self.scores[index])

    @classmethod
    def single(cls, keypoints: np.ndarray) -> Decoded:
        """One person from (K, 3) keypoints: box = their extent, score = their mean score."""
        kps = np.asarray(keypoints, np.float32)[None]
        return cls(kps, keypoint_extent(kps[0])[None], kps[:, :, 2].mean(axis=1).astype(np.float32))

    @classmethod
    def boxes(cls, boxes_xyxy: np.ndarray, scores: np.ndarray) -> Decoded:
        """Box-only persons (a detector): K = 0 keypoints."""
        return cls(np.zeros((len(scores), 0, 3), np.float32), boxes_xyxy.astype(np.float32), scores.astype(np.float32))


class Codec(Protocol):
    """Decodes one input's raw outputs, given in ``output_names`` order."""

    output_names: tuple[str, ...]

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """One image's (or crop's) outputs, batch axis removed -> persons in input pixels."""
        ...


def keypoint_extent(keypoints: np.ndarray, min_score: float | None = None) -> np.ndarray:
    """(K, 3) keypoints -> (4,) x1, y1, x2, y2 around those scoring >= ``min_score`` (all K when
    ``min_score`` is None or fewer than 2 do)."""
    points = keypoints[:, :2]
    if min_score is not None:
        confident = keypoints[keypoints[:, 2] >= min_score]
        if len(confident) >= 2:
            points = confident[:, :2]
    return np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float32)
