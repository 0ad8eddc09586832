"""OpenVINO sessions of ONNX files (the optional ``openvino`` extra; CPU device).

OpenVINO reads the ONNX file directly and keeps its batch axis dynamic. The precision is the
CPU plugin's ``INFERENCE_PRECISION_HINT``: ``f32`` for fp32 and int8 (QDQ files run their
quantized layers in int8, the rest in fp32), ``bf16`` on CPUs with AVX512-BF16/AMX, ``f16`` where
the CPU has it. The LATENCY hint with one stream per session: on few cores it was faster than the
THROUGHPUT hint, and the engine runs one session per worker thread anyway.

bf16 keeps the heads in fp32: the graph is cut at the last tensor every output depends on
(`split_heads`), the trunk before it runs in bf16 and the heads after it in fp32. The CPU plugin
ignores per-node precision marks (rt_info) under a bf16 hint, hence two compiled models. On
movenet-multipose (pose_samples keypoint AP, fp32 0.2776): all bf16 -0.0108 at 1.94x fp32's
batch-1 speed; trunk bf16 + heads fp32 -0.0086 at 1.62x; trunk fp32 + heads bf16 -0.0026 at 1.06x;
all bf16 but the six final 1x1 head convolutions -0.0118.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as opset

from models.runtime import CastBuffer

__all__ = ["OvModel", "cpu_capabilities", "split_heads"]

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


def split_heads(model: ov.Model) -> tuple[ov.Model, ov.Model] | None:
    """(trunk, heads): `model` cut at the latest tensor every output depends on, the heads taking
    it as their one input (outputs in the model's order). None when there is no such tensor, or
    when the heads would hold no convolution or matmul, or half or more of them. Rewires `model`."""
    ops = list(model.get_ordered_ops())
    results = {r.get_name() for r in model.get_results()}
    cut: ov.Output | None = None
    for op in reversed(ops):
        if op.get_type_name() in _SKIPPED_OPS:
            continue
        cut = next((o for o in op.outputs() if not _reaches_results_without(ops, results, o)), None)
        if cut is not None:
            break
    if cut is None:
        return None
    position = next(i for i, op in enumerate(ops) if op.get_name() == cut.get_node().get_name())
    compute = [op.get_type_name() in _COMPUTE_OPS for op in ops]
    heads_compute = sum(compute[position + 1 :])
    if heads_compute == 0 or heads_compute * 2 >= sum(compute):
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
    ) -> None:
        """`static_input`: compile for exactly this shape of the first input (else the file's own,
        dynamic, axes); the session then runs nothing else. `graph`: a serialized ONNX graph to run
        instead of the file's own."""
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
        parts = split_heads(model) if precision == "bf16" else None
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
        """Run one batch (N, ...) and return every output in `output_names` order (copies: the
        request reuses its output buffers on the next run)."""
        results = self.requests[0].infer({0: np.ascontiguousarray(self._cast(batch))}, share_inputs=True).to_tuple()
        for request in self.requests[1:]:  # the heads, on the trunk's output
            results = request.infer({0: results[0]}, share_inputs=True).to_tuple()
        return [np.array(r) for r in results]
