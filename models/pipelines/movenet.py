"""MoveNet (Google, Apache-2.0): MultiPose as a single-stage backend and as a person detector,
SinglePose Thunder as a crop pose. int32 RGB NHWC inputs (the session casts uint8 rows once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.codecs import movenet
from models.pipelines.base import CropPose, Detector, PipelineOptions, Preprocess, SingleStage
from models.transforms import Letterbox, letterbox

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["multipose", "multipose_boxes", "thunder"]

BOX_MIN_SCORE = 0.05
"""MultiPose persons at or below this score are not offered as detector boxes."""


def _top_left_letterbox(size: int) -> Preprocess:
    if size % 32:
        raise ValueError(f"MoveNet input size must be a multiple of 32, got {size}")

    def preprocess(image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(image_rgb, size)  # uint8; the session casts the stacked batch to int32 once

    return preprocess


def multipose(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> SingleStage:
    """Up to 6 people; the square input side is any multiple of 32 (``options.input_size``)."""
    size = options.input_size or entry.input_hw[0]
    return SingleStage(entry.name, size, _top_left_letterbox(size), movenet.MultiPoseCodec())


def multipose_boxes(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> Detector:
    """MultiPose's person boxes; scores are its person scores (at most 6 people)."""
    size = entry.input_hw[0]
    return Detector(entry.name, size, _top_left_letterbox(size), movenet.MultiPoseCodec(min_score=BOX_MIN_SCORE))


def _as_int32(crop_rgb: np.ndarray) -> np.ndarray:
    return crop_rgb.astype(np.int32)


def thunder(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> CropPose:
    """SinglePose Thunder on 256 x 256 crops."""
    h, w = entry.input_hw
    return CropPose(entry.name, (w, h), _as_int32, movenet.SinglePoseCodec())
