"""The three pipeline shapes, as small objects around pure functions and one codec.

- ``SingleStage``: an image -> one input row (+ its ``Letterbox``); one image's outputs -> persons.
- ``Detector``: an image -> one input row; one image's outputs -> person boxes in image pixels.
- ``CropPose``: a person crop -> one input row; one crop's outputs -> (17, 3) crop-pixel keypoints.

Outputs are always one image's slice of the session outputs (batch axis removed), in the
codec's ``output_names`` order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from models.codecs.base import Codec
from models.persons import Persons
from models.sparse_heads import SparseHeads, cut_sparse_heads
from models.transforms import Letterbox

if TYPE_CHECKING:
    from models.card import ModelCard
    from models.registry import ModelEntry

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Builder",
    "CropPose",
    "Detector",
    "PipelineOptions",
    "Preprocess",
    "SingleStage",
    "normalize_imagenet",
    "with_sparse_heads",
]

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)

Preprocess = Callable[[np.ndarray], tuple[np.ndarray, Letterbox]]
"""(H, W, 3) uint8 RGB image -> one input row (no batch axis) and how the image was placed in it."""


def normalize_imagenet(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet mean / std normalised."""
    return ((rgb.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


@dataclass(frozen=True)
class PipelineOptions:
    """Serving choices a builder may use: ``input_size`` overrides a resizable single-stage input's
    side; ``max_persons`` caps a detector's boxes."""

    input_size: int | None = None
    max_persons: int = 20


@dataclass(frozen=True)
class SingleStage:
    name: str
    input_size: int
    preprocess: Preprocess
    codec: Codec

    def postprocess(self, outputs: Sequence[np.ndarray], geometry: Letterbox) -> Persons:
        """One image's outputs -> persons in image pixels."""
        decoded = self.codec.decode(outputs)
        return Persons.from_input(decoded.keypoints, decoded.boxes_xyxy, decoded.scores, geometry)


@runtime_checkable
class SparseCodec(Protocol):
    """A codec reading some heads at a few cells only (`models.sparse_heads`)."""

    sparse_heads: tuple[str, ...]

    def with_sparse(self, sparse: SparseHeads) -> Codec:
        """This codec decoding the outputs of a graph cut by `cut_sparse_heads`."""
        ...


def with_sparse_heads(pipeline: SingleStage, path: Path) -> tuple[SingleStage, bytes | None]:
    """`pipeline` decoding from the ONNX file at `path` cut to compute its codec's sparse heads only
    at the cells read, and that cut graph (for `models.runtimes.open_session`); `pipeline` and None
    when its codec reads every head in full or the graph cannot be cut."""
    if not isinstance(pipeline.codec, SparseCodec):
        return pipeline, None
    cut = cut_sparse_heads(path, pipeline.codec.sparse_heads)
    if cut is None:
        return pipeline, None
    graph, sparse = cut
    return replace(pipeline, codec=pipeline.codec.with_sparse(sparse)), graph


@dataclass(frozen=True)
class Detector:
    name: str
    input_size: int
    preprocess: Preprocess
    codec: Codec

    def postprocess(self, outputs: Sequence[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        """One image's outputs -> boxes_xyxy (B, 4) image pixels and scores (B,), best first."""
        decoded = self.codec.decode(outputs)
        return geometry.boxes_to_image(decoded.boxes_xyxy), decoded.scores.astype(np.float32)


@dataclass(frozen=True)
class CropPose:
    name: str
    crop_wh: tuple[int, int]
    preprocess_crop: Callable[[np.ndarray], np.ndarray]
    """(h, w, 3) uint8 RGB crop of ``crop_wh`` -> one input row."""
    codec: Codec

    def postprocess_crop(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """One crop's outputs -> (17, 3) x, y in crop pixels and a score in [0, 1], COCO order."""
        return np.asarray(self.codec.decode(outputs).keypoints[0], np.float32)


class Builder(Protocol):
    """What a catalogue entry's ``pipeline`` / ``detector`` string names."""

    def __call__(
        self, entry: ModelEntry, card: ModelCard | None, options: PipelineOptions
    ) -> SingleStage | Detector | CropPose: ...
