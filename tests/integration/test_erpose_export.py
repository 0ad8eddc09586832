"""ER-Pose-n exports to ONNX with a dynamic batch and matches PyTorch at batch 1 and 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.codecs.erpose import anchor_grid
from models.export import export_onnx
from models.nets.erpose import INPUT_SIZE, erpose_n

pytestmark = pytest.mark.integration

MAX_ABS_DIFF = 1e-3


def _calibrate_batchnorm(model: nn.Module, size: int) -> None:
    """Set BN running stats from one standard-normal batch (the inputs ``export_onnx`` checks on).

    At init the stats are (0, 1): activations fade through the depth and every output is the
    same constant, which would make parity vacuous.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the stats
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
    model.eval()


def test_erpose_n_onnx_parity(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = erpose_n(INPUT_SIZE)
    _calibrate_batchnorm(model, INPUT_SIZE)
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
