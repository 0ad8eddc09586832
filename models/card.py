"""The model card: what the weights store knows about one served ONNX file.

Written by ``poseserve models pull`` (converted pretrained graphs) and by ``poseserve export``
(the seed networks), read by serving. One typed shape for both; cards written before version 2
(``input.default_size_hw``) still read. pydantic only (serving path).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CARD_VERSION", "InputSpec", "ModelCard", "VariantInfo", "read_card", "write_card"]

CARD_VERSION = 2
Kind = Literal["single-stage", "top-down", "person-detector"]


class InputSpec(BaseModel):
    """The network input: one tensor ``name`` of ``dtype`` in ``layout``.

    A pixel p (RGB/BGR order per ``channels``, scaled to ``value_range``) enters as
    (p - mean) / std. ``size_multiple`` None means the graph only takes ``size_hw``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    layout: Literal["NHWC", "NCHW"]
    channels: Literal["RGB", "BGR"]
    size_hw: tuple[int, int]
    size_multiple: int | None = None
    value_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @model_validator(mode="before")
    @classmethod
    def _version_1(cls, data: Any) -> Any:
        """Version 1 cards said ``default_size_hw``; export cards also carried ``shape_nchw``."""
        if isinstance(data, dict) and "default_size_hw" in data:
            data = {**data, "size_hw": data["default_size_hw"]}
            data.pop("default_size_hw")
        return data


class VariantInfo(BaseModel):
    """What a precision variant is (``poseserve models optimize``): the model it was made from, the
    runtime and precision it runs at, its calibration set (int8) and the keypoint AP it costs.

    ``accuracy``: ``{dataset, images, fp32_ap, ap, ap_delta, max_ap_drop, forced}`` (AP by
    pycocotools on real photos; ``ap_delta`` = variant AP - fp32 AP).

    ``fp32_from`` (OpenVINO bf16): the tensor after which the graph runs in fp32, the latest that
    kept the AP within budget (`models.optimize`); None: just before the heads.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: str
    base_sha256: str
    runtime: Literal["onnxruntime", "openvino"]
    precision: Literal["fp32", "bf16", "fp16", "int8"]
    calibration: dict[str, Any] | None = None
    accuracy: dict[str, Any]
    fp32_from: str | None = None

    @property
    def within_budget(self) -> bool:
        """True when the variant lost no more AP than its budget allowed (not forced past it)."""
        return float(self.accuracy["ap_delta"]) >= -float(self.accuracy["max_ap_drop"])


class ModelCard(BaseModel):
    """One model file's card (``NAME.json`` beside ``NAME.onnx``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    card_version: int = CARD_VERSION
    name: str
    kind: Kind
    codec: str | None = None
    codec_params: dict[str, Any] = Field(default_factory=dict)
    untrained: bool = False
    """True for a seed network exported with its random initial weights (benchmarks only)."""
    checkpoint: str | None = None
    file: str
    sha256: str
    bytes: int
    input: InputSpec
    outputs: list[dict[str, Any]]
    parity: dict[str, Any]
    source: dict[str, Any] | None = None
    licence: dict[str, str]
    converter: dict[str, Any] | None = None
    created_at: str
    variant: VariantInfo | None = None
    """Set on precision variants only (their store name is ``MODEL.RUNTIME-PRECISION``)."""

    @property
    def fp32_from(self) -> str | None:
        """Where a bf16 variant's graph turns fp32 (`VariantInfo.fp32_from`); None for the rest."""
        return self.variant.fp32_from if self.variant is not None else None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def read_card(path: Path) -> ModelCard:
    """The card at ``path``; OSError when unreadable, ValueError when not a valid card."""
    return ModelCard.model_validate_json(Path(path).read_bytes())


def write_card(path: Path, card: ModelCard) -> None:
    """Write ``card`` as JSON atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".json.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(card.to_json())
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
