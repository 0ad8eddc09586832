"""LE-HRNet (heatmaps at 1/4, DARK decoding) as a crop pose: an RGB crop, ImageNet-normalised NCHW
float32 -> ``heatmaps (K, H/4, W/4)``. Geometry comes from the exported card."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.codecs.heatmap import HeatmapCodec
from models.pipelines.base import CropPose, PipelineOptions, normalize_imagenet

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["crop_pose"]


def crop_pose(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> CropPose:
    if card is None:
        raise ValueError(f"{entry.name}: the heatmap crop pose is configured from its exported card")
    h, w = card.input.size_hw
    hh, hw = card.codec_params.get("heatmap_hw", (h // 4, w // 4))
    return CropPose(entry.name, (w, h), normalize_imagenet, HeatmapCodec((w, h), (int(hw), int(hh))))
