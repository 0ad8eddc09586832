"""amfacpose-r18 and lehrnet-w32 export to ONNX with a dynamic batch and match PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.export import export_onnx, sha256_file, write_card
from models.nets import amfacpose, lehrnet
from models.zoo import calibrate_batchnorm

pytestmark = [pytest.mark.integration, pytest.mark.train]

MAX_ABS_DIFF = 1e-3
CASES = {
    "amfacpose-r18": (amfacpose.VARIANTS, amfacpose.INPUT_HW, ["x_logits", "y_logits"]),
    "lehrnet-w32": (lehrnet.VARIANTS, lehrnet.INPUT_HW, ["heatmaps"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_parity_batch_1_and_8(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    variants, input_hws, output_names = CASES[name]
    model = variants[name]()
    input_hw = input_hws[name]
    calibrate_batchnorm(model, (3, *input_hw))
    with torch.no_grad():
        ref = model(torch.randn(2, 3, *input_hw))
    first = ref[0] if isinstance(ref, tuple) else ref
    assert first[0].std() > 1e-3 and (first[0] - first[1]).abs().max() > 1e-3

    out = tmp_path / f"{name}.onnx"
    report = export_onnx(model, (3, *input_hw), out, output_names=output_names)
    assert [o["name"] for o in report["outputs"]] == output_names
    assert report["inputs"][0]["shape"][1:] == [3, *input_hw]
    assert all(isinstance(o["shape"][0], str) for o in [*report["inputs"], *report["outputs"]])
    assert report["max_abs_diff"]["batch1"] < MAX_ABS_DIFF
    assert report["max_abs_diff"]["batch8"] < MAX_ABS_DIFF

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    results = session.run(None, {"input": np.zeros((3, 3, *input_hw), np.float32)})
    assert all(r.shape[0] == 3 for r in results)

    card_path = out.with_suffix(".json")
    write_card(
        card_path,
        {
            "name": name,
            "untrained": True,
            "checkpoint": None,
            "sha256": sha256_file(out),
            "input": {"name": "input", "shape_nchw": ["batch", 3, *input_hw], "layout": "RGB, ImageNet-normalised"},
            "parity": report,
        },
    )
    card = json.loads(card_path.read_text())
    assert card["untrained"] is True and len(card["sha256"]) == 64
    assert not list(tmp_path.glob("*.tmp"))
