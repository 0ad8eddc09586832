"""Model complexity as the pose papers report it: parameters and multiply-accumulates (MACs).

The seed papers quote "GFLOPs" that are really multiply-accumulate counts from mmcv / fvcore-style
counters (HRNet-W32 at 256x192 = 7.1 G, 28.5 M parameters). ``count_macs`` reproduces that
convention with ``torch.utils.flop_counter.FlopCounterMode``: it counts the FLOPs of convolutions
and matrix products (2 per multiply-accumulate) and halves them. Element-wise work (BN, activations,
pooling, interpolation) is not counted, as fvcore also leaves most of it out; on convolutional
pose networks that work is well under 2 % of the total.

Units: HRNet's own ``get_model_summary`` (which LE-HRNet and most HRNet derivatives inherit)
divides by 1024**3, so its "7.1 G" for HRNet-W32 256x192 is 7.645e9 MACs / 2**30 = 7.12.
mmcv / fvcore / thop / ptflops divide by 1e9. Compare against a paper with the unit its counter
used: ``count_macs(...) / GIBI`` for HRNet-family papers, ``/ GIGA`` otherwise.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.registry import MODELS, Trained, resolve

__all__ = ["ABLATION_FIGURES", "GIBI", "GIGA", "count_macs", "count_params", "deploy_params", "profile_rows"]

GIGA = 10**9
GIBI = 2**30


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...], *, on_meta: bool = True) -> int:
    """Multiply-accumulates of one forward pass on an input of ``input_shape``.

    Args:
        model: any module taking one image tensor.
        input_shape: full input shape including batch, e.g. ``(1, 3, 256, 192)``.
        on_meta: count on a weightless copy on the ``meta`` device (shapes only, no arithmetic,
            the model itself is untouched); False runs a real forward on a zero tensor.

    Returns:
        MACs (FLOPs of conv / matmul ops divided by 2) for the whole batch.
    """
    if on_meta:
        target = copy.deepcopy(model).to(torch.device("meta"))
        device = torch.device("meta")
    else:
        target = model
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = target.training
    target.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            target(torch.zeros(input_shape, device=device))
    finally:
        target.train(was_training)
    return int(counter.get_total_flops()) // 2


ABLATION_FIGURES: dict[str, tuple[float | None, float | None]] = {
    # (params M, GMACs) of the papers' ablation rows as PAPERS.md quotes them; a catalogued
    # model's own figures are its entry's ``Trained.paper``
    "amfacpose-r34 ablation baseline": (3.3, 4.70),
    "amfacpose-r34 ablation +AFPN": (3.5, 5.0),
    "amfacpose-r34 ablation +DGCB": (3.6, 5.0),
    "amfacpose-r34 ablation +SCRM": (3.6, 5.2),
    "amfacpose-r34 ablation +SE": (3.8, 5.2),
    "amfacpose-r34 ablation +CoordConv": (3.8, 5.2),
    "lehrnet-w32 leanblock only": (4.1, 1.3),
    "hrnet-w32": (28.5, 7.1),
    "sharpose-b coarse only": (None, 5.7),  # Table 8 "Coarse-None"; params are the whole network's
}


def _profile_targets(name: str) -> list[tuple[str, Callable[[], nn.Module], tuple[int, int]]]:
    """(row name, factory, input hw) for `name` and, for AMFACPose-R34 / LE-HRNet, its ablations."""
    from models.nets import amfacpose, lehrnet, sharpose

    entry = MODELS[name]
    assert isinstance(entry.source, Trained)
    hw = entry.source.input.size_hw
    rows: list[tuple[str, Callable[[], nn.Module], tuple[int, int]]] = [(name, resolve(entry.source.net), hw)]
    if name == "amfacpose-r34":
        rows += [
            (f"{name} ablation {row}", functools.partial(amfacpose.AMFACPose, cfg), hw)
            for row, cfg in amfacpose.amfacpose_ablation_configs(hw).items()
        ]
    if name == "lehrnet-w32":
        rows += [
            (f"{name} leanblock only", lehrnet.lehrnet_w32_lean, hw),
            ("hrnet-w32", lehrnet.hrnet_w32, hw),
        ]
    if name.startswith("sharpose"):  # the GMACs above run both stages, the paper's figure (Table 2)
        rows.append((f"{name} coarse only", functools.partial(sharpose.coarse_only, name), hw))
    return rows


def deploy_params(model: nn.Module) -> int:
    """Parameters of what is served: ER-Pose's one-to-many head exists only in training."""
    params = count_params(model)
    one_to_many = getattr(model, "one_to_many", None)
    if isinstance(one_to_many, nn.Module):
        params -= count_params(one_to_many)
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
            paper_params, paper_gmacs = _paper_figures(row)
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


def _paper_figures(row: str) -> tuple[float | None, float | None]:
    entry = MODELS.get(row)
    if entry is not None and isinstance(entry.source, Trained):
        return entry.source.paper
    return ABLATION_FIGURES.get(row, (None, None))
