"""Camera load test: N real RTSP cameras -> a real server -> WebSocket clients; freshness report.

    python -m loadtest.streams --cameras 4 --seconds 120 --out bench-results/streams-4.json
    python -m loadtest.streams --cameras 2,4,6,8 --seconds 40      # how many cameras it serves

Starts the camera fleet (GStreamer rtsp-server + ffmpeg, looping the pose2sim videos at --fps)
and `poseserve serve` on an ephemeral loopback port, subscribes every camera, keeps one
WebSocket client per camera, and reports per camera: result fps, capture->result age p50/p99/max,
frames by outcome, reader CPU. Everything started is stopped at the end.

Given several camera counts, it runs each in turn (a fresh fleet and server each) and names the
most cameras served: every camera's capture->result age p99 within `--age-budget-ms` (500) and
at least `--min-result-fps` results a second (default 0: any), at that count and every smaller one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets

from loadtest.fleet import CameraFleet, fleet_available
from service.spawn import spawned_server

REPO = Path(__file__).resolve().parents[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def collect_messages(ws_url: str, seconds: float) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with websockets.connect(ws_url, open_timeout=10) as ws:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + seconds
        while (left := stop_at - loop.time()) > 0:
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), timeout=left))
            except TimeoutError:
                break
            if "seq" in message:
                message["received_at"] = time.time()
                messages.append(message)
    return messages


def run(cameras: int, seconds: float, fps: int, max_fps: float, warmup_s: float) -> dict[str, Any]:
    reason = fleet_available()
    if reason:
        raise SystemExit(f"cannot start cameras: {reason}")
    shared = Path(os.environ.get("POSESERVE_SHARED_DIR", REPO.parent / "shared"))
    videos = [shared / "data/videos/pose2sim_multi" / f"cam0{(i % 4) + 1}.mp4" for i in range(cameras)]
    env = {"POSESERVE_STREAMS__DEFAULT_MAX_FPS": str(max_fps), "POSESERVE_LOG_LEVEL": "warning"}
    with CameraFleet(videos, fps=fps) as fleet, spawned_server(env) as (url, proc):
        ids = []
        for i, camera in enumerate(fleet.urls):
            r = httpx.post(f"{url}/v1/streams", json={"url": camera, "name": f"cam{i + 1}"}, timeout=30)
            r.raise_for_status()
            ids.append(r.json()["id"])
        time.sleep(warmup_s)
        before = {s["id"]: s for s in httpx.get(f"{url}/v1/streams", timeout=10).json()}
        cpu_before, wall_before = _cpu_seconds(proc.pid), time.monotonic()
        ws_base = url.replace("http://", "ws://")

        async def clients() -> list[list[dict[str, Any]]]:
            return list(await asyncio.gather(*(collect_messages(f"{ws_base}/v1/streams/{i}/ws", seconds) for i in ids)))

        received = asyncio.run(clients())
        after = {s["id"]: s for s in httpx.get(f"{url}/v1/streams", timeout=10).json()}
        server_cpu_pct = 100 * (_cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - wall_before)
    rows = []
    for sid, messages in zip(ids, received, strict=True):
        ages = np.array([m["latency_ms"]["capture_to_result"] for m in messages]) if messages else np.zeros(1)
        frames = {
            k: after[sid]["frames"].get(k, 0) - before[sid]["frames"].get(k, 0)
            for k in sorted(set(after[sid]["frames"]) | set(before[sid]["frames"]))
        }
        rows.append(
            {
                "stream": after[sid]["name"],
                "results": len(messages),
                "result_fps": round(len(messages) / seconds, 2),
                "input_fps": after[sid]["input_fps"],
                "age_p50_ms": round(float(np.percentile(ages, 50)), 1),
                "age_p99_ms": round(float(np.percentile(ages, 99)), 1),
                "age_max_ms": round(float(ages.max()), 1),
                "with_persons": sum(1 for m in messages if m["persons"]),
                "frames": frames,
                "reader_cpu_pct": round(100 * (after[sid]["reader_cpu_s"] - before[sid]["reader_cpu_s"]) / seconds, 1),
            }
        )
    return {
        "cameras": cameras,
        "camera_fps": fps,
        "max_fps": max_fps,
        "seconds": seconds,
        "server_cpu_pct": round(server_cpu_pct, 1),
        "rows": rows,
    }


def served(report: dict[str, Any], age_budget_ms: float, min_result_fps: float = 0.0) -> bool:
    """Whether every camera of a `run` got results, at least `min_result_fps` of them, at
    capture->result age p99 within the budget."""
    return all(
        r["results"] > 0 and r["result_fps"] >= min_result_fps and r["age_p99_ms"] <= age_budget_ms
        for r in report["rows"]
    )


def most_served(reports: list[dict[str, Any]], age_budget_ms: float, min_result_fps: float = 0.0) -> int:
    """The largest camera count of `reports` (each run at one count) served (`served`) with every
    smaller count served too: a count that failed caps the answer, even if a larger one then passed
    (noise, not capacity). 0 if the smallest failed."""
    most = 0
    for report in sorted(reports, key=lambda r: r["cameras"]):
        if not served(report, age_budget_ms, min_result_fps):
            break
        most = report["cameras"]
    return most


def _counts(text: str) -> list[int]:
    counts = sorted({int(c) for c in text.split(",") if c.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("camera counts are positive integers, e.g. 4 or 2,4,6,8")
    return counts


def _print(report: dict[str, Any]) -> None:
    columns = [
        "stream",
        "results",
        "result_fps",
        "input_fps",
        "age_p50_ms",
        "age_p99_ms",
        "age_max_ms",
        "reader_cpu_pct",
    ]
    print(f"{report['cameras']} cameras at {report['camera_fps']} fps:")
    print("  ".join(f"{c:>14}" for c in columns))
    for row in report["rows"]:
        print("  ".join(f"{row[c]!s:>14}" for c in columns), " frames:", row["frames"])
    results = sum(r["results"] for r in report["rows"]) / report["seconds"]
    print(f"results/s in all: {results:.1f}; server process CPU: {report['server_cpu_pct']}% of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description="camera load test")
    parser.add_argument("--cameras", type=_counts, default=[4], help="camera count, or counts (2,4,6,8) run in turn")
    parser.add_argument(
        "--age-budget-ms", type=float, default=500.0, help="capture->result age p99 a camera is served within"
    )
    parser.add_argument(
        "--min-result-fps", type=float, default=0.0, help="results per second each camera must get to be served"
    )
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--fps", type=int, default=25, help="camera frame rate")
    parser.add_argument("--max-fps", type=float, default=25.0, help="per-stream inference cap")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/streams.json"))
    args = parser.parse_args()
    reports = []
    for cameras in args.cameras:
        reports.append(run(cameras, args.seconds, args.fps, args.max_fps, args.warmup))
        _print(reports[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    if len(reports) > 1:
        limits = (args.age_budget_ms, args.min_result_fps)
        verdicts = ", ".join(f"{r['cameras']}: {'yes' if served(r, *limits) else 'no'}" for r in reports)
        print(f"served (age p99 <= {args.age_budget_ms:g} ms, >= {args.min_result_fps:g} results/s) -- {verdicts}")
        print(f"most cameras served: {most_served(reports, *limits)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
