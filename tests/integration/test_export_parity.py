"""amfacpose-r18 and lehrnet-w32 export to ONNX with a dynamic batch, match PyTorch, and carry a
typed card that the weights store verifies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.card import read_card
from models.export import build, calibrate_batchnorm, export_to_store
from models.registry import MODELS, Trained
from models.weights import WeightsStore

pytestmark = [pytest.mark.integration, pytest.mark.train]

MAX_ABS_DIFF = 1e-3


@pytest.mark.parametrize("name", ["amfacpose-r18", "lehrnet-w32"])
def test_onnx_parity_batch_1_and_8(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    source = MODELS[name].source
    assert isinstance(source, Trained)
    input_hw = source.input.size_hw
    model = build(name)
    calibrate_batchnorm(model, (3, *input_hw))
    with torch.no_grad():
        ref = model(torch.randn(2, 3, *input_hw))
    first = ref[0] if isinstance(ref, tuple) else ref
    assert first[0].std() > 1e-3 and (first[0] - first[1]).abs().max() > 1e-3

    card = export_to_store(name, tmp_path)
    report = card.parity
    assert [o["name"] for o in report["outputs"]] == list(source.output_names)
    assert report["inputs"][0]["shape"][1:] == [3, *input_hw]
    assert all(isinstance(o["shape"][0], str) for o in [*report["inputs"], *report["outputs"]])
    assert report["max_abs_diff"]["batch1"] < MAX_ABS_DIFF
    assert report["max_abs_diff"]["batch8"] < MAX_ABS_DIFF

    out = tmp_path / f"{name}.onnx"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    results = session.run(None, {"input": np.zeros((3, 3, *input_hw), np.float32)})
    assert all(r.shape[0] == 3 for r in results)

    assert read_card(out.with_suffix(".json")) == card
    assert card.untrained and card.kind == "top-down" and card.input.size_hw == input_hw
    assert WeightsStore(tmp_path).require(name).path == out
    assert not list(tmp_path.glob("*.tmp"))
