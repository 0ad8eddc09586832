"""Backend spec (+ its model card) -> the numpy pipeline pieces that serve it.

numpy-only (serving path). Pretrained backends have fixed pipelines; the seed-paper models
read their geometry and codec parameters from the card their export wrote.
"""

from __future__ import annotations

from typing import Any

from models.pipelines import MoveNetMultiPose, SingleStagePipeline
from models.registry import BackendSpec
from models.seeds import ERPosePipeline, crop_pose_from_card
from models.topdown import CROP_POSES, DETECTORS, CropPose, Detector, NanoDetPersons

__all__ = ["crop_pose", "detector", "single_stage_pipeline"]


def single_stage_pipeline(
    spec: BackendSpec, input_size: int | None = None, card: dict[str, Any] | None = None
) -> SingleStagePipeline:
    if spec.codec == "movenet-multipose":
        return MoveNetMultiPose(input_size or spec.input_size)
    if spec.codec == "erpose":
        if not card:
            raise ValueError(f"backend {spec.name}: the ER-Pose pipeline needs the model card")
        return ERPosePipeline.from_card(card, input_size)
    raise ValueError(f"backend {spec.name}: no single-stage pipeline for codec {spec.codec!r}")


def crop_pose(spec: BackendSpec, card: dict[str, Any] | None = None) -> CropPose:
    if spec.codec in CROP_POSES:
        return CROP_POSES[spec.codec]()
    if not card:
        raise ValueError(f"backend {spec.name}: the {spec.codec} crop pose needs the model card")
    return crop_pose_from_card(spec.name, card)


def detector(name: str, *, max_persons: int) -> Detector:
    if name == NanoDetPersons.name:
        return NanoDetPersons(max_persons=max_persons)
    return DETECTORS[name]()
