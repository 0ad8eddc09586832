"""The seed networks on one CUDA GPU: batch-1 latency per precision (eager and CUDA graph) beside
the papers' figures, and a batch sweep of throughput at fp16 with CUDA graphs.

    python -m loadtest.net_sweep --out bench-results/gpu    # writes net-gpu.json and prints tables

Built on `models.netbench.forward_times` (`poseserve bench net` runs one table of it); this only
fixes the set of runs, so that a GPU lent for a few minutes answers them all in one go. The
papers' figures are quoted as the papers give them, on their own GPUs (``PAPER_MS``, ``PAPER_FPS``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from models.export import SEED_MODELS
from models.netbench import forward_times

PAPER_MS: dict[str, str] = {
    "amfacpose-r34": "6.74 ms on RTX 4090 (9.90 ms RTX 3060)",
    "erpose-n": "10.59 ms on V100 (ONNX Runtime fp32)",
    "erpose-s": "12.54 ms on V100 (ONNX Runtime fp32)",
    "erpose-m": "14.92 ms on V100 (ONNX Runtime fp32)",
    "erpose-l": "16.95 ms on V100 (ONNX Runtime fp32)",
}
PAPER_FPS: dict[str, str] = {
    "sharpose-s": "498.3 fps on RTX 3090",
    "sharpose-b-384": "196.6 fps on RTX 3090",
}
SWEEP = (1, 2, 4, 8, 16, 32, 64, 128)


def run(out: Path, models: list[str], iters: int) -> dict[str, Any]:
    started = time.monotonic()
    doc: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "paper_ms": PAPER_MS,
        "paper_fps": PAPER_FPS,
    }
    tables = {
        "batch1_eager": dict(precisions=("fp32", "fp16", "bf16"), batches=(1,)),
        "batch1_graphs": dict(precisions=("fp32", "fp16", "bf16"), batches=(1,), graphs=True),
        "sweep_fp16_graphs": dict(precisions=("fp16",), batches=SWEEP, graphs=True),
    }
    out.mkdir(parents=True, exist_ok=True)
    for key, kwargs in tables.items():  # the file is rewritten after each table: a run cut short keeps the rest
        doc[key] = forward_times(models, device="cuda", iters=iters, **kwargs)  # type: ignore[arg-type]
        doc["wall_s"] = round(time.monotonic() - started, 1)
        (out / "net-gpu.json").write_text(json.dumps(doc, indent=1))
        print(f"{key}: done at {doc['wall_s']} s", flush=True)
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--models", default="all", help="comma-separated seed models, or 'all'")
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("PyTorch sees no CUDA device here")
    models = sorted(SEED_MODELS) if args.models == "all" else args.models.split(",")
    doc = run(args.out, models, args.iters)
    for key in ("batch1_eager", "batch1_graphs"):
        print(key)
        for r in doc[key]:
            paper = PAPER_MS.get(r["model"], "")
            print(f"  {r['model']:15} {r['precision']:5} {r.get('ms_p50', r.get('error'))!s:>8} ms  {paper}")
    print("sweep_fp16_graphs (img/s)")
    for r in doc["sweep_fp16_graphs"]:
        print(f"  {r['model']:15} b{r['batch']:<4} {r.get('img_per_s', r.get('error'))}")
    print(f"wall {doc['wall_s']} s")


if __name__ == "__main__":
    main()
