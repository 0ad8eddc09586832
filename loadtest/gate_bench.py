"""Throughput of a quality-gated top-down model (SHaRPose) under different gate outcomes.

Runs what the gated backend runs per batch, on onnxruntime directly: the coarse graph on a batch of
crops, then the fine graph on only the crops the gate refines, as one smaller batch. Policies:

- ``never``: threshold 0, no crop refined (the coarse stage alone);
- ``always``: threshold above 1, every crop refined;
- ``mix50``: the threshold at the median predicted quality of the batch, half of it refined;
- ``served``: the backend's threshold (default 0.95) on the served weights' own quality scores
  (an untrained export's Q sits near 0.5, so it refines every crop).

Measured, never asserted (not a test). Crops are cut from the ``pose_samples`` photos when
``--shared-dir`` has them, else random pixels. The model is exported untrained into ``--model-dir``
when it is not there yet (the report says so)::

    python -m loadtest.gate_bench --model sharpose-s --model-dir /tmp/models --batch 8 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.pipelines import build
from models.pipelines.sharpose import GatedCropPose
from models.registry import MODELS
from models.runtime import OrtModel
from models.weights import WeightsStore

__all__ = ["bench_gate", "main"]


def _crops(pose: GatedCropPose, batch: int, shared_dir: Path | None) -> np.ndarray:
    w, h = pose.crop_wh
    rng = np.random.default_rng(0)
    photos = sorted((shared_dir / "data/pose_samples/images").glob("*.jpg")) if shared_dir else []
    rows = []
    for i in range(batch):
        if photos:
            image = cv2.imread(str(photos[i % len(photos)]))[:, :, ::-1]
            crop = cv2.resize(np.ascontiguousarray(image), (w, h))
        else:
            crop = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        rows.append(pose.preprocess_crop(crop))
    return np.stack(rows)


def bench_gate(
    coarse: OrtModel, fine: OrtModel, rows: np.ndarray, threshold: float, min_seconds: float
) -> dict[str, Any]:
    """Crops per second of coarse-on-all + fine-on-the-refined at ``threshold``."""
    times: list[float] = []
    refined = 0
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline or len(times) < 3:
        started = time.perf_counter()
        outputs = coarse.run(rows)
        mask = outputs[1].reshape(-1) < threshold
        refined = int(mask.sum())
        if refined:
            fine.run_inputs([rows[mask], outputs[2][mask], outputs[3][mask]])
        times.append(time.perf_counter() - started)
    median = float(np.median(times))
    return {
        "threshold": threshold,
        "batch": len(rows),
        "refined": refined,
        "iters": len(times),
        "batch_ms_p50": round(1000 * median, 2),
        "crops_per_s": round(len(rows) / median, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sharpose-s")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--shared-dir", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = ORT default)")
    parser.add_argument("--threshold", type=float, default=0.95, help="the served gate threshold")
    parser.add_argument("--providers", default="cpu", help="comma-separated: cpu, cuda, tensorrt")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args(argv)

    store = WeightsStore(args.model_dir)
    exported = False
    if not store.available(args.model):
        from models.export import export_to_store

        export_to_store(args.model, args.model_dir)
        exported = True
    stored = store.require(args.model)
    pose = build.crop_pose(MODELS[args.model], stored.card)
    assert isinstance(pose, GatedCropPose)
    providers = tuple(args.providers.split(","))
    kwargs: dict[str, Any] = {"providers": providers, "intra_op_threads": args.threads}
    coarse = OrtModel(stored.path, **kwargs)
    fine = OrtModel(store.require(pose.fine_model).path, **kwargs)
    rows = _crops(pose, args.batch, args.shared_dir)
    quality = coarse.run(rows)[1].reshape(-1)
    bench_gate(coarse, fine, rows, 2.0, 0.0)  # first runs: memory and kernels
    policies = {
        "never": 0.0,
        "always": 2.0,
        "mix50": float(np.median(quality)) + 1e-7,
        "served": args.threshold,
    }
    rows_out = [{"policy": name, **bench_gate(coarse, fine, rows, t, args.seconds)} for name, t in policies.items()]
    report = {
        "model": args.model,
        "untrained": stored.card.untrained,
        "exported_now": exported,
        "providers": coarse.providers,
        "quality": [round(float(q), 4) for q in quality],
        "rows": rows_out,
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
