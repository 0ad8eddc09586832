"""OpenVINO sessions of ONNX files (the optional ``openvino`` extra; CPU device).

OpenVINO reads the ONNX file directly and keeps its batch axis dynamic. The precision is the
CPU plugin's ``INFERENCE_PRECISION_HINT``: ``f32`` for fp32 and int8 (QDQ files run their
quantized layers in int8, the rest in fp32), ``bf16`` on CPUs with AVX512-BF16/AMX, ``f16`` where
the CPU has it. The LATENCY hint with one stream per session: on few cores it was faster than the
THROUGHPUT hint, and the engine runs one session per worker thread anyway.

bf16 runs an fp32 tail: the graph is cut after a tensor every output depends on (`split_heads`),
the trunk before it runs in bf16 and the tail after it in fp32. The CPU plugin ignores per-node
precision marks (rt_info) under a bf16 hint, hence two compiled models. Where to cut is the
variant's (`VariantInfo.fp32_from`): `models optimize` tries the places `fp32_cuts` offers, latest
first, and keeps the first whose keypoint AP stays within budget; without a record, just before the
heads. On movenet-multipose (pose_samples keypoint AP, fp32 0.2776): all bf16 -0.0108 at 1.94x
fp32's batch-1 speed; fp32 heads -0.0086 at 1.62x on one CPU and package set, -0.0111 on another;
fp32 from the last 1x1 convolution before the heads -0.0072 there, at the same speed; trunk fp32 +
heads bf16 -0.0026 at 1.06x.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as opset

from models.runtime import CastBuffer

__all__ = ["OvModel", "cpu_capabilities", "fp32_cut_names", "fp32_cuts", "split_heads", "tensor_name"]

logger = logging.getLogger(__name__)

_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f16"}
_DTYPES: dict[str, Any] = {"f32": np.float32, "i32": np.int32, "u8": np.uint8}
_COMPUTE_OPS = frozenset({"Convolution", "GroupConvolution", "MatMul"})
_SKIPPED_OPS = frozenset({"Result", "Constant", "Parameter"})


def _reaches_results_without(ops: list[Any], results: set[str], cut: ov.Output) -> bool:
    """Whether some output still depends on a parameter when `cut` (an op's output) is removed."""
    cut_name, cut_index = cut.get_node().get_name(), cut.get_index()
    reached: set[str] = set()
    for op in ops:  # topological order
        if op.get_type_name() == "Parameter":
            reached.add(op.get_name())
            continue
        for port in op.inputs():
            source = port.get_source_output()
            name = source.get_node().get_name()
            if name in reached and not (name == cut_name and source.get_index() == cut_index):
                reached.add(op.get_name())
                break
    return bool(reached & results)


def fp32_cuts(model: ov.Model, named: str | None = None) -> Iterator[ov.Output]:
    """Where a bf16 trunk may hand over to an fp32 tail, latest first: the named tensors every
    output depends on, after which some but fewer than half of the convolutions and matmuls run
    (`named`: only the tensor of that name, if it is one). Of cuts with the same convolutions and
    matmuls after them, only the latest."""
    ops = list(model.get_ordered_ops())
    results = {r.get_name() for r in model.get_results()}
    compute = [op.get_type_name() in _COMPUTE_OPS for op in ops]
    total, tail, yielded_at = sum(compute), 0, 0
    for op, is_compute in zip(reversed(ops), reversed(compute), strict=True):
        if tail * 2 >= total:
            return
        if tail > yielded_at and op.get_type_name() not in _SKIPPED_OPS:
            for output in op.outputs():
                names = output.get_names()
                if (named in names if named is not None else names) and not _reaches_results_without(
                    ops, results, output
                ):
                    yield output
                    yielded_at = tail
                    break
        tail += is_compute


def tensor_name(output: ov.Output) -> str:
    """An ONNX tensor's name as OpenVINO keeps it (one of the output's names, the same each read)."""
    return min(output.get_names())


def fp32_cut_names(path: Path) -> list[str]:
    """The `tensor_name`s of `fp32_cuts` in the ONNX file at `path`, latest first."""
    return [tensor_name(cut) for cut in fp32_cuts(_core().read_model(str(path)))]


def split_heads(model: ov.Model, fp32_from: str | None = None) -> tuple[ov.Model, ov.Model] | None:
    """(trunk, tail): `model` cut after the tensor named `fp32_from`, else after the latest of
    `fp32_cuts`; the tail takes it as its one input (outputs in the model's order). None when there
    is no such tensor. Raises ValueError when `fp32_from` names none of `fp32_cuts`. Rewires `model`."""
    cut = next(fp32_cuts(model, fp32_from), None)
    if cut is None:
        if fp32_from is not None:
            raise ValueError(f"{fp32_from} is not a tensor where this graph can be cut into trunk and tail")
        return None
    consumers = list(cut.get_target_inputs())
    trunk = ov.Model([cut], list(model.get_parameters()), "trunk")
    feature = opset.parameter(cut.get_partial_shape(), cut.get_element_type(), name="trunk_output")
    for port in consumers:
        port.replace_source_output(feature.output(0))
    return trunk, ov.Model([r.input_value(0) for r in model.get_results()], [feature], "heads")


@functools.cache
def _core() -> ov.Core:
    return ov.Core()


def cpu_capabilities() -> tuple[str, ...]:
    """What the CPU plugin can run here, e.g. ``('BF16', 'FP32', 'INT8', ...)``."""
    return tuple(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OvModel:
    """One compiled model and its infer request. Not thread-safe: one `OvModel` per worker thread."""

    def __init__(
        self,
        path: Path,
        *,
        precision: str = "fp32",
        threads: int = 0,
        static_input: tuple[int, ...] | None = None,
        graph: bytes | None = None,
        fp32_from: str | None = None,
    ) -> None:
        """`static_input`: compile for exactly this shape of the first input (else the file's own,
        dynamic, axes); the session then runs nothing else. `graph`: a serialized ONNX graph to run
        instead of the file's own. `fp32_from` (bf16): the tensor after which the graph runs in fp32
        (`split_heads`; the variant's card records it)."""
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            # No pinning: each compiled model would pin its threads from the first core on, not
            # knowing of the others, so two single-thread workers shared one core (26 img/s for
            # movenet-multipose bf16 on 2 cores, 54 unpinned); and a pinned thread cannot move away
            # from the decode threads and the event loop, which the server runs beside it.
            "ENABLE_CPU_PINNING": False,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.path = path
        self.precision = precision
        self.static_input = static_input
        model = _core().read_model(graph if graph is not None else str(path))
        if static_input is not None:
            model.reshape({0: ov.PartialShape(list(static_input))})
        # the ONNX output names (a compiled model's outputs carry more aliases than the graph's own)
        self.output_names: list[str] = [r.get_friendly_name().removesuffix("/sink_port_0") for r in model.get_results()]
        parts = split_heads(model, fp32_from) if precision == "bf16" else None
        if parts is None:
            self.compiled = [_core().compile_model(model, "CPU", config)]
        else:  # trunk in bf16, heads in fp32
            trunk, heads = parts
            f32 = {**config, "INFERENCE_PRECISION_HINT": "f32"}
            self.compiled = [_core().compile_model(trunk, "CPU", config), _core().compile_model(heads, "CPU", f32)]
        self.requests = [c.create_infer_request() for c in self.compiled]
        self.providers: list[str] = [f"OpenVINO/CPU/{_HINTS[precision]}" + ("+f32-heads" if parts else "")]
        self.input_dtype = _DTYPES.get(self.compiled[0].inputs[0].get_element_type().get_type_name())
        self._cast = CastBuffer(self.input_dtype)
        logger.info("loaded %s with OpenVINO %s (%s)", path.name, ov.__version__, precision)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch (N, ...) and return every output in `output_names` order: copies (`infer`
        copies unless told to share; the request reuses its buffers on the next run). The trunk's
        output is shared instead, as the heads read it at once (for movenet-multipose a 885 KB copy
        fewer per image, and the outputs copied once, not twice: 0.4-0.7 ms less a run in a loop
        on one thread, too little to show served)."""
        inputs = {0: np.ascontiguousarray(self._cast(batch))}
        for request in self.requests[:-1]:  # the trunk, whose output is the heads' input
            inputs = {0: request.infer(inputs, share_inputs=True, share_outputs=True).to_tuple()[0]}
        return list(self.requests[-1].infer(inputs, share_inputs=True).to_tuple())
