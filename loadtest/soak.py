"""Soak: hours of mixed load must leave the server where it started (memory, files, threads, cameras).

    python -m loadtest.soak --minutes 30 --out bench-results/soak.json     (make soak)

Starts the camera fleet (4 real RTSP cameras looping the pose2sim videos) and `poseserve serve` on
an ephemeral loopback port, subscribes every camera, and keeps two WebSocket clients per camera:
one reads every message, one never reads (its queue and socket buffer must stay bounded). Beside
them, HTTP `POST /v1/pose` requests arrive open-loop at half the capacity measured just before
(closed loop, 2 clients, before the cameras start). Every --sample-s the server process is
sampled: RSS, open file descriptors, threads, queue depths, stream states.

Verdict, after --warmup-minutes, comparing the peaks of the window's first and last quarters (a
leak raises the late peaks, while what the load holds, connections and batches in flight, comes
and goes in both): RSS grows < 5 %, descriptors and threads rise at most a small allowance, queue depths never
exceed their bounds, and every camera is `live` at the end. Exit status 1 when a check fails.
Everything started is stopped at the end; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import websockets

from loadtest.burst import jpeg_640x480
from loadtest.fleet import CameraFleet, fleet_available
from service.spawn import spawned_server

REPO = Path(__file__).resolve().parents[1]
RSS_GROWTH_LIMIT = 0.05
FD_ALLOWANCE = 4
"""Descriptors that may come and go with the load (HTTP keep-alive sockets being replaced)."""
THREAD_ALLOWANCE = 2
"""Threads that may come and go (asyncio's default executor grows on demand up to its bound)."""


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_mib: float
    fds: int
    threads: int
    max_queue_depth: float
    states: dict[str, str]
    http_ok: int
    http_refused: int
    ws_messages: int


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def sample_process(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open descriptors, threads) of a live process."""
    status = _proc_status(pid)
    rss_mib = int(status["VmRSS"].split()[0]) / 1024
    return rss_mib, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


def max_queue_depth(metrics_text: str) -> float:
    depths = [float(m) for m in re.findall(r"^poseserve_queue_depth\{[^}]*\} (\S+)$", metrics_text, re.M)]
    return max(depths, default=0.0)


class Load:
    """The HTTP and WebSocket traffic of one soak, counted."""

    def __init__(self, url: str, image: bytes, stream_ids: list[str]) -> None:
        self.url, self.image, self.stream_ids = url, image, stream_ids
        self.http_ok = self.http_refused = self.http_other = self.ws_messages = 0
        self.stop = asyncio.Event()

    async def _post(self, client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        r = await client.post("/v1/pose", content=self.image, headers={"content-type": "image/jpeg"})
        if r.status_code == 200:
            self.http_ok += 1
        elif r.status_code in (429, 503):
            self.http_refused += 1
        else:
            self.http_other += 1
        return time.perf_counter() - started

    async def capacity_rps(self, seconds: float) -> float:
        """Answered requests per second of 2 closed-loop clients (no cameras yet)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            await self._post(client)  # warm-up
            done, stop_at = 0, time.monotonic() + seconds

            async def user() -> None:
                nonlocal done
                while time.monotonic() < stop_at:
                    await self._post(client)
                    done += 1

            await asyncio.gather(user(), user())
        self.http_ok = self.http_refused = self.http_other = 0
        return done / seconds

    async def http(self, rps: float) -> None:
        """Open loop: one request every 1 / rps seconds, each bounded by the client timeout."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            tasks: set[asyncio.Task[float]] = set()
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            while not self.stop.is_set():
                task = asyncio.create_task(self._post(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1.0 / rps
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, next_at - loop.time()))
            if tasks:
                await asyncio.wait(tasks, timeout=35)

    async def reader(self, stream_id: str) -> None:
        ws_url = self.url.replace("http://", "ws://") + f"/v1/streams/{stream_id}/ws"
        async with websockets.connect(ws_url, open_timeout=10, close_timeout=5) as ws:
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.recv(), timeout=1.0)
                    self.ws_messages += 1

    async def idler(self, stream_id: str) -> None:
        """Connects and never reads: the server must drop its messages, not keep them."""
        ws_url = self.url.replace("http://", "ws://") + f"/v1/streams/{stream_id}/ws"
        async with websockets.connect(ws_url, open_timeout=10, close_timeout=5, max_queue=1):
            await self.stop.wait()


async def _soak(url: str, pid: int, stream_ids: list[str], image: bytes, args: argparse.Namespace) -> dict[str, Any]:
    load = Load(url, image, stream_ids)
    capacity = await load.capacity_rps(args.capacity_s)
    rps = max(0.5, capacity / 2)
    tasks = [asyncio.create_task(load.http(rps))]
    tasks += [asyncio.create_task(load.reader(s)) for s in stream_ids]
    tasks += [asyncio.create_task(load.idler(s)) for s in stream_ids]
    samples: list[Sample] = []
    started = time.monotonic()
    end_at = started + args.minutes * 60
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < end_at:
            await asyncio.sleep(min(args.sample_s, max(0.0, end_at - time.monotonic())))
            broken = [t for t in tasks if t.done() and t.exception() is not None]
            if broken:
                raise RuntimeError(f"a load task failed: {broken[0].exception()!r}")
            rss, fds, threads = sample_process(pid)
            metrics = (await client.get("/metrics")).text
            streams = (await client.get("/v1/streams")).json()
            samples.append(
                Sample(
                    t_s=round(time.monotonic() - started, 1),
                    rss_mib=round(rss, 1),
                    fds=fds,
                    threads=threads,
                    max_queue_depth=max_queue_depth(metrics),
                    states={s["name"]: s["state"] for s in streams},
                    http_ok=load.http_ok,
                    http_refused=load.http_refused,
                    ws_messages=load.ws_messages,
                )
            )
            print(json.dumps(asdict(samples[-1])), flush=True)
    load.stop.set()
    await asyncio.wait(tasks, timeout=60)
    return {
        "capacity_rps": round(capacity, 2),
        "http_rps": round(rps, 2),
        "http_other": load.http_other,
        "samples": [asdict(s) for s in samples],
    }


def verdict(samples: list[dict[str, Any]], warmup_s: float, max_queue: int) -> dict[str, Any]:
    """The soak's checks over the samples taken after `warmup_s`."""
    window = [s for s in samples if s["t_s"] >= warmup_s]
    if len(window) < 2:
        return {"ok": False, "problems": [f"only {len(window)} samples after the warm-up"]}
    first, last = window[0], window[-1]
    quarter = max(1, len(window) // 4)
    early, late = window[:quarter], window[-quarter:]

    def peak_change(key: str) -> float:
        """Late peak minus early peak: a leak raises the late peaks, while what the load itself
        holds (connections, batches in flight) comes and goes in both quarters."""
        return float(max(s[key] for s in late) - max(s[key] for s in early))

    early_rss = max(s["rss_mib"] for s in early)
    checks = {
        "rss_growth": peak_change("rss_mib") / early_rss,
        "rss_first_to_last": (last["rss_mib"] - first["rss_mib"]) / first["rss_mib"],
        "fd_change": peak_change("fds"),
        "thread_change": peak_change("threads"),
        "max_queue_depth": max(s["max_queue_depth"] for s in window),
        "not_live_at_end": sorted(name for name, state in last["states"].items() if state != "live"),
    }
    problems = []
    if checks["rss_growth"] >= RSS_GROWTH_LIMIT:
        problems.append(f"RSS grew {checks['rss_growth']:.1%} (limit {RSS_GROWTH_LIMIT:.0%})")
    if checks["fd_change"] > FD_ALLOWANCE:
        problems.append(f"open descriptors' peak rose by {checks['fd_change']} (allowance {FD_ALLOWANCE})")
    if checks["thread_change"] > THREAD_ALLOWANCE:
        problems.append(f"threads' peak rose by {checks['thread_change']} (allowance {THREAD_ALLOWANCE})")
    if checks["max_queue_depth"] > max_queue:
        problems.append(f"a queue held {checks['max_queue_depth']:g} items (bound {max_queue})")
    if checks["not_live_at_end"] or not last["states"]:
        problems.append(f"cameras not live at the end: {checks['not_live_at_end'] or 'none subscribed'}")
    return {"ok": not problems, "problems": problems, "first": first, "last": last, **checks}


def run(args: argparse.Namespace) -> dict[str, Any]:
    reason = fleet_available()
    if reason:
        raise SystemExit(f"cannot start cameras: {reason}")
    shared = Path(os.environ.get("POSESERVE_SHARED_DIR", REPO.parent / "shared"))
    videos = [shared / "data/videos/pose2sim_multi" / f"cam0{i + 1}.mp4" for i in range(args.cameras)]
    image = jpeg_640x480(shared / "data/pose_samples" / "images/crowdpose/103319.jpg")
    env = {
        "POSESERVE_STREAMS__DEFAULT_MAX_FPS": str(args.max_fps),
        "POSESERVE_LOG_LEVEL": "warning",
        "POSESERVE_BATCHING__MAX_QUEUE": str(args.max_queue),
    }
    log_path = args.out.with_suffix(".log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w") as log,
        CameraFleet(videos, fps=args.fps) as fleet,
        spawned_server(env, log=log) as (url, proc),
    ):
        ids = []
        for i, camera in enumerate(fleet.urls):
            r = httpx.post(f"{url}/v1/streams", json={"url": camera, "name": f"cam{i + 1}"}, timeout=30)
            r.raise_for_status()
            ids.append(r.json()["id"])
        report = asyncio.run(_soak(url, proc.pid, ids, image, args))
    report["verdict"] = verdict(report["samples"], args.warmup_minutes * 60, args.max_queue)
    report["tracebacks_in_log"] = log_path.read_text(errors="replace").count("Traceback")
    report["settings"] = {k: str(v) for k, v in vars(args).items()}
    return report


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the `with` blocks: cameras and server are stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description="soak: mixed load for a long time, then compare")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=3.0)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--capacity-s", type=float, default=15.0, help="seconds measuring HTTP capacity")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=int, default=15, help="camera frame rate")
    parser.add_argument("--max-fps", type=float, default=5.0, help="per-stream inference cap")
    parser.add_argument("--max-queue", type=int, default=64, help="POSESERVE_BATCHING__MAX_QUEUE")
    parser.add_argument("--out", type=Path, default=Path("bench-results/soak.json"))
    args = parser.parse_args()
    report = run(args)
    args.out.write_text(json.dumps(report, indent=2))
    v = report["verdict"]
    print(json.dumps({k: v[k] for k in v if k not in ("first", "last")}, indent=2))
    print(f"first {v.get('first')}\nlast  {v.get('last')}\nwrote {args.out}")
    raise SystemExit(0 if v["ok"] and not report["tracebacks_in_log"] else 1)


if __name__ == "__main__":
    main()
