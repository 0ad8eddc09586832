"""Two-graph export of a quality-gated seed network (SHaRPose): a coarse graph and a fine graph.

Why two graphs: the quality gate decides per crop whether the fine stage runs. Inside one ONNX
graph the decision could only be taken for a whole batch (an ``If`` node) or by masking (the fine
stage still computed for every crop), so a batch with one hard crop would cost as much as a batch
of hard crops. Two graphs let serving run the coarse graph on the whole batch and the fine graph
on only the crops with ``Q < Q_thres``, batched across frames on their own (``service.backends
.gated``).

- ``NAME.onnx`` (+ ``NAME.json``): ``input -> heatmaps, quality, tokens, patch_scores`` (the card
  the catalogue entry is served from; ``codec_params.fine_model`` names the second graph);
- ``NAME-fine.onnx`` (+ ``NAME-fine.json``): ``input, tokens, patch_scores -> heatmaps``.

Each graph has a dynamic batch axis on every input and output and is checked against PyTorch with
onnxruntime (CPU) at batch 1 and 8; the fine graph is fed the PyTorch coarse outputs of the same
seeded random crops. The fine card is written before the coarse one, so a readable coarse card
always finds its fine graph. torch side (never imported on the serving path).
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

from models.card import ModelCard, write_card
from models.export import PARITY_BATCHES, SEED_MODELS, build, load_checkpoint
from models.nets.sharpose import COARSE_OUTPUTS, FINE_INPUTS, CoarseGraph, FineGraph, SHaRPose
from models.registry import Trained
from models.weights import sha256_file

__all__ = ["export_graphs", "export_to_store", "fine_name"]


def fine_name(name: str) -> str:
    """The weights name of a gated model's fine graph."""
    return f"{name}-fine"


def _export(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: Path, inputs: list[str], outputs: list[str]
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                module,
                args,
                str(tmp),
                input_names=inputs,
                output_names=outputs,
                opset_version=17,
                dynamic_axes={n: {0: "batch"} for n in [*inputs, *outputs]},
                do_constant_folding=True,
                dynamo=False,
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.enable_mem_reuse = False  # parity only; see models.export
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _report(session: ort.InferenceSession, diffs: dict[str, float]) -> dict[str, Any]:
    return {
        "opset": 17,
        "inputs": [{"name": i.name, "shape": list(i.shape)} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": list(o.shape)} for o in session.get_outputs()],
        "max_abs_diff": diffs,
    }


def export_graphs(model: SHaRPose, coarse_out: Path, fine_out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write both graphs of ``model`` (eval mode) and check them: (coarse report, fine report)
    shaped like ``models.export.export_onnx``'s."""
    model = model.eval()
    h, w = model.cfg.input_hw
    with torch.no_grad():
        dummy = torch.zeros(1, 3, h, w)
        _, _, tokens, scores = model.coarse(dummy)
        _export(CoarseGraph(model), (dummy,), coarse_out, ["input"], list(COARSE_OUTPUTS))
        _export(FineGraph(model), (dummy, tokens, scores), fine_out, list(FINE_INPUTS), ["heatmaps"])
    coarse_s, fine_s = _session(coarse_out), _session(fine_out)
    coarse_diffs, fine_diffs = {}, {}
    for batch in PARITY_BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in model.coarse(torch.from_numpy(x))]
            ref_fine = model.fine(torch.from_numpy(x), torch.from_numpy(ref[2]), torch.from_numpy(ref[3])).numpy()
        got = coarse_s.run(None, {"input": x})
        coarse_diffs[f"batch{batch}"] = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref, strict=True))
        got_fine = fine_s.run(None, {"input": x, "tokens": ref[2], "patch_scores": ref[3]})[0]
        fine_diffs[f"batch{batch}"] = float(np.max(np.abs(got_fine - ref_fine)))
    return _report(coarse_s, coarse_diffs), _report(fine_s, fine_diffs)


def export_to_store(name: str, out: Path, *, checkpoint: Path | None = None, seed: int = 0) -> ModelCard:
    """Export gated model ``name`` to ``out`` (a ``.onnx`` path, or a folder for ``NAME.onnx``), its
    fine graph beside it as ``STEM-fine.onnx``, each with its card; returns the coarse graph's card."""
    entry = SEED_MODELS[name]
    source = entry.source
    assert isinstance(source, Trained)
    torch.manual_seed(seed)
    model = build(name)
    assert isinstance(model, SHaRPose)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    out = Path(out)
    if out.suffix != ".onnx":
        out = out / f"{name}.onnx"
    fine_out = out.with_name(f"{fine_name(out.stem)}.onnx")
    coarse_report, fine_report = export_graphs(model, out, fine_out)
    cfg = model.cfg
    common: dict[str, Any] = {
        "kind": entry.kind,
        "codec": entry.codec,
        "untrained": checkpoint is None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "input": source.input,
        "licence": {"code": "this project", "weights": "random initialisation" if checkpoint is None else "user"},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    params = {
        **source.codec_params,
        "alpha": cfg.alpha,
        "num_coarse": cfg.num_coarse,
        "num_refined": cfg.num_refined,
    }

    def graph_card(graph_name: str, path: Path, report: dict[str, Any], stage: dict[str, str]) -> ModelCard:
        """The card of one exported graph (`path`), written beside it."""
        card = ModelCard(
            name=graph_name,
            codec_params={**params, **stage},
            file=path.name,
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
            outputs=report["outputs"],
            parity=report,
            **common,
        )
        write_card(path.with_suffix(".json"), card)
        return card

    fine_card = graph_card(fine_name(out.stem), fine_out, fine_report, {"stage": "fine", "coarse_model": out.stem})
    return graph_card(
        name,
        out,
        coarse_report,
        {"stage": "coarse", "fine_model": fine_card.name, "fine_sha256": fine_card.sha256},
    )
