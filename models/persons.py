"""People found in one image, and the COCO-17 keypoint constants every backend answers in.

numpy only (serving path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.transforms import Letterbox

__all__ = ["COCO_FLIP_PAIRS", "COCO_KEYPOINTS", "NUM_KEYPOINTS", "Persons"]

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(COCO_KEYPOINTS)
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple((i, i + 1) for i in range(1, NUM_KEYPOINTS, 2))
"""Left/right COCO-17 joint pairs (eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)."""


@dataclass(frozen=True)
class Persons:
    """People found in one image, sorted by score (descending).

    keypoints: (P, 17, 3) x, y in image pixels and a score in [0, 1], COCO order.
    boxes_xyxy: (P, 4) x1, y1, x2, y2 in image pixels.
    scores: (P,) person scores in [0, 1].
    """

    keypoints: np.ndarray
    boxes_xyxy: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Persons:
        return cls(
            keypoints=np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
            boxes_xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
        )

    @classmethod
    def from_input(
        cls, keypoints: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray, geometry: Letterbox
    ) -> Persons:
        """A decoder's persons in input-tensor pixels -> `Persons` in image pixels."""
        if len(scores) == 0:
            return cls.empty()
        image_keypoints = keypoints.astype(np.float32)  # a copy: the decoder's arrays stay intact
        image_keypoints[..., :2] = geometry.to_image(image_keypoints[..., :2])
        return cls(image_keypoints, geometry.boxes_to_image(boxes_xyxy), scores.astype(np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, min_score: float) -> Persons:
        keep = self.scores >= min_score
        return Persons(self.keypoints[keep], self.boxes_xyxy[keep], self.scores[keep])
