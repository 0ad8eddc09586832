"""The one catalogue: every model the project can serve, by name, resolved on first use.

numpy-only (serving path): an entry names its pipeline builder and its network factory as
``"module:function"`` strings, imported only when used, so listing backends never imports torch.
One entry defines a model completely:

- ``kind``: ``single-stage`` (image -> persons), ``top-down`` (a person crop -> one person,
  served behind a person detector) or ``person-detector`` (image -> person boxes);
- ``backend``: the name ``?backend=`` serves it under (None for a detector only);
- ``codec``: how its outputs decode (the input geometry is its source's ``InputSpec``);
- ``pipeline``: builder ``(entry, card, options) -> SingleStage | CropPose | Detector``
  (``models.pipelines``); ``detector``: a second builder when it can also find person boxes;
- ``source``: ``PullSpec`` (pretrained, ``poseserve models pull``) or ``Trained`` (a seed
  network: ``poseserve train`` / ``export`` writes its weights).

Adding a backend is one entry here plus its pipeline file (and its network, if trained here).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from models.card import InputSpec
from models.convert.spec import Head, PullSpec

__all__ = ["BACKENDS", "DETECTORS", "MODELS", "Kind", "ModelEntry", "Trained", "backend", "model", "resolve"]

Kind = Literal["single-stage", "top-down", "person-detector"]


@dataclass(frozen=True)
class Trained:
    """A seed-paper network trained here: ``net`` builds it (torch), its ONNX export serves it.

    ``paper``: (params in M, GMACs) as the paper reports them (None where it gives none).
    """

    net: str
    output_names: tuple[str, ...]
    input: InputSpec
    codec_params: dict[str, Any] = field(default_factory=dict)
    paper: tuple[float | None, float | None] = (None, None)
    export: str | None = None
    """``"module:function"`` replacing ``models.export.export_to_store`` for a network served as more
    than one graph (SHaRPose: ``models.export_gated``)."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    """Weights name: ``NAME.onnx`` + ``NAME.json`` in the store, ``models pull`` / ``export`` NAME."""
    kind: Kind
    backend: str | None
    codec: str
    pipeline: str
    source: PullSpec | Trained
    description: str
    detector: str | None = None
    quality_gate: bool = False
    """Top-down, served as a coarse graph on every crop and a fine graph only on the crops whose
    predicted quality is below the backend's ``quality_threshold`` (``service.backends.gated``)."""

    @property
    def input_hw(self) -> tuple[int, int]:
        """Default network input (H, W) in pixels, as its source states it."""
        return self.source.input.size_hw

    @property
    def pretrained(self) -> bool:
        """True when ``poseserve models pull`` materialises real weights."""
        return isinstance(self.source, PullSpec)


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (imports the module now)."""
    module, _, attr = target.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return function


_SCOPE = "StatefulPartitionedCall/"
_IMAGENET = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}


def _seed_input(h: int, w: int, **normalise: Any) -> InputSpec:
    return InputSpec(name="input", dtype="float32", layout="NCHW", channels="RGB", size_hw=(h, w), **normalise)


def _crop_seed(name: str, hw: tuple[int, int], codec: str, paper: tuple[float, float], what: str) -> ModelEntry:
    h, w = hw
    family = name.split("-")[0]
    codecs: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
        "simcc": (("x_logits", "y_logits"), {"split_ratio": 2.0}),
        "heatmap": (("heatmaps",), {"heatmap_hw": [h // 4, w // 4]}),
    }
    outputs, params = codecs[codec]
    return ModelEntry(
        name=name,
        kind="top-down",
        backend=name,
        codec=codec,
        pipeline=f"models.pipelines.seed_crops:{codec}",
        source=Trained(
            net=f"models.nets.{family}:{name.replace('-', '_')}",
            output_names=outputs,
            input=_seed_input(h, w, **_IMAGENET),
            codec_params=params,
            paper=paper,
        ),
        description=f"person detector -> crops -> {what} (no public weights: train or bring a checkpoint)",
    )


def _sharpose(name: str, hw: tuple[int, int], paper: tuple[float, float], what: str) -> ModelEntry:
    h, w = hw
    return ModelEntry(
        name=name,
        kind="top-down",
        backend=name,
        codec="heatmap",
        pipeline="models.pipelines.sharpose:sharpose",
        quality_gate=True,
        source=Trained(
            net=f"models.nets.sharpose:{name.replace('-', '_')}",
            output_names=("heatmaps", "quality", "tokens", "patch_scores"),
            input=_seed_input(h, w, **_IMAGENET),
            codec_params={"heatmap_hw": [h // 4, w // 4]},
            paper=paper,
            export="models.export_gated:export_to_store",
        ),
        description=f"person detector -> crops -> {what}; fine stage only below the quality threshold "
        "(no public weights: train or bring a checkpoint)",
    )


_ENTRIES: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="movenet-multipose",
        kind="single-stage",
        backend="movenet-multipose",
        codec="movenet-multipose",
        pipeline="models.pipelines.movenet:multipose",
        detector="models.pipelines.movenet:multipose_boxes",
        source=PullSpec(
            model_file="models/movenet-multipose.json",
            upstream="https://tfhub.dev/google/tfjs-model/movenet/multipose/lightning/1",
            weights_licence="Apache-2.0 (Google MoveNet MultiPose lightning, TF Hub)",
            input=InputSpec(
                name="input", dtype="int32", layout="NHWC", channels="RGB", size_hw=(384, 384), size_multiple=32
            ),
            heads=(
                Head(_SCOPE + "center_0/conv2d_4/", "Conv", "centre_logits"),
                Head(_SCOPE + "kpt_heatmap_0/conv2d_7/", "Conv", "kpt_heatmap_logits"),
                Head(_SCOPE + "kpt_offset_0/conv2d_9/", "Conv", "kpt_offsets"),
                Head(_SCOPE + "kpt_regress_0/conv2d_8/", "Conv", "kpt_regress"),
                Head(_SCOPE + "box_scale_0/conv2d_5/", "Conv", "box_scale"),
                Head(_SCOPE + "box_offset_0/conv2d_6/", "Conv", "box_offset"),
            ),
            parity="movenet-multipose",
            parity_sizes_hw=((256, 256), (384, 384), (256, 384)),
        ),
        description="MoveNet MultiPose Lightning (Google, Apache-2.0): up to 6 people, letterboxed input",
    ),
    ModelEntry(
        name="movenet-thunder",
        kind="top-down",
        backend="topdown-movenet",
        codec="movenet-singlepose",
        pipeline="models.pipelines.movenet:thunder",
        source=PullSpec(
            model_file="models/movenet-thunder.json",
            upstream="https://tfhub.dev/google/movenet/singlepose/thunder/4",
            weights_licence="Apache-2.0 (Google MoveNet SinglePose thunder, TF Hub)",
            input=InputSpec(name="input:0", dtype="int32", layout="NHWC", channels="RGB", size_hw=(256, 256)),
            heads=(
                Head(_SCOPE + "truediv_2:", "Mul", "centre_weighted"),
                Head(_SCOPE + "Sigmoid:", "Sigmoid", "kpt_heatmap"),
                Head(_SCOPE + "kpt_offset_0/conv2d_7/", "Conv", "kpt_offsets"),
                Head(_SCOPE + "kpt_regress_0/conv2d_6/", "Conv", "kpt_regress"),
            ),
            parity="movenet-singlepose",
        ),
        description="person detector -> 256x256 crops -> MoveNet SinglePose Thunder (Google, Apache-2.0)",
    ),
    ModelEntry(
        name="blazepose-heavy",
        kind="top-down",
        backend="topdown-blazepose",
        codec="blazepose",
        pipeline="models.pipelines.blazepose:heavy",
        source=PullSpec(
            model_file="models/blazepose-heavy.json",
            upstream="https://github.com/google/mediapipe (pose_landmark_heavy)",
            weights_licence="Apache-2.0 (Google MediaPipe BlazePose GHUM heavy)",
            input=InputSpec(
                name="input_1", dtype="float32", layout="NHWC", channels="RGB", size_hw=(256, 256), value_range=(0, 1)
            ),
        ),
        description="person detector -> 256x256 crops -> BlazePose GHUM Heavy landmarks (Google, Apache-2.0)",
    ),
    ModelEntry(
        name="nanodet",
        kind="person-detector",
        backend=None,
        codec="nanodet",
        pipeline="models.pipelines.nanodet:persons",
        source=PullSpec(
            model_file="models/nanodet.json",
            upstream="https://github.com/RangiLyu/nanodet (NanoDet-m 416, COCO-80)",
            weights_licence="Apache-2.0 (RangiLyu/nanodet)",
            input=InputSpec(
                name="input_1:0",
                dtype="float32",
                layout="NCHW",
                channels="BGR",
                size_hw=(416, 416),
                mean=(103.53, 116.28, 123.675),
                std=(57.375, 57.12, 58.395),
            ),
            heads=tuple(  # GFL heads per stride: class scores (cells, 80), box bins (cells, 4 x 11)
                Head(f"Identity{suffix}:0", None, f"{kind}_stride{stride}")
                for kind, suffixes in (("cls", ("", "_1", "_2")), ("reg", ("_3", "_4", "_5")))
                for suffix, stride in zip(suffixes, (8, 16, 32), strict=True)
            ),
        ),
        description="NanoDet-m (COCO-80) person boxes, 416x416 (RangiLyu, Apache-2.0)",
    ),
    _crop_seed("amfacpose-r18", (256, 256), "simcc", (2.4, 1.9), "AMFACPose-R18, SimCC k=2, 256x256"),
    _crop_seed("amfacpose-r34", (384, 288), "simcc", (3.8, 5.2), "AMFACPose-R34, SimCC k=2, 384x288"),
    _crop_seed("lehrnet-w32", (256, 192), "heatmap", (4.2, 1.5), "LE-HRNet-W32, heatmaps, 256x192"),
    _sharpose("sharpose-s", (256, 192), (28.4, 4.9), "SHaRPose-Small (alpha 0.5), heatmaps, 256x192"),
    _sharpose("sharpose-s-384", (384, 288), (48.3, 11.0), "SHaRPose-Small (alpha 0.5), heatmaps, 384x288"),
    _sharpose("sharpose-b", (256, 192), (93.9, 17.1), "SHaRPose-Base (alpha 0.4), heatmaps, 256x192"),
    _sharpose("sharpose-b-384", (384, 288), (118.1, 32.9), "SHaRPose-Base (alpha 0.3), heatmaps, 384x288"),
    *(
        ModelEntry(
            name=f"erpose-{scale}",
            kind="single-stage",
            backend=f"erpose-{scale}",
            codec="erpose",
            pipeline="models.pipelines.erpose:erpose",
            source=Trained(
                net=f"models.nets.erpose:erpose_{scale}",
                output_names=("one_to_one",),
                input=_seed_input(640, 640, value_range=(0.0, 1.0)),
                paper=(params, None),
            ),
            description=f"ER-Pose-{scale}: single-stage, NMS-free (no public weights: train or bring a checkpoint)",
        )
        for scale, params in (("n", 2.53), ("s", 9.69), ("m", 23.36), ("l", 39.95))
    ),
)

MODELS: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}
"""Every model by weights name."""
BACKENDS: dict[str, ModelEntry] = {e.backend: e for e in _ENTRIES if e.backend is not None}
"""What ``?backend=`` can name."""
DETECTORS: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES if e.kind == "person-detector" or e.detector}
"""What can find person boxes for the top-down backends (``POSESERVE_TOPDOWN__DETECTOR``)."""


def backend(name: str) -> ModelEntry:
    """The entry served as backend ``name``; KeyError naming the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}") from None


def model(name: str) -> ModelEntry:
    """The entry of weights ``name``; KeyError naming the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
