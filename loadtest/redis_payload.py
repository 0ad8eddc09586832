"""What an image job should carry over Redis: the encoded image or the preprocessed tensor.

For a real photo at several sizes, measures the job size and the time of each side: the gateway's
work before XADD (none / decode + preprocess + serialise), the Redis round trip (XADD ->
XREADGROUP -> XACK on a real server) and the worker's work before inference (decode + preprocess /
deserialise). Needs `redis-server` on PATH and the pose sample photos (POSESERVE_SHARED_DIR).

    python -m loadtest.redis_payload [--repeats 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import redis.asyncio as aioredis

from models import registry
from models.pipelines import build
from models.pipelines.base import PipelineOptions
from service.imaging import decode_image
from service.spawn import free_port
from tests.support import sample_jpeg


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _time(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return _ms(samples)


async def _round_trip(url: str, payload: bytes, repeats: int) -> float:
    client = aioredis.Redis.from_url(url)
    stream = f"bench:{len(payload)}"
    await client.xgroup_create(stream, "g", id="0", mkstream=True)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await client.xadd(stream, {"image": payload}, maxlen=100, approximate=True)
        got = await client.xreadgroup("g", "c", {stream: ">"}, count=1)
        await client.xack(stream, "g", got[0][1][0][0])
        samples.append(time.perf_counter() - started)
    await client.delete(stream)
    await client.aclose()
    return _ms(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    entry = registry.BACKENDS["movenet-multipose"]
    pipeline = build.single_stage(entry, None, PipelineOptions())
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
        rows = []
        for side in (640, 1280, 1920):
            jpeg = sample_jpeg(max_side=side)
            rgb = decode_image(jpeg, max_pixels=40_000_000)
            tensor, _ = pipeline.preprocess(rgb)
            prepared = np.ascontiguousarray(tensor).tobytes()

            def gateway_tensor(jpeg: bytes = jpeg) -> bytes:
                t, _ = pipeline.preprocess(decode_image(jpeg, max_pixels=40_000_000))
                return np.ascontiguousarray(t).tobytes()

            def worker_image(jpeg: bytes = jpeg) -> np.ndarray:
                return pipeline.preprocess(decode_image(jpeg, max_pixels=40_000_000))[0]

            def worker_tensor(prepared: bytes = prepared, shape: tuple[int, ...] = tensor.shape) -> np.ndarray:
                return np.frombuffer(prepared, np.uint8).reshape(shape)

            rows.append(
                {
                    "image": f"{rgb.shape[1]}x{rgb.shape[0]}",
                    "encoded_kb": round(len(jpeg) / 1024, 1),
                    "tensor_kb": round(len(prepared) / 1024, 1),
                    "encoded_redis_ms": asyncio.run(_round_trip(url, jpeg, args.repeats)),
                    "tensor_redis_ms": asyncio.run(_round_trip(url, prepared, args.repeats)),
                    "gateway_decode_preprocess_ms": _time(gateway_tensor, args.repeats // 4),
                    "worker_decode_preprocess_ms": _time(worker_image, args.repeats // 4),
                    "worker_from_tensor_ms": _time(worker_tensor, args.repeats),
                    "raw_rgb_kb_topdown": round(rgb.nbytes / 1024, 1),
                }
            )
        print(json.dumps(rows, indent=1))
    finally:
        server.kill()
        server.wait(timeout=10)


if __name__ == "__main__":
    cv2.setNumThreads(1)
    main()
