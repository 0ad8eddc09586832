"""NanoDet-m (COCO-80, 416 x 416) person boxes: centred letterbox, BGR float (p - mean) / std, NCHW.

A centred letterbox scored person bbox AP 0.293 on ``pose_samples`` (threshold 0.05, no person
cap) against 0.280 for a stretched resize and 0.280 for a top-left letterbox; RGB instead of
BGR input 0.281.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.codecs import nanodet
from models.pipelines.base import Detector, PipelineOptions, Preprocess
from models.transforms import Letterbox, letterbox

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["IOU_THRESHOLD", "SCORE_THRESHOLD", "persons"]

MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], np.float32)
SCORE_THRESHOLD = 0.35
IOU_THRESHOLD = 0.6


def _normalised_bgr(size: int) -> Preprocess:
    if size % max(nanodet.STRIDES):
        raise ValueError(f"NanoDet input size must be a multiple of 32, got {size}")

    def preprocess(image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> (3, S, S) float32 normalised BGR and its geometry."""
        canvas, geometry = letterbox(image_rgb, size, center=True)
        bgr = canvas[..., ::-1].astype(np.float32)
        # padding is black in pixel space, as the model saw it in training
        row = ((bgr - MEAN_BGR) / STD_BGR).transpose(2, 0, 1)
        return np.ascontiguousarray(row, dtype=np.float32), geometry

    return preprocess


def persons(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> Detector:
    size = entry.input_hw[0]
    codec = nanodet.NanoDetCodec(
        (size, size), score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD, max_persons=options.max_persons
    )
    return Detector(entry.name, size, _normalised_bgr(size), codec)
