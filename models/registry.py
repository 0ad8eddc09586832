"""Every servable backend by name: kind, input size, codec and where its weights come from.

numpy-only (serving path). The service lists these in `GET /v1/backends` and builds pipelines
from them; a backend whose weights are absent is listed with `weights_present: false`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BACKENDS", "BackendSpec", "get_spec"]

Kind = Literal["single-stage", "top-down"]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    kind: Kind
    input_size: int
    """Default square input side in pixels (overridable per backend in Settings)."""
    size_multiple: int
    """Valid input sides are multiples of this."""
    codec: str
    weights: str
    """Name of the model file in the weights store."""
    pretrained: bool
    """True when `poseserve models pull` can materialise real weights."""
    description: str


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="movenet-multipose",
            kind="single-stage",
            input_size=384,
            size_multiple=32,
            codec="movenet-multipose",
            weights="movenet-multipose",
            pretrained=True,
            description="MoveNet MultiPose Lightning (Google, Apache-2.0): up to 6 people, letterboxed input",
        ),
        BackendSpec(
            name="topdown-movenet",
            kind="top-down",
            input_size=256,
            size_multiple=1,
            codec="movenet-thunder",
            weights="movenet-thunder",
            pretrained=True,
            description="person detector -> 256x256 crops -> MoveNet SinglePose Thunder (Google, Apache-2.0)",
        ),
        BackendSpec(
            name="topdown-blazepose",
            kind="top-down",
            input_size=256,
            size_multiple=1,
            codec="blazepose-heavy",
            weights="blazepose-heavy",
            pretrained=True,
            description="person detector -> 256x256 crops -> BlazePose GHUM Heavy landmarks (Google, Apache-2.0)",
        ),
    )
}


def get_spec(name: str) -> BackendSpec:
    """The spec of backend `name`; KeyError when no backend has that name."""
    return BACKENDS[name]
