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
    """Default input side in pixels: the square side, or a top-down crop's height (overridable per
    backend in Settings for single-stage backends)."""
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
            codec="movenet-multipose",
            weights="movenet-multipose",
            pretrained=True,
            description="MoveNet MultiPose Lightning (Google, Apache-2.0): up to 6 people, letterboxed input",
        ),
        BackendSpec(
            name="topdown-movenet",
            kind="top-down",
            input_size=256,
            codec="movenet-thunder",
            weights="movenet-thunder",
            pretrained=True,
            description="person detector -> 256x256 crops -> MoveNet SinglePose Thunder (Google, Apache-2.0)",
        ),
        BackendSpec(
            name="topdown-blazepose",
            kind="top-down",
            input_size=256,
            codec="blazepose-heavy",
            weights="blazepose-heavy",
            pretrained=True,
            description="person detector -> 256x256 crops -> BlazePose GHUM Heavy landmarks (Google, Apache-2.0)",
        ),
        *(
            BackendSpec(
                name=name,
                kind="top-down",
                input_size=size,
                codec=codec,
                weights=name,
                pretrained=False,
                description=f"person detector -> crops -> {paper} (no public weights: train or bring a checkpoint)",
            )
            for name, size, codec, paper in (
                ("amfacpose-r18", 256, "simcc", "AMFACPose-R18, SimCC k=2, 256x256"),
                ("amfacpose-r34", 384, "simcc", "AMFACPose-R34, SimCC k=2, 384x288"),
                ("lehrnet-w32", 256, "heatmap", "LE-HRNet-W32, heatmaps, 256x192"),
            )
        ),
        *(
            BackendSpec(
                name=f"erpose-{scale}",
                kind="single-stage",
                input_size=640,
                codec="erpose",
                weights=f"erpose-{scale}",
                pretrained=False,
                description=f"ER-Pose-{scale}: single-stage, NMS-free (no public weights: train or bring a checkpoint)",
            )
            for scale in "nsml"
        ),
    )
}


def get_spec(name: str) -> BackendSpec:
    """The spec of backend `name`; KeyError when no backend has that name."""
    return BACKENDS[name]
