"""ONNX export with a dynamic batch dimension, parity check against PyTorch, and the model card.

``export_onnx`` writes atomically (temp file in the target folder, then ``os.replace``), so a
reader never sees a half-written model. Parity is measured with onnxruntime on the CPU provider
at batch 1 and batch 8 on seeded random inputs; the figures go into the JSON card written by
``write_card`` beside the ``.onnx`` file.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.weights import sha256_file

__all__ = ["PARITY_BATCHES", "export_onnx", "sha256_file", "write_card"]

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


def write_card(path: Path, card: dict[str, Any]) -> None:
    """Write a model card as JSON, atomically.

    Expected fields: ``name``, ``untrained`` (bool), ``checkpoint`` (path or None), ``sha256``
    (of the ``.onnx``), ``input`` (e.g. ``{"name", "shape_nchw", "layout", "dtype"}``) and
    ``parity`` (the dict returned by ``export_onnx``). ``path`` is usually the ``.onnx`` path with
    a ``.json`` suffix.
    """
    required = {"name", "untrained", "checkpoint", "sha256", "input", "parity"}
    missing = required - card.keys()
    if missing:
        raise ValueError(f"model card is missing fields: {sorted(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".json.tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(card, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    os.replace(tmp_name, path)
