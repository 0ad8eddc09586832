"""OpenVINO sessions of ONNX files (the optional ``openvino`` extra; CPU device).

OpenVINO reads the ONNX file directly and keeps its batch axis dynamic. The precision is the
CPU plugin's ``INFERENCE_PRECISION_HINT``: ``f32`` for fp32 and int8 (QDQ files run their
quantized layers in int8, the rest in fp32), ``bf16`` on CPUs with AVX512-BF16/AMX, ``f16`` where
the CPU has it. The LATENCY hint with one stream per session: on few cores it was faster than the
THROUGHPUT hint, and the engine runs one session per worker thread anyway.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

__all__ = ["OvModel", "cpu_capabilities"]

logger = logging.getLogger(__name__)

_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f16"}
_DTYPES: dict[str, Any] = {"f32": np.float32, "i32": np.int32, "u8": np.uint8}


@functools.cache
def _core() -> ov.Core:
    return ov.Core()


def cpu_capabilities() -> tuple[str, ...]:
    """What the CPU plugin can run here, e.g. ``('BF16', 'FP32', 'INT8', ...)``."""
    return tuple(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OvModel:
    """One compiled model and its infer request. Not thread-safe: one `OvModel` per worker thread."""

    def __init__(self, path: Path, *, precision: str = "fp32", threads: int = 0) -> None:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.path = path
        self.precision = precision
        model = _core().read_model(str(path))
        # the ONNX output names (a compiled model's outputs carry more aliases than the graph's own)
        self.output_names: list[str] = [r.get_friendly_name().removesuffix("/sink_port_0") for r in model.get_results()]
        self.compiled = _core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.providers: list[str] = [f"OpenVINO/CPU/{_HINTS[precision]}"]
        self.input_dtype = _DTYPES.get(self.compiled.inputs[0].get_element_type().get_type_name())
        logger.info("loaded %s with OpenVINO %s (%s)", path.name, ov.__version__, precision)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch (N, ...) and return every output in `output_names` order (copies: the
        request reuses its output buffers on the next run)."""
        if self.input_dtype is not None and batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        results = self.request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
        return [np.array(r) for r in results.to_tuple()]
