"""Catalogue entry (+ its card) -> the pipeline that serves it, checked for the expected shape."""

from __future__ import annotations

from typing import TypeVar

from models.card import ModelCard
from models.pipelines.base import CropPose, Detector, PipelineOptions, SingleStage
from models.registry import ModelEntry, resolve

__all__ = ["crop_pose", "detector", "single_stage"]

T = TypeVar("T", SingleStage, Detector, CropPose)


def _build(
    target: str | None, shape: type[T], entry: ModelEntry, card: ModelCard | None, options: PipelineOptions
) -> T:
    if target is None:
        raise ValueError(f"{entry.name} has no {shape.__name__} pipeline")
    built = resolve(target)(entry, card, options)
    if not isinstance(built, shape):
        raise TypeError(f"{target} built a {type(built).__name__}, expected a {shape.__name__}")
    return built


def single_stage(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions | None = None) -> SingleStage:
    return _build(entry.pipeline, SingleStage, entry, card, options or PipelineOptions())


def crop_pose(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions | None = None) -> CropPose:
    return _build(entry.pipeline, CropPose, entry, card, options or PipelineOptions())


def detector(entry: ModelEntry, card: ModelCard | None, options: PipelineOptions | None = None) -> Detector:
    """A person-detector entry's own pipeline, or a model's second, box-finding one."""
    target = entry.pipeline if entry.kind == "person-detector" else entry.detector
    return _build(target, Detector, entry, card, options or PipelineOptions())
