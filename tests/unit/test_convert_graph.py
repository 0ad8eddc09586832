"""ONNX graph surgery: a converter-style graph pinned to batch 1 runs any batch after the fix."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import skip_unless_ci

try:
    from onnx import ModelProto, TensorProto, helper, numpy_helper
except ImportError as exc:
    skip_unless_ci(f"the 'convert' extra (onnx) is not installed: {exc}")

from models.convert.graph import cut_at_outputs, find_output, make_batch_dynamic

pytestmark = pytest.mark.unit


def pinned_model() -> ModelProto:
    """x (1, 4, 3) -> Reshape [1, -1] -> Relu, and a shape computed as Cast(Add([1, 2, 6], 0))."""
    nodes = [
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"], name="scope/flat"),
        helper.make_node("Relu", ["flat"], ["relu_out"], name="scope/relu"),
        helper.make_node("Add", ["base_shape", "zero"], ["shape_sum"], name="shape_add"),
        helper.make_node("Cast", ["shape_sum"], ["shape_i64"], name="shape_cast", to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "shape_i64"], ["y"], name="scope/y"),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1, 2, 6], np.int32), "base_shape"),
        numpy_helper.from_array(np.array(0, np.int32), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "pinned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3])],
        [
            helper.make_tensor_value_info("relu_out", TensorProto.FLOAT, [1, 12]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(model: ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_make_batch_dynamic_fixes_constant_and_folded_reshapes() -> None:
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    fixed = make_batch_dynamic(pinned_model())

    relu_out, y = run(fixed, x)

    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    np.testing.assert_array_equal(relu_out, np.maximum(x.reshape(5, 12), 0))
    np.testing.assert_array_equal(y, x.reshape(5, 2, 6))


def test_cut_at_outputs_renames_and_keeps_only_what_is_needed() -> None:
    model = pinned_model()
    flat = find_output(model, "fla", "Reshape")
    cut = cut_at_outputs(model, [flat], rename={flat: "features"})

    assert [o.name for o in cut.graph.output] == ["features"]
    assert {n.op_type for n in cut.graph.node} == {"Reshape", "Identity"}
    x = np.ones((3, 4, 3), np.float32)
    (features,) = run(cut, x)
    assert features.shape == (3, 12)
    with pytest.raises(KeyError, match="expected one"):
        find_output(model, "s")
