"""SHaRPose's crop pose: an ImageNet-normalised RGB crop, two graphs, heatmaps decoded with DARK.

The coarse graph gives ``heatmaps, quality, tokens, patch_scores`` per crop; ``GatedCropPose``
says which output is the quality score and which the fine graph needs. ``postprocess_crop`` of
the coarse outputs decodes the coarse heatmaps (the sequential reference ``run_topdown`` therefore
serves the coarse stage only); ``decode_fine`` decodes the fine graph's heatmaps. Crop size, codec
parameters and the fine graph's name come from the card the export wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from models.codecs.heatmap import HeatmapCodec
from models.pipelines.base import CropPose, PipelineOptions, normalize_imagenet

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = ["CoarseHeatmapCodec", "GatedCropPose", "sharpose"]


class CoarseHeatmapCodec(HeatmapCodec):
    """Heatmaps first among the coarse graph's outputs; the others are for the gate and the fine graph."""

    output_names: tuple[str, ...] = ("heatmaps", "quality", "tokens", "patch_scores")


@dataclass(frozen=True)
class GatedCropPose(CropPose):
    """A ``CropPose`` whose crops may be refined by a second graph (``fine_model`` in the store)."""

    fine_model: str = ""
    fine_inputs: tuple[str, ...] = ("input", "tokens", "patch_scores")

    def quality(self, outputs: Sequence[np.ndarray]) -> float:
        """One crop's coarse outputs -> its predicted quality Q in [0, 1]."""
        return float(np.asarray(outputs[1]).reshape(-1)[0])

    def fine_row(self, row: np.ndarray, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """One crop's fine-graph inputs, in ``fine_inputs`` order (its input row, coarse tokens, scores)."""
        return (row, np.asarray(outputs[2]), np.asarray(outputs[3]))

    def decode_fine(self, heatmaps: np.ndarray) -> np.ndarray:
        """One crop's fine heatmaps ``(K, h, w)`` -> (17, 3) crop-pixel keypoints."""
        return np.asarray(self.codec.decode([heatmaps]).keypoints[0], np.float32)


def sharpose(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions) -> GatedCropPose:
    if card is None:
        raise ValueError(f"{entry.name}: its crop pose is configured from its exported card")
    h, w = card.input.size_hw
    map_h, map_w = card.codec_params.get("heatmap_hw", (h // 4, w // 4))
    fine_model = str(card.codec_params.get("fine_model", f"{entry.name}-fine"))
    codec = CoarseHeatmapCodec((w, h), (int(map_w), int(map_h)))
    return GatedCropPose(entry.name, (w, h), normalize_imagenet, codec, fine_model=fine_model)
