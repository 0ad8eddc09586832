"""ONNX graph surgery for converted models: cut at raw heads, free the batch (and H, W) dimension.

Converters pin batch = 1 in two places: the graph's input/output shapes, and Reshape shape
constants whose leading entry is 1. A leading 1 is rewritten to 0 ("copy this dim from the
input"; ONNX Reshape with ``allowzero = 0``), which is correct where dim 0 of the reshaped tensor
is the batch. Graphs whose tails also Squeeze or Concat over the batch (MoveNet's in-graph
decoding) are cut at their raw head outputs instead; decoding then lives in ``models.codecs``.
Callers verify the result (batch N == N single runs) before serving it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference, utils
from onnx.reference import ReferenceEvaluator

__all__ = ["cut_at_outputs", "find_output", "fix_batch_reshapes", "make_batch_dynamic"]

logger = logging.getLogger(__name__)


def find_output(model: onnx.ModelProto, prefix: str, op_type: str | None = None) -> str:
    """The one node output whose name starts with ``prefix`` (and whose node is ``op_type``).

    Converter suffixes (``BiasAdd__119:0``) vary between converter versions; a scope prefix such
    as ``StatefulPartitionedCall/center_0/conv2d_4/`` does not. Raises ``KeyError`` unless
    exactly one output matches.
    """
    hits = [
        out
        for node in model.graph.node
        if op_type is None or node.op_type == op_type
        for out in node.output
        if out.startswith(prefix)
    ]
    if len(hits) != 1:
        raise KeyError(f"expected one {op_type or 'node'} output starting with {prefix!r}, found {hits}")
    return hits[0]


def _constant_subgraph(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto | None:
    """A model computing ``tensor`` from initializers alone, or None if it depends on an input."""
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name: init for init in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    nodes: dict[int, onnx.NodeProto] = {}
    used: set[str] = set()
    stack, seen = [tensor], set()
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in inits:
            used.add(name)
            continue
        node = producers.get(name)
        if name in inputs or node is None or node.op_type in ("Shape", "Size"):
            return None
        nodes[id(node)] = node
        stack.extend(node.input)
    order = {id(node): k for k, node in enumerate(model.graph.node)}
    graph = helper.make_graph(
        sorted(nodes.values(), key=lambda n: order[id(n)]),
        "constant_shape",
        [],
        [helper.make_empty_tensor_value_info(tensor)],
        [inits[name] for name in sorted(used)],
    )
    return helper.make_model(graph, opset_imports=model.opset_import)


def _fold_reshape_shapes(model: onnx.ModelProto) -> None:
    """Replace Reshape shape inputs computed from constants only (e.g. Cast(Add(c, 0))) by initializers."""
    inits = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] in inits:
            continue
        sub = _constant_subgraph(model, node.input[1])
        if sub is None:
            continue
        (value,) = ReferenceEvaluator(sub).run(None, {})
        name = f"{node.input[1]}__folded"
        if name not in inits:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            inits.add(name)
        node.input[1] = name


def fix_batch_reshapes(model: onnx.ModelProto) -> int:
    """Rewrite Reshape shape constants ``[1, ...]`` to ``[0, ...]`` in place; returns how many.

    Shapes computed from constants only are folded into initializers first. A constant shared
    with a non-Reshape consumer is copied first, so only Reshapes change.
    """
    _fold_reshape_shapes(model)
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, idx))
    inits = {init.name: init for init in graph.initializer}
    fixed = 0
    for name, users in consumers.items():
        init = inits.get(name)
        reshape_users = [(n, i) for n, i in users if n.op_type == "Reshape" and i == 1]
        if init is None or not reshape_users:
            continue
        if any(a.name == "allowzero" and a.i for n, _ in reshape_users for a in n.attribute):
            continue
        shape = numpy_helper.to_array(init)
        if shape.ndim != 1 or shape.size < 2 or shape[0] != 1:
            continue
        new_shape = shape.copy()
        new_shape[0] = 0
        if len(reshape_users) == len(users):
            init.CopyFrom(numpy_helper.from_array(new_shape, name))
        else:
            new_name = f"{name}__batch0"
            graph.initializer.append(numpy_helper.from_array(new_shape, new_name))
            for node, idx in reshape_users:
                node.input[idx] = new_name
        fixed += 1
    logger.debug("rewrote %d Reshape shape constants to copy the batch dim", fixed)
    return fixed


def _set_dims(value: onnx.ValueInfoProto, dims: Mapping[int, str]) -> None:
    shape = value.type.tensor_type.shape
    for axis, param in dims.items():
        if axis < len(shape.dim):
            shape.dim[axis].Clear()
            shape.dim[axis].dim_param = param


def _forget_inner_shapes(model: onnx.ModelProto) -> None:
    """Drop stale value_info and output dims (they still say batch = 1); ORT re-infers them."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.Clear()


def make_batch_dynamic(model: onnx.ModelProto, input_dims: Mapping[int, str] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with dim 0 of every input symbolic (``N``) and batch Reshapes fixed.

    ``input_dims`` (axis -> symbol) frees more input axes, e.g. ``{0: "N", 1: "H", 2: "W"}``
    for an NHWC graph that accepts any size.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for inp in out.graph.input:
        _set_dims(inp, input_dims or {0: "N"})
    _forget_inner_shapes(out)
    fix_batch_reshapes(out)
    onnx.checker.check_model(out)
    return out


def cut_at_outputs(
    model: onnx.ModelProto,
    output_names: Sequence[str],
    *,
    input_dims: Mapping[int, str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The subgraph from the model's inputs to ``output_names``, with a dynamic batch.

    ``input_dims`` as in ``make_batch_dynamic`` (default ``{0: "N"}``). ``rename`` maps cut
    tensor names to the graph output names to publish (added as Identity nodes), in the order of
    ``output_names``. Uses ``onnx.utils.Extractor`` on the shape-inferred model.
    """
    inferred = shape_inference.infer_shapes(model)
    input_names = [i.name for i in inferred.graph.input]
    sub = utils.Extractor(inferred).extract_model(input_names, list(output_names))
    if rename:
        outputs = list(sub.graph.output)
        del sub.graph.output[:]
        for value in outputs:
            public = rename.get(value.name, value.name)
            if public != value.name:
                sub.graph.node.append(helper.make_node("Identity", [value.name], [public], name=public))
                value.name = public
            sub.graph.output.append(value)
    dynamic = make_batch_dynamic(sub, input_dims)
    logger.info("cut graph: %d -> %d nodes, outputs %s", len(model.graph.node), len(dynamic.graph.node), output_names)
    return dynamic
