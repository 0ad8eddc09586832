"""ER-Pose single-stage: a centred YOLO letterbox (grey 114), RGB / 255, NCHW float32 -> the
one-to-one head ``(A, 52)`` -> persons, no NMS. Training (``models.train.erpose_data``) prepares
its images with the same ``erpose_input``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.codecs.erpose import ERPoseCodec
from models.pipelines.base import PipelineOptions, SingleStage
from models.transforms import Letterbox, letterbox

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["PAD_VALUE", "erpose", "erpose_input"]

PAD_VALUE = 114
"""Grey padding of the YOLO letterbox."""


def erpose_input(image_rgb: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 RGB -> (3, S, S) float32 in [0, 1], centred on grey, and its geometry."""
    canvas, geometry = letterbox(image_rgb, size, center=True, pad_value=PAD_VALUE)
    return (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1).copy(), geometry


def erpose(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> SingleStage:
    """Strides come from the exported card; the input side may be overridden (a multiple of 32)."""
    if card is None:
        raise ValueError(f"{entry.name}: the ER-Pose pipeline is configured from its exported card")
    size = options.input_size or int(card.input.size_hw[0])
    codec = ERPoseCodec(size, tuple(int(s) for s in card.codec_params["strides"]))

    def preprocess(image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return erpose_input(image_rgb, size)

    return SingleStage(entry.name, size, preprocess, codec)
