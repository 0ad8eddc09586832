"""The seed papers' crop poses: an RGB crop, ImageNet-normalised NCHW float32, decoded by the
network's own codec; crop size and codec parameters come from the card the export wrote, so what
is served always matches what was exported.

- AMFACPose: SimCC (k = 2), outputs ``x_logits (K, W*k)``, ``y_logits (K, H*k)``;
- LE-HRNet: heatmaps at 1/4 (``heatmaps (K, H/4, W/4)``), DARK decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from models.codecs.base import Codec
from models.codecs.heatmap import HeatmapCodec
from models.codecs.simcc import SimCCCodec
from models.pipelines.base import CropPose, PipelineOptions, normalize_imagenet

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["heatmap", "simcc"]


def _crop_pose(
    entry: ModelEntry, card: ModelCard | None, codec: Callable[[tuple[int, int], dict[str, Any]], Codec]
) -> CropPose:
    if card is None:
        raise ValueError(f"{entry.name}: its crop pose is configured from its exported card")
    h, w = card.input.size_hw
    return CropPose(entry.name, (w, h), normalize_imagenet, codec((w, h), card.codec_params))


def _simcc_codec(crop_wh: tuple[int, int], params: dict[str, Any]) -> Codec:
    return SimCCCodec(crop_wh, split_ratio=float(params.get("split_ratio", 2.0)))


def _heatmap_codec(crop_wh: tuple[int, int], params: dict[str, Any]) -> Codec:
    w, h = crop_wh
    map_h, map_w = params.get("heatmap_hw", (h // 4, w // 4))
    return HeatmapCodec(crop_wh, (int(map_w), int(map_h)))


def simcc(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> CropPose:
    """AMFACPose."""
    return _crop_pose(entry, card, _simcc_codec)


def heatmap(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> CropPose:
    """LE-HRNet."""
    return _crop_pose(entry, card, _heatmap_codec)
