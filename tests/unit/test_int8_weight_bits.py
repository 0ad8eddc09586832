"""`quantize_int8` keeps weights within 7 bits when asked (`reduce_range`, for CPUs whose int8
kernels saturate 16-bit sums), and uses the full 8 bits otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from models.optimize import quantize_int8  # noqa: E402


def _conv_model(path: Path) -> None:
    """input (1, 3, 16, 16) -> Conv 8x3x3x3 -> Relu -> Conv 4x8x1x1 (the output head, kept fp32)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 1, (4, 8, 1, 1)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2"], ["y"], name="head"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime reads
    onnx.save(model, str(path))


@pytest.mark.parametrize(("reduce_range", "bound"), [(True, 64), (False, 128)])
def test_quantized_weights_use_the_bits_asked_for(tmp_path: Path, reduce_range: bool, bound: int) -> None:
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _conv_model(src)
    rows = [np.random.default_rng(i).normal(0, 1, (3, 16, 16)).astype(np.float32) for i in range(4)]
    quantize_int8(src, dst, rows, reduce_range=reduce_range)
    weights = [
        numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer if t.data_type == TensorProto.INT8
    ]
    assert weights, "no int8 weights: the first convolution was not quantized"
    widest = max(int(np.abs(w.astype(np.int16)).max()) for w in weights)
    # per-channel symmetric: each channel's largest weight lands at the edge of the range asked for
    assert bound // 2 < widest <= bound
