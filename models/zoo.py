"""The seed-paper networks by served name: build, load a checkpoint, export into the weights store.

torch side (never imported on the serving path). `export_to_store` writes `NAME.onnx` + its card
(codec, input geometry, codec parameters, parity, `untrained`) where the service reads them; a
network without a checkpoint is exported with its random initial weights and says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.export import export_onnx, sha256_file, write_card
from models.nets import amfacpose, erpose, lehrnet
from models.profile import GIBI, GIGA, count_macs, count_params

__all__ = [
    "PAPER_FIGURES",
    "SEED_MODELS",
    "SeedModel",
    "build",
    "calibrate_batchnorm",
    "export_to_store",
    "load_checkpoint",
    "profile_rows",
]


@dataclass(frozen=True)
class SeedModel:
    name: str
    factory: Callable[[], nn.Module]
    input_hw: tuple[int, int]
    codec: str
    output_names: tuple[str, ...]
    codec_params: dict[str, Any] = field(default_factory=dict)


SEED_MODELS: dict[str, SeedModel] = {
    **{
        name: SeedModel(name, f, amfacpose.INPUT_HW[name], "simcc", ("x_logits", "y_logits"), {"split_ratio": 2.0})
        for name, f in amfacpose.VARIANTS.items()
    },
    **{
        name: SeedModel(
            name,
            f,
            lehrnet.INPUT_HW[name],
            "heatmap",
            ("heatmaps",),
            {"heatmap_hw": [lehrnet.INPUT_HW[name][0] // 4, lehrnet.INPUT_HW[name][1] // 4]},
        )
        for name, f in lehrnet.VARIANTS.items()
    },
    **{
        name: SeedModel(name, f, (erpose.INPUT_SIZE, erpose.INPUT_SIZE), "erpose", ("one_to_one",))
        for name, f in erpose.VARIANTS.items()
    },
}


PAPER_FIGURES: dict[str, tuple[float | None, float | None]] = {
    # (params M, GMACs) as PAPERS.md quotes the papers; None where the paper gives no figure
    "amfacpose-r18": (2.4, 1.9),
    "amfacpose-r34": (3.8, 5.2),
    "amfacpose-r34 ablation baseline": (3.3, 4.70),
    "amfacpose-r34 ablation +AFPN": (3.5, 5.0),
    "amfacpose-r34 ablation +DGCB": (3.6, 5.0),
    "amfacpose-r34 ablation +SCRM": (3.6, 5.2),
    "amfacpose-r34 ablation +SE": (3.8, 5.2),
    "amfacpose-r34 ablation +CoordConv": (3.8, 5.2),
    "lehrnet-w32": (4.2, 1.5),
    "lehrnet-w32 leanblock only": (4.1, 1.3),
    "hrnet-w32": (28.5, 7.1),
    "erpose-n": (2.53, None),
    "erpose-s": (9.69, None),
    "erpose-m": (23.36, None),
    "erpose-l": (39.95, None),
}


def _profile_targets(name: str) -> list[tuple[str, Callable[[], nn.Module], tuple[int, int]]]:
    """(row name, factory, input hw) for `name` and, for AMFACPose-R34 / LE-HRNet, its ablations."""
    spec = SEED_MODELS[name]
    rows = [(name, spec.factory, spec.input_hw)]
    if name == "amfacpose-r34":
        rows += [
            (f"{name} ablation {row}", functools.partial(amfacpose.AMFACPose, cfg), spec.input_hw)
            for row, cfg in amfacpose.amfacpose_ablation_configs(spec.input_hw).items()
        ]
    if name == "lehrnet-w32":
        rows += [
            (f"{name} leanblock only", lehrnet.lehrnet_w32_lean, spec.input_hw),
            ("hrnet-w32", lehrnet.hrnet_w32, spec.input_hw),
        ]
    return rows


def deploy_params(model: nn.Module) -> int:
    """Parameters of what is served: ER-Pose's one-to-many head exists only in training."""
    params = count_params(model)
    if isinstance(model, erpose.ERPose):
        params -= count_params(model.one_to_many)
    return params


def profile_rows(names: list[str]) -> list[dict[str, Any]]:
    """Params and GMACs (multiply-accumulates, as the papers count) beside the papers' figures."""
    rows = []
    for name in names:
        for row, factory, (h, w) in _profile_targets(name):
            model = factory().eval()
            params_m = deploy_params(model) / 1e6
            # HRNet's own counter (and so the LE-HRNet paper) divides by 2**30; the others by 1e9
            unit = GIBI if "hrnet" in row else GIGA
            gmacs = count_macs(model, (1, 3, h, w)) / unit
            paper_params, paper_gmacs = PAPER_FIGURES.get(row, (None, None))
            rows.append(
                {
                    "model": row,
                    "input_hw": f"{h}x{w}",
                    "params_m": round(params_m, 2),
                    "paper_params_m": paper_params,
                    "gmacs": round(gmacs, 2),
                    "paper_gmacs": paper_gmacs,
                    "g": "2^30" if unit == GIBI else "1e9",
                }
            )
    return rows


def build(name: str) -> nn.Module:
    try:
        return SEED_MODELS[name].factory()
    except KeyError:
        raise KeyError(f"unknown seed model {name!r}; known: {', '.join(sorted(SEED_MODELS))}") from None


def load_checkpoint(model: nn.Module, checkpoint: Path) -> None:
    """Load a state dict (or a {"model": state_dict} training checkpoint) strictly."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(state, strict=True)


def calibrate_batchnorm(model: nn.Module, input_chw: tuple[int, int, int], batch: int = 2) -> None:
    """Set BatchNorm statistics from one random batch.

    Freshly initialised BatchNorm (mean 0, var 1) makes a random network's outputs nearly constant,
    so an untrained export would serve one pose everywhere and its parity check would compare
    constants. One batch of noise gives it realistic activations instead.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(batch, *input_chw))  # standard normal, as the parity check's inputs
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def export_to_store(name: str, out: Path, *, checkpoint: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Export `name` to `out` (a `.onnx` path, or a folder for `NAME.onnx`) with its card beside it."""
    spec = SEED_MODELS[name]
    torch.manual_seed(seed)
    model = build(name)
    h, w = spec.input_hw
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    else:
        calibrate_batchnorm(model, (3, h, w))
    model.eval()
    out = Path(out)
    if out.suffix != ".onnx":
        out = out / f"{name}.onnx"
    parity = export_onnx(model, (3, h, w), out, output_names=list(spec.output_names))
    codec_params = dict(spec.codec_params)
    if isinstance(model, erpose.ERPose):
        codec_params["strides"] = list(model.strides)
    card = {
        "card_version": 1,
        "name": name,
        "kind": "single-stage" if spec.codec == "erpose" else "top-down",
        "codec": spec.codec,
        "codec_params": codec_params,
        "untrained": checkpoint is None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "file": out.name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "channels": "RGB", "size_hw": [h, w]},
        "outputs": parity["outputs"],
        "parity": parity,
        "licence": {"code": "this project", "weights": "random initialisation" if checkpoint is None else "user"},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_card(out.with_suffix(".json"), card)
    return card
