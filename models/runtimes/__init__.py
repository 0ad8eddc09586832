"""Inference runtimes behind one `Session` protocol, and the precisions each can run.

- ``onnxruntime`` (`models.runtime.OrtModel`): fp32 and int8 (a QDQ file from
  ``poseserve models optimize``) on every provider; fp16 only through TensorRT (a GPU).
- ``openvino`` (`models.runtimes.openvino.OvModel`, the optional ``openvino`` extra): fp32, bf16
  (CPUs with AVX512-BF16/AMX), fp16 (CPUs with AMX-FP16) and int8 QDQ files.

A precision that is a runtime setting (OpenVINO bf16) still has its own file in the weights store,
so its card can say how much keypoint AP it costs (`models.optimize`). numpy + the runtimes only
(serving path); OpenVINO is imported only when it is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from models.errors import RuntimeUnavailableError
from models.runtime import OrtModel, Session

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "Precision",
    "Runtime",
    "open_session",
    "runtime_problem",
    "variant_name",
]

Runtime = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "fp16", "int8"]
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


def variant_name(model: str, runtime: Runtime, precision: Precision) -> str:
    """The weights-store name of a precision variant: the model itself for fp32 (any runtime reads
    the same ONNX file), else ``MODEL.RUNTIME-PRECISION`` (e.g. ``movenet-multipose.openvino-bf16``)."""
    return model if precision == "fp32" else f"{model}.{runtime}-{precision}"


def runtime_problem(runtime: Runtime, precision: Precision = "fp32", *, gpu: bool = False) -> str | None:
    """Why `runtime` cannot run `precision` here, or None when it can (nothing is loaded)."""
    if runtime == "onnxruntime":
        if precision == "bf16":
            return "ONNX Runtime has no bf16 CPU kernels; use --runtime openvino for bf16"
        if precision == "fp16" and not gpu:
            return "ONNX Runtime runs fp16 only through TensorRT, which needs an NVIDIA GPU"
        return None
    if importlib.util.find_spec("openvino") is None:
        return "the OpenVINO runtime is not installed: pip install 'poseserve[openvino]'"
    from models.runtimes.openvino import cpu_capabilities

    wanted = {"bf16": "BF16", "fp16": "FP16", "int8": "INT8"}.get(precision)
    if wanted is not None and wanted not in cpu_capabilities():
        return f"this CPU has no {precision} support in OpenVINO (capabilities: {', '.join(cpu_capabilities())})"
    return None


def open_session(
    path: Path,
    *,
    runtime: Runtime = "onnxruntime",
    precision: Precision = "fp32",
    providers: Sequence[str] = ("cuda", "cpu"),
    intra_op_threads: int = 0,
    allow_spinning: bool = True,
    static_input: tuple[int, ...] | None = None,
    graph: bytes | None = None,
    fp32_from: str | None = None,
) -> Session:
    """One session of the ONNX file at `path` on `runtime` at `precision`.

    `graph`: a serialized ONNX graph derived from that file to run instead (e.g. with heads cut by
    `models.sparse_heads`); `path` still names the session.

    `fp32_from`: where an OpenVINO bf16 graph hands over to fp32 (`OvModel`); None: before its heads.

    `static_input`: OpenVINO compiles for exactly this input shape (batch included), which then is
    the only one it runs: on a CPU that beat the file's dynamic axes by 5-8 % (movenet-multipose
    bf16 at 1x384x384x3, two sessions of one thread); ONNX Runtime ignores it.

    Raises `RuntimeUnavailableError` when the runtime is not installed or cannot run `precision`
    here (checked before anything is loaded).
    """
    gpu = any(p in ("cuda", "tensorrt") for p in providers)
    problem = runtime_problem(runtime, precision, gpu=gpu)
    if problem is not None:
        raise RuntimeUnavailableError(problem)
    if runtime == "openvino":
        from models.runtimes.openvino import OvModel

        return OvModel(
            path,
            precision=precision,
            threads=intra_op_threads,
            static_input=static_input,
            graph=graph,
            fp32_from=fp32_from,
        )
    return OrtModel(
        path,
        graph=graph,
        providers=providers,
        intra_op_threads=intra_op_threads,
        fp16=precision == "fp16",
        allow_spinning=allow_spinning,
    )
