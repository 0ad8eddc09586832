"""Backend pipelines as pure functions around one model run: preprocess -> infer -> postprocess.

numpy + OpenCV only (serving path). `preprocess` turns one RGB image into one input row (the
engine stacks rows into a batch and runs the ONNX session); `postprocess` turns one image's slice
of the raw outputs into `Persons` in image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.codecs import movenet
from models.transforms import Letterbox, letterbox

__all__ = ["MoveNetMultiPose", "Persons", "SingleStagePipeline"]

NUM_KEYPOINTS = 17


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


class SingleStagePipeline(Protocol):
    input_size: int

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> one input row (no batch dim) and its geometry."""
        ...

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> Persons:
        """One image's raw outputs (batch dim removed, session output order) -> persons."""
        ...


class MoveNetMultiPose:
    """MoveNet MultiPose: int32 RGB NHWC letterboxed (top-left) to a square multiple of 32."""

    def __init__(self, input_size: int) -> None:
        if input_size % 32:
            raise ValueError(f"MoveNet input size must be a multiple of 32, got {input_size}")
        self.input_size = input_size

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        canvas, geometry = letterbox(image_rgb, self.input_size)
        return canvas, geometry  # uint8; the session casts the stacked batch to int32 once

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> Persons:
        decoded = movenet.decode(outputs)
        return Persons.from_input(decoded.keypoints, decoded.boxes_xyxy, decoded.scores, geometry)
