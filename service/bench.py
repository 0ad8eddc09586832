"""Benchmarks: raw model throughput (`bench model`) and served throughput/latency (`bench http`).

Numbers are measured, never asserted: tests do not time anything. Results print as a table and
are written as JSON so runs can be compared side by side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models import registry
from models.pipelines import build
from models.pipelines.base import PipelineOptions
from models.pipelines.topdown import make_crops
from models.runtime import OrtModel
from models.weights import WeightsStore
from service.backends.single_stage import sparse_pipeline
from service.config import BackendSettings
from service.imaging import decode_image

__all__ = ["bench_http", "bench_model", "format_table", "percentile", "write_json"]

logger = logging.getLogger(__name__)


def percentile(values_ms: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values_ms, dtype=np.float64), q)) if values_ms else float("nan")


def _time_runs(
    model: OrtModel, row: np.ndarray, batches: Sequence[int], min_seconds: float, min_iters: int
) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        x = np.stack([row] * batch)
        for _ in range(2):
            model.run(x)
        times_ms: list[float] = []
        started = time.perf_counter()
        while len(times_ms) < min_iters or time.perf_counter() - started < min_seconds:
            t = time.perf_counter()
            model.run(x)
            times_ms.append((time.perf_counter() - t) * 1000)
        rows.append(
            {
                "batch": batch,
                "iters": len(times_ms),
                "latency_p50_ms": round(percentile(times_ms, 50), 2),
                "latency_p99_ms": round(percentile(times_ms, 99), 2),
                "throughput_ips": round(batch * 1000 / statistics.mean(times_ms), 2),
                "providers": model.providers,
            }
        )
    return rows


def bench_model(
    name: str,
    store: WeightsStore,
    settings: BackendSettings,
    *,
    batches: Sequence[int],
    image: bytes,
    detector: str = "nanodet",
    min_seconds: float = 3.0,
    min_iters: int = 5,
) -> list[dict[str, Any]]:
    """Time `session.run` alone (no pre/post-processing) at each batch size on a real image.

    Single-stage: one "pose" stage over whole images. Top-down: the "detect" stage over whole
    images, then the "pose" stage over a real person crop of that image (crops per second).
    """
    entry = registry.backend(name)
    rgb = decode_image(image, max_pixels=100_000_000)

    def session(weights: str, graph: bytes | None = None) -> OrtModel:
        return OrtModel(
            store.require(weights).path,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            fp16=settings.fp16,
            graph=graph,
        )

    stages: list[tuple[str, OrtModel, np.ndarray]] = []
    if entry.kind == "top-down":
        det_entry = registry.DETECTORS[detector]
        det = build.detector(det_entry, store.card(det_entry.name), PipelineOptions(max_persons=64))
        det_model = session(det_entry.name)
        det_row, geometry = det.preprocess(rgb)
        boxes, _ = det.postprocess([o[0] for o in det_model.run(det_row[None])], geometry)
        h, w = rgb.shape[:2]
        box = boxes[:1] if len(boxes) else np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], np.float32)
        crop_rows, _ = make_crops(rgb, box, build.crop_pose(entry, store.card(entry.name)))
        stages = [("detect", det_model, det_row), ("pose", session(entry.name), crop_rows[0])]
    else:
        pipeline, graph = sparse_pipeline(entry, store.require(entry.name), settings)  # the graph served
        row, _ = pipeline.preprocess(rgb)
        stages = [("pose", session(entry.name, graph), row)]
    return [
        {"backend": name, "stage": stage, "input_shape": list(row.shape), **timing}
        for stage, model, row in stages
        for timing in _time_runs(model, row, batches, min_seconds, min_iters)
    ]


async def _http_level(
    url: str, image: bytes, content_type: str, concurrency: int, seconds: float, headers: dict[str, str]
) -> dict[str, Any]:
    latencies_ms: list[float] = []
    inference_ms: list[float] = []  # the server's own model time per answer (`timing_ms.inference`)
    server_ms: list[float] = []  # the server's own time per answer, arrival to answer (`timing_ms.total`)
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        await client.post(url, content=image, headers={"content-type": content_type, **headers})  # warm-up
        stop_at = time.perf_counter() + seconds

        async def user() -> None:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                r = await client.post(url, content=image, headers={"content-type": content_type, **headers})
                if r.status_code == 200:
                    latencies_ms.append((time.perf_counter() - t) * 1000)
                    timing = r.json()["timing_ms"]
                    inference_ms.append(timing["inference"])
                    server_ms.append(timing["total"])
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies_ms),
        "errors": errors,
        "latency_p50_ms": round(percentile(latencies_ms, 50), 2),
        "latency_p99_ms": round(percentile(latencies_ms, 99), 2),
        "inference_p50_ms": round(percentile(inference_ms, 50), 2),
        # the rest of latency_p50_ms is this client's and the connection's, on the same cores
        "server_p50_ms": round(percentile(server_ms, 50), 2),
        "throughput_rps": round(len(latencies_ms) / elapsed, 2),
    }


def bench_http(
    base_url: str,
    image: bytes,
    *,
    concurrency: Sequence[int],
    seconds: float,
    backend: str | None = None,
    content_type: str = "image/jpeg",
    api_key: str | None = None,
) -> list[dict[str, Any]]:
    """Closed-loop load: `c` clients each send the next request as soon as the last returns."""
    url = base_url.rstrip("/") + "/v1/pose" + (f"?backend={backend}" if backend else "")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return [asyncio.run(_http_level(url, image, content_type, c, seconds, headers)) for c in concurrency]


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(str(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def write_json(path: Path, kind: str, rows: list[dict[str, Any]], **context: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "kind": kind,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        **context,
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=2))
