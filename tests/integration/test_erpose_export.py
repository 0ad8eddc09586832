"""ER-Pose-n exports to ONNX with a dynamic batch and matches PyTorch at batch 1 and 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.codecs.erpose import anchor_grid
from models.export import calibrate_batchnorm, export_onnx
from models.nets.erpose import INPUT_SIZE, erpose_n

pytestmark = [pytest.mark.integration, pytest.mark.train]

MAX_ABS_DIFF = 1e-3


def test_erpose_n_onnx_parity(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = erpose_n(INPUT_SIZE)
    calibrate_batchnorm(model, (3, INPUT_SIZE, INPUT_SIZE))
    with torch.no_grad():
        ref = model(torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE))
    assert isinstance(ref, torch.Tensor) and ref[..., 0].std() > 0.1  # outputs depend on the input

    out = tmp_path / "erpose-n.onnx"
    report = export_onnx(model, (3, INPUT_SIZE, INPUT_SIZE), out, output_names=["raw"])
    num_anchors = len(anchor_grid(INPUT_SIZE, model.strides)[0])
    (output,) = report["outputs"]
    assert isinstance(output["shape"][0], str)  # dynamic batch
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (raw,) = session.run(None, {"input": np.zeros((2, 3, INPUT_SIZE, INPUT_SIZE), np.float32)})
    assert raw.shape == (2, num_anchors, 52)
    assert report["max_abs_diff"]["batch1"] < MAX_ABS_DIFF
    assert report["max_abs_diff"]["batch8"] < MAX_ABS_DIFF
