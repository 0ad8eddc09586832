"""Seed networks -> the weights store: build by catalogue name, load a checkpoint, export to ONNX
with a dynamic batch dimension, check parity against PyTorch, write the ``ModelCard``.

torch side (never imported on the serving path). ``export_onnx`` writes atomically (temp file in
the target folder, then ``os.replace``), so a reader never sees a half-written model. Parity is
measured with onnxruntime on the CPU provider at batch 1 and batch 8 on seeded random inputs; the
figures go into the card beside the ``.onnx`` file. A network exported without a checkpoint keeps
its random initial weights and its card says ``untrained``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.card import ModelCard, write_card
from models.registry import MODELS, ModelEntry, Trained, resolve
from models.weights import sha256_file

__all__ = [
    "PARITY_BATCHES",
    "SEED_MODELS",
    "build",
    "calibrate_batchnorm",
    "export_onnx",
    "export_to_store",
    "load_checkpoint",
    "read_checkpoint",
]

SEED_MODELS: dict[str, ModelEntry] = {n: e for n, e in MODELS.items() if isinstance(e.source, Trained)}
"""The catalogue's networks trained here (``poseserve export`` / ``train`` NAME)."""

PARITY_BATCHES: tuple[int, ...] = (1, 8)
_INPUT_NAME = "input"


def _to_outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return list(result)


def _export(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int, output_names: list[str]) -> None:
    dynamic_axes = {name: {0: "batch"} for name in [_INPUT_NAME, *output_names]}
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo but is the one that
        # needs no onnxscript and handles ``dynamic_axes`` directly.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[_INPUT_NAME],
            output_names=output_names,
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )


def _parity(
    model: nn.Module, session: ort.InferenceSession, input_shape_chw: tuple[int, int, int], batch: int
) -> float:
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, *input_shape_chw)).astype(np.float32)
    with torch.no_grad():
        ref = [t.numpy() for t in _to_outputs(model(torch.from_numpy(x)))]
    got = session.run(None, {_INPUT_NAME: x})
    return max(float(np.max(np.abs(np.asarray(g) - r))) for g, r in zip(got, ref, strict=True))


def export_onnx(
    model: nn.Module,
    input_shape_chw: tuple[int, int, int],
    out: Path,
    *,
    opset: int = 17,
    output_names: list[str],
) -> dict[str, Any]:
    """Export ``model`` (eval mode) to ``out`` with a dynamic batch axis and check parity.

    Args:
        model: network taking ``(N, C, H, W)`` float32 and returning a tensor or tuple of tensors.
        input_shape_chw: ``(C, H, W)`` of one input image, in pixels.
        out: destination ``.onnx`` path; the parent folder is created if missing.
        opset: ONNX opset version.
        output_names: one name per model output, in order.

    Returns:
        ``{"opset", "inputs": [{name, shape}], "outputs": [{name, shape}],
        "max_abs_diff": {"batch1": float, "batch8": float}}``; symbolic dims appear as strings.
    """
    model = model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((1, *input_shape_chw))
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export(model, dummy, tmp, opset, output_names)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

    options = ort.SessionOptions()
    # ORT's memory-reuse planner takes seconds on wide multi-branch graphs (LE-HRNet: 9 s vs
    # 0.3 s); it does not change results, and this session only checks parity.
    options.enable_mem_reuse = False
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    diffs = {f"batch{b}": _parity(model, session, input_shape_chw, b) for b in PARITY_BATCHES}
    return {
        "opset": opset,
        "inputs": [{"name": i.name, "shape": list(i.shape)} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": list(o.shape)} for o in session.get_outputs()],
        "max_abs_diff": diffs,
    }


def _trained(name: str) -> Trained:
    try:
        source = SEED_MODELS[name].source
    except KeyError:
        raise KeyError(f"unknown seed model {name!r}; known: {', '.join(sorted(SEED_MODELS))}") from None
    assert isinstance(source, Trained)
    return source


def build(name: str, input_hw: tuple[int, int] | None = None) -> nn.Module:
    """A fresh network of catalogue entry ``name`` (its ``Trained.net`` factory), at its catalogue
    input size or at ``input_hw`` (a single-stage network takes the side ``input_hw[0]``)."""
    factory = resolve(_trained(name).net)
    if input_hw is None:
        model: nn.Module = factory()
    elif SEED_MODELS[name].kind == "single-stage":
        model = factory(int(input_hw[0]))
    else:
        model = factory((int(input_hw[0]), int(input_hw[1])))
    return model


def read_checkpoint(checkpoint: Path) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """A state dict (or a {"model": state_dict} training checkpoint) and the input size the
    training run recorded beside it (``input_hw``; None for a bare state dict)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        hw = state.get("input_hw")
        return state["model"], (int(hw[0]), int(hw[1])) if hw is not None else None
    return state, None


def load_checkpoint(model: nn.Module, checkpoint: Path) -> None:
    """Load a state dict (or a {"model": state_dict} training checkpoint) strictly."""
    model.load_state_dict(read_checkpoint(checkpoint)[0], strict=True)


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


def export_to_store(
    name: str,
    out: Path,
    *,
    checkpoint: Path | None = None,
    seed: int = 0,
    input_hw: tuple[int, int] | None = None,
    training: dict[str, Any] | None = None,
    licence: dict[str, str] | None = None,
) -> ModelCard:
    """Export ``name`` to ``out`` (a ``.onnx`` path, or a folder for ``NAME.onnx``) with its card beside it.

    ``input_hw``: the size the checkpoint was trained at (the card's input size); when None, the
    size a training checkpoint records, else the catalogue's. ``training``: what the card's
    ``source`` records of the run (data, teacher, steps, AP); ``licence``: entries added to the
    card's licence (e.g. the training data's).
    """
    entry = SEED_MODELS.get(name)
    source = _trained(name)
    assert entry is not None
    if source.export is not None:  # served as more than one graph: its own exporter
        exported: ModelCard = resolve(source.export)(name, out, checkpoint=checkpoint, seed=seed)
        return exported
    torch.manual_seed(seed)
    state, trained_hw = read_checkpoint(checkpoint) if checkpoint is not None else (None, None)
    input_hw = input_hw or trained_hw
    model = build(name, input_hw)
    h, w = input_hw or source.input.size_hw
    if state is not None:
        model.load_state_dict(state, strict=True)
    else:
        calibrate_batchnorm(model, (3, h, w))
    model.eval()
    out = Path(out)
    if out.suffix != ".onnx":
        out = out / f"{name}.onnx"
    parity = export_onnx(model, (3, h, w), out, output_names=list(source.output_names))
    codec_params = dict(source.codec_params)
    strides = getattr(model, "strides", None)  # ER-Pose: the head levels it was built with
    if strides is not None:
        codec_params["strides"] = [int(s) for s in strides]
    card = ModelCard(
        name=name,
        kind=entry.kind,
        codec=entry.codec,
        codec_params=codec_params,
        untrained=checkpoint is None,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        file=out.name,
        sha256=sha256_file(out),
        bytes=out.stat().st_size,
        input=source.input.model_copy(update={"size_hw": (int(h), int(w))}),
        outputs=parity["outputs"],
        parity=parity,
        source={"training": training} if training is not None else None,
        licence={
            "code": "this project",
            "weights": "random initialisation" if checkpoint is None else "user",
            **(licence or {}),
        },
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_card(out.with_suffix(".json"), card)
    return card
