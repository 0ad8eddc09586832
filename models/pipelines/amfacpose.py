"""AMFACPose (SimCC, k = 2) as a crop pose: an RGB crop, ImageNet-normalised NCHW float32 ->
``x_logits (K, W*k)``, ``y_logits (K, H*k)``. Geometry and split ratio come from the exported card."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.codecs.simcc import SimCCCodec
from models.pipelines.base import CropPose, PipelineOptions, normalize_imagenet

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["crop_pose"]


def crop_pose(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> CropPose:
    if card is None:
        raise ValueError(f"{entry.name}: the SimCC crop pose is configured from its exported card")
    h, w = card.input.size_hw
    codec = SimCCCodec((w, h), split_ratio=float(card.codec_params.get("split_ratio", 2.0)))
    return CropPose(entry.name, (w, h), normalize_imagenet, codec)
