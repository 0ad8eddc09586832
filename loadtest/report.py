"""Bench report: a scenario matrix against one real server, written as Markdown with PNG plots.

    python -m loadtest.report                                  # cameras 1,2,4,6,8; HTTP concurrency 1,8,32
    python -m loadtest.report --cameras 1,2 --concurrency 1 --seconds 5 --out /tmp/report

Starts the camera fleet (GStreamer rtsp-server + ffmpeg looping the pose2sim videos at --fps) and
`poseserve serve` on a loopback port, then runs each scenario in turn on that one server:

- cameras N: N cameras subscribed at `max_fps` = camera fps, one WebSocket client each; per
  camera the result fps, capture->result age percentiles and frames by outcome;
- HTTP concurrency C: C closed-loop clients POSTing a 640x480 JPEG; latency percentiles and
  throughput.

Batch sizes of every scenario come from the server's own `poseserve_batch_size` histogram
(difference of two scrapes). Writes `report.json`, `REPORT.md` and the plots into --out
(default `loadtest/report/`). Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loadtest.burst import DEFAULT_PHOTO, jpeg_640x480
from loadtest.fleet import CameraFleet, fleet_available
from loadtest.streams import collect_messages
from service.bench import bench_http, percentile
from service.spawn import spawned_server

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "loadtest" / "report"
AGE_BUDGET_MS = 500.0
OUTCOMES = ("processed", "skipped", "dropped_overload", "dropped_stale", "decode_error", "error")


# -- pure parts (unit-tested) ------------------------------------------------------------------------
def batch_histogram(metrics_text: str) -> dict[str, float]:
    """Cumulative `poseserve_batch_size` bucket counts ({le: count}) summed over backends and stages."""
    buckets: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "poseserve_batch_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = sample.labels["le"]
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets


def batch_distribution(before: dict[str, float], after: dict[str, float]) -> dict[int, int]:
    """Batches by size bucket (upper bound) run between two scrapes, from cumulative buckets."""
    bounds = sorted((float(le), le) for le in after if le != "+Inf")
    out: dict[int, int] = {}
    below = 0.0
    for bound, le in bounds:
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative - below > 0:
            out[int(bound)] = round(cumulative - below)
        below = cumulative
    return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max (ms, 0.1 precision; nan without values)."""
    out = {f"p{q}": round(percentile(values, q), 1) for q in (50, 95, 99)}
    out["max"] = round(max(values), 1) if values else float("nan")
    return out


def max_cameras_within_budget(camera_cells: Sequence[dict[str, Any]], budget_ms: float = AGE_BUDGET_MS) -> int:
    """The largest N whose every camera kept capture->result age p99 within the budget (0: none)."""
    fitting = [
        cell["cameras"]
        for cell in camera_cells
        if cell["rows"] and all(row["age_ms"]["p99"] <= budget_ms for row in cell["rows"])
    ]
    return max(fitting, default=0)


# -- the run -----------------------------------------------------------------------------------------
@dataclass
class Progress:
    """One line per scenario on stderr-like output, with elapsed/total seconds."""

    total_s: float
    started: float = field(default_factory=time.monotonic)
    say: Callable[[str], None] = print

    def step(self, label: str) -> None:
        done = time.monotonic() - self.started
        pct = min(99, int(100 * done / self.total_s)) if self.total_s else 0
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        self.say(f"[{bar}] {pct:3d}%  {done:5.0f}/{self.total_s:.0f} s  {label}")


def _scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def _camera_cell(url: str, cameras: Sequence[str], seconds: float, warmup_s: float) -> dict[str, Any]:
    ids = []
    for i, camera in enumerate(cameras):
        r = httpx.post(f"{url}/v1/streams", json={"url": camera, "name": f"cam{i + 1}"}, timeout=30)
        r.raise_for_status()
        ids.append(r.json()["id"])
    try:
        time.sleep(warmup_s)
        before = {s["id"]: s for s in httpx.get(f"{url}/v1/streams", timeout=10).json()}
        batches_before = batch_histogram(_scrape(url))
        ws_base = url.replace("http://", "ws://")

        async def clients() -> list[list[dict[str, Any]]]:
            return list(await asyncio.gather(*(collect_messages(f"{ws_base}/v1/streams/{i}/ws", seconds) for i in ids)))

        received = asyncio.run(clients())
        after = {s["id"]: s for s in httpx.get(f"{url}/v1/streams", timeout=10).json()}
        batches = batch_distribution(batches_before, batch_histogram(_scrape(url)))
    finally:
        for sid in ids:
            httpx.delete(f"{url}/v1/streams/{sid}", timeout=30)
    rows = []
    for sid, messages in zip(ids, received, strict=True):
        frames = {o: after[sid]["frames"].get(o, 0) - before[sid]["frames"].get(o, 0) for o in OUTCOMES}
        rows.append(
            {
                "stream": after[sid]["name"],
                "input_fps": after[sid]["input_fps"],
                "result_fps": round(len(messages) / seconds, 2),
                "age_ms": percentiles([m["latency_ms"]["capture_to_result"] for m in messages]),
                "frames": frames,
            }
        )
    return {"cameras": len(cameras), "rows": rows, "batches": batches}


