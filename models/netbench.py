"""`poseserve bench net`: forward latency and throughput of the seed networks in PyTorch, on the
CPU or a CUDA GPU, per precision and batch size.

What is timed is the network's forward pass alone, on an input already on the device (no decode,
no resize, no copies to or from the device, no keypoint decoding): the figure the papers report
as a model's latency. On a GPU each timed call is bracketed by CUDA events and the median of the
calls is reported; ``graphs=True`` captures the forward once as a CUDA graph and replays it, which
takes the Python and kernel-launch overhead out of small batches (what a serving engine with a
fixed batch shape can do). Weights are random: speed does not depend on them.

torch side (never imported on the serving path).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from models.export import SEED_MODELS, build

__all__ = ["DTYPES", "NetPrecision", "forward_times"]

NetPrecision = Literal["fp32", "fp16", "bf16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _timed_cuda(step: Callable[[], Any], iters: int) -> list[float]:
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in pairs:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in pairs]


def _timed_cpu(step: Callable[[], Any], iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def _forward(net: torch.nn.Module, x: torch.Tensor, graphs: bool) -> Callable[[], Any]:
    """A call that runs the forward on ``x``: the module itself, or the replay of a CUDA graph of it."""
    if not graphs:
        return lambda: net(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as graph capture requires
        for _ in range(3):
            net(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        net(x)
    return graph.replay


def forward_times(
    models: Sequence[str],
    *,
    device: str = "cpu",
    precisions: Sequence[NetPrecision] = ("fp32",),
    batches: Sequence[int] = (1,),
    graphs: bool = False,
    iters: int = 50,
    warmup: int = 10,
    input_hw: tuple[int, int] | None = None,
    channels_last: bool = True,
) -> list[dict[str, Any]]:
    """One row per model, precision and batch: median and p90 milliseconds per forward, images/s.

    A batch that does not fit in the device's memory, or a forward that fails (a CUDA graph that
    cannot capture it), ends that model's sweep at that precision with a row that says why.
    ``graphs`` needs a CUDA device.
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if graphs and not cuda:
        raise ValueError("CUDA graphs need a CUDA device")
    device_name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    timed = _timed_cuda if cuda else _timed_cpu
    rows: list[dict[str, Any]] = []
    for name in models:
        hw = input_hw or SEED_MODELS[name].input_hw
        torch.manual_seed(0)
        base = build(name, input_hw).eval()
        params_m = sum(p.numel() for p in base.parameters()) / 1e6
        for precision in precisions:
            net = base.to(device=dev, dtype=DTYPES[precision], memory_format=layout)  # type: ignore[call-overload]
            for batch in batches:
                row: dict[str, Any] = {
                    "model": name,
                    "input_hw": f"{hw[0]}x{hw[1]}",
                    "params_m": round(params_m, 2),
                    "device": device_name,
                    "precision": precision,
                    "graphs": graphs,
                    "channels_last": channels_last,
                    "batch": batch,
                }
                try:
                    with torch.inference_mode():
                        x = torch.randn(batch, 3, *hw, device=dev, dtype=DTYPES[precision])
                        x = x.contiguous(memory_format=layout)
                        step = _forward(net, x, graphs)
                        timed(step, warmup)
                        times = sorted(timed(step, iters))
                except torch.cuda.OutOfMemoryError:
                    rows.append({**row, "error": "out of memory"})
                    torch.cuda.empty_cache()
                    break
                except RuntimeError as exc:  # e.g. an operation a CUDA graph cannot capture
                    rows.append({**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
                    break
                median = statistics.median(times)
                rows.append(
                    {
                        **row,
                        "ms_p50": round(median, 3),
                        "ms_p90": round(times[int(0.9 * (len(times) - 1))], 3),
                        "img_per_s": round(batch * 1000.0 / median, 1),
                    }
                )
                if cuda:
                    torch.cuda.empty_cache()
    return rows