def _http_cell(url: str, image: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    batches_before = batch_histogram(_scrape(url))
    [row] = bench_http(url, image, concurrency=[concurrency], seconds=seconds)
    return {**row, "batches": batch_distribution(batches_before, batch_histogram(_scrape(url)))}


def run(
    cameras: Sequence[int],
    concurrency: Sequence[int],
    *,
    seconds: float,
    warmup_s: float,
    fps: int,
    shared: Path,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    reason = fleet_available()
    if reason and cameras:
        raise SystemExit(f"cannot start cameras: {reason}")
    videos = [shared / "data/videos/pose2sim_multi" / f"cam0{(i % 4) + 1}.mp4" for i in range(max(cameras, default=0))]
    image = jpeg_640x480(shared / "data/pose_samples" / DEFAULT_PHOTO)
    env = {"POSESERVE_STREAMS__DEFAULT_MAX_FPS": str(fps), "POSESERVE_LOG_LEVEL": "warning"}
    progress = Progress(total_s=len(cameras) * (seconds + warmup_s + 2) + len(concurrency) * (seconds + 1), say=say)
    report: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "camera_fps": fps,
        "seconds": seconds,
        "camera_cells": [],
        "http_cells": [],
    }
    with CameraFleet(videos, fps=fps) as fleet, spawned_server(env) as (url, _proc):
        report["backend"] = httpx.get(f"{url}/v1/backends", timeout=10).json()
        for n in cameras:
            progress.step(f"{n} camera(s) at {fps} fps")
            report["camera_cells"].append(_camera_cell(url, fleet.urls[:n], seconds, warmup_s))
        for c in concurrency:
            progress.step(f"HTTP concurrency {c}")
            report["http_cells"].append(_http_cell(url, image, c, seconds))
    progress.step("done")
    report["max_cameras_age_p99_within_500ms"] = max_cameras_within_budget(report["camera_cells"])
    return report


# -- the report ----------------------------------------------------------------------------------------
def plot(report: dict[str, Any], out: Path) -> list[str]:
    """PNG plots into `out`; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    cells = report["camera_cells"]
    if cells:
        ns = [c["cameras"] for c in cells]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(ns, [np.mean([r["input_fps"] for r in c["rows"]]) for c in cells], "o--", label="input fps")
        ax.plot(ns, [np.mean([r["result_fps"] for r in c["rows"]]) for c in cells], "o-", label="result fps")
        ax.set(xlabel="cameras", ylabel="fps per camera (mean)", title="Result fps per camera", ylim=(0, None))
        ax.legend()
        save(fig, "cameras_fps.png")

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for q in ("p50", "p95", "p99"):
            ax.plot(ns, [max(r["age_ms"][q] for r in c["rows"]) for c in cells], "o-", label=f"{q} (worst camera)")
        ax.axhline(AGE_BUDGET_MS, color="grey", linestyle=":", label=f"{AGE_BUDGET_MS:.0f} ms")
        ax.set(xlabel="cameras", ylabel="capture -> result (ms)", title="Result age", ylim=(0, None))
        ax.legend()
        save(fig, "cameras_age.png")

        fig, ax = plt.subplots(figsize=(6, 3.5))
        bottom = np.zeros(len(cells))
        for outcome in OUTCOMES:
            totals = np.array([sum(r["frames"][outcome] for r in c["rows"]) for c in cells], dtype=float)
            shares = totals / np.maximum(1, [sum(sum(r["frames"].values()) for r in c["rows"]) for c in cells])
            if shares.any():
                ax.bar([str(n) for n in ns], shares, bottom=bottom, label=outcome)
                bottom += shares
        ax.set(xlabel="cameras", ylabel="share of frames", title="Frame outcomes")
        ax.legend(fontsize="small")
        save(fig, "cameras_outcomes.png")

    http = report["http_cells"]
    if http:
        cs = [c["concurrency"] for c in http]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(cs, [c["latency_p50_ms"] for c in http], "o-", label="p50")
        ax.plot(cs, [c["latency_p99_ms"] for c in http], "o-", label="p99")
        ax.set(xscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title="HTTP latency", ylim=(0, None))
        ax.set_xticks(cs, [str(c) for c in cs])
        twin = ax.twinx()
        twin.plot(cs, [c["throughput_rps"] for c in http], "s:", color="grey", label="req/s")
        twin.set(ylabel="answered req/s", ylim=(0, None))
        ax.legend(loc="upper left")
        save(fig, "http_latency.png")

    scenarios = [(f"{c['cameras']} cam", c["batches"]) for c in cells] + [
        (f"c={c['concurrency']}", c["batches"]) for c in http
    ]
    if scenarios:
        sizes = sorted({int(s) for _, b in scenarios for s in b})
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(scenarios)
        for i, (label, batches) in enumerate(scenarios):
            total = max(1, sum(batches.values()))
            ax.bar(
                np.arange(len(sizes)) + i * width,
                [batches.get(s, 0) / total for s in sizes],
                width,
                label=label,
            )
        ax.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2, [f"<={s}" for s in sizes])
        ax.set(xlabel="batch size (bucket)", ylabel="share of batches", title="Batch sizes")
        ax.legend(fontsize="small", ncol=2)
        save(fig, "batch_sizes.png")
    return written


def markdown(report: dict[str, Any], plots: Sequence[str]) -> str:
    lines = [
        "# poseserve bench report",
        "",
        f"Run {report['created_at']} on `{report['machine']['platform']}` ({report['machine']['cpus']} CPUs), "
        f"{report['seconds']:.0f} s measured per scenario, one server for all scenarios, cameras at "
        f"{report['camera_fps']} fps with `max_fps` {report['camera_fps']}. Made by `make bench-report`.",
        "",
    ]
    if report["camera_cells"]:
        lines += [
            f"**Largest number of {report['camera_fps']}-fps cameras with every camera's capture->result age "
            f"p99 <= {AGE_BUDGET_MS:.0f} ms: {report['max_cameras_age_p99_within_500ms']}.**",
            "",
            "## Cameras",
            "",
            "| cameras | camera | input fps | result fps | age p50 ms | p95 | p99 | max | "
            + " | ".join(OUTCOMES)
            + " |",
            "|" + "---|" * (8 + len(OUTCOMES)),
        ]
        for cell in report["camera_cells"]:
            for row in cell["rows"]:
                age = row["age_ms"]
                lines.append(
                    f"| {cell['cameras']} | {row['stream']} | {row['input_fps']:.1f} | {row['result_fps']:.1f} | "
                    f"{age['p50']} | {age['p95']} | {age['p99']} | {age['max']} | "
                    + " | ".join(str(row["frames"][o]) for o in OUTCOMES)
                    + " |"
                )
        lines.append("")
    if report["http_cells"]:
        lines += [
            "## HTTP (`POST /v1/pose`, 640x480 JPEG, closed loop)",
            "",
            "| concurrency | answered | req/s | p50 ms | p99 ms | other answers |",
            "|---|---|---|---|---|---|",
        ]
        for c in report["http_cells"]:
            lines.append(
                f"| {c['concurrency']} | {c['requests']} | {c['throughput_rps']} | {c['latency_p50_ms']} | "
                f"{c['latency_p99_ms']} | {c['errors'] or '-'} |"
            )
        lines.append("")
    lines += ["## Batch sizes (share of batches per size bucket)", "", "| scenario | batches |", "|---|---|"]
    for label, batches in [(f"{c['cameras']} cameras", c["batches"]) for c in report["camera_cells"]] + [
        (f"concurrency {c['concurrency']}", c["batches"]) for c in report["http_cells"]
    ]:
        total = max(1, sum(batches.values()))
        shares = ", ".join(f"<={s}: {100 * n / total:.0f}%" for s, n in sorted(batches.items()))
        lines.append(f"| {label} | {sum(batches.values())} ({shares}) |")
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


def write(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plots = plot(report, out)
    path = out / "REPORT.md"
    path.write_text(markdown(report, plots))
    return path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description="bench report: scenario matrix -> Markdown + plots")
    parser.add_argument("--cameras", type=_ints, default=[1, 2, 4, 6, 8], help="camera counts, comma-separated")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 32], help="HTTP client counts")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=6.0, help="seconds after subscribing, not measured")
    parser.add_argument("--fps", type=int, default=25, help="camera frame rate (and max_fps)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    shared = Path(os.environ.get("POSESERVE_SHARED_DIR", REPO.parent / "shared"))
    report = run(
        args.cameras, args.concurrency, seconds=args.seconds, warmup_s=args.warmup, fps=args.fps, shared=shared
    )
    path = write(report, args.out)
    print(
        f"wrote {path}; largest camera count within age p99 {AGE_BUDGET_MS:.0f} ms: "
        f"{report['max_cameras_age_p99_within_500ms']}"
    )


if __name__ == "__main__":
    main()
