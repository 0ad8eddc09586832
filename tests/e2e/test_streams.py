"""Real cameras: GStreamer RTSP server + ffmpeg encoders, a real server, real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from loadtest.fleet import CameraFleet, fleet_available
from tests.support import assert_clean_log, metric_samples, running_server, shared_dir, skip_unless_ci

pytestmark = pytest.mark.e2e

READ_TIMEOUT_MS = 2000


@dataclass
class Env:
    url: str
    pid: int
    fleet: CameraFleet


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    reason = fleet_available()
    if reason:
        skip_unless_ci(f"RTSP camera fleet unavailable: {reason}")
    videos_dir = shared_dir() / "data" / "videos" / "pose2sim_multi"
    videos = [videos_dir / f"cam0{i}.mp4" for i in range(1, 5)]
    if not all(v.is_file() for v in videos):
        skip_unless_ci(f"videos not found in {videos_dir} (set POSESERVE_SHARED_DIR)")
    settings_env = {
        "POSESERVE_STREAMS__READ_TIMEOUT_MS": str(READ_TIMEOUT_MS),
        "POSESERVE_STREAMS__OPEN_TIMEOUT_MS": "3000",
        "POSESERVE_STREAMS__BACKOFF_MAX_S": "2",
        "POSESERVE_STREAMS__DEFAULT_MAX_FPS": "5",
        "POSESERVE_STREAMS__WS_QUEUE_MESSAGES": "8",
        "POSESERVE_BATCHING__INTRA_OP_THREADS": "2",
        "POSESERVE_SOCKET_SEND_BUFFER_BYTES": "8192",
    }
    log = tmp_path_factory.mktemp("streams") / "server.log"
    with CameraFleet(videos, fps=25) as fleet, running_server(model_dir, log, **settings_env) as (url, pid):
        yield Env(url, pid, fleet)
    assert_clean_log(log)


def subscribe_all(env: Env) -> list[str]:
    """Stream ids of cam1..camN, subscribing those not subscribed yet."""
    existing = {s["name"]: s["id"] for s in httpx.get(f"{env.url}/v1/streams", timeout=10).json()}
    ids = []
    for i, camera in enumerate(env.fleet.urls):
        name = f"cam{i + 1}"
        if name not in existing:
            r = httpx.post(f"{env.url}/v1/streams", json={"url": camera, "name": name}, timeout=30)
            assert r.status_code == 201, r.text
            existing[name] = r.json()["id"]
        ids.append(existing[name])
    return ids


def states(env: Env) -> dict[str, str]:
    return {s["name"]: s["state"] for s in httpx.get(f"{env.url}/v1/streams", timeout=10).json()}


def wait_for(env: Env, predicate: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while True:
        current = states(env)
        if predicate(current):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"{what} not reached in {timeout_s} s: {current}"
        time.sleep(0.2)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def collect(ws_url: str, seconds: float, until: Any = None) -> list[dict[str, Any]]:
    """Messages received for `seconds` (or until `until()` turns true, checked every 20 messages)."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(ws_url, open_timeout=10) as ws:
        stop_at = asyncio.get_running_loop().time() + seconds
        while (left := stop_at - asyncio.get_running_loop().time()) > 0:
            if until is not None and len(messages) % 20 == 19 and await asyncio.to_thread(until):
                break
            try:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=left)))
            except TimeoutError:
                break
    return messages


def test_four_cameras_two_clients_each_then_failures(env: Env) -> None:
    ids = subscribe_all(env)
    wait_for(env, lambda s: len(s) == 4 and all(v == "live" for v in s.values()), 30, "all live")
    ws_base = env.url.replace("http://", "ws://")

    async def clients() -> list[list[dict[str, Any]]]:
        return list(
            await asyncio.gather(*(collect(f"{ws_base}/v1/streams/{sid}/ws", 8.0) for sid in ids for _ in range(2)))
        )

    received = asyncio.run(clients())
    for index, messages in enumerate(received):
        results = [m for m in messages if "seq" in m]
        assert len(results) >= 5, f"client {index}: only {len(results)} results"
        assert any(m["persons"] for m in results), f"client {index}: no person in any result"
        assert all(m["stream_id"] == ids[index // 2] for m in results)
        seqs = [m["seq"] for m in results]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert all(0 < m["latency_ms"]["capture_to_result"] < 5000 for m in results)
        assert messages[0] == {"event": "state", "stream_id": ids[index // 2], "state": "live"}

    # kill the RTSP server: every stream notices, then recovers by itself after a restart
    env.fleet.kill_server()
    wait_for(env, lambda s: all(v in ("reconnecting", "connecting") for v in s.values()), 15, "reconnecting")
    env.fleet.start_server()
    recovered = wait_for(env, lambda s: all(v == "live" for v in s.values()), 40, "live after restart")
    assert recovered < 40
    reconnects = {s["name"]: s["reconnects"] for s in httpx.get(f"{env.url}/v1/streams", timeout=10).json()}
    assert all(n >= 1 for n in reconnects.values()), reconnects

    # a stalled server (SIGSTOP: connections open, no packets) is noticed within the read timeout
    with env.fleet.server_paused():
        noticed = wait_for(env, lambda s: all(v != "live" for v in s.values()), 10, "stall detected")
    assert noticed <= READ_TIMEOUT_MS / 1000 + 2.0
    wait_for(env, lambda s: all(v == "live" for v in s.values()), 40, "live after stall")

    metrics = httpx.get(f"{env.url}/metrics", timeout=10).text
    processed = {
        lb["stream"]: v
        for lb, v in metric_samples(metrics, "poseserve_stream_frames_total")
        if lb["outcome"] == "processed"
    }
    assert set(processed) == {"cam1", "cam2", "cam3", "cam4"} and min(processed.values()) > 0
    assert sum(v for _, v in metric_samples(metrics, "poseserve_stream_reconnects_total")) >= 4


def test_client_that_never_reads_costs_no_memory(env: Env) -> None:
    sid = subscribe_all(env)[0]
    wait_for(env, lambda s: s.get("cam1") == "live", 30, "cam1 live")
    ws_url = f"{env.url.replace('http://', 'ws://')}/v1/streams/{sid}/ws"

    async def scenario() -> tuple[int, list[dict[str, Any]], int]:
        # max_queue=1: the client library stops reading once one message waits; a 4 KiB receive
        # buffer and no compression make TCP back up to the server within ~100 KB of messages
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(env.url.rsplit(":", 1)[1])))
        sock.setblocking(False)
        async with websockets.connect(ws_url, sock=sock, max_queue=1, compression=None, open_timeout=10) as _stuck:
            await asyncio.sleep(2.0)
            before = rss_bytes(env.pid)
            reader = asyncio.create_task(collect(ws_url, 60.0, until=lambda: dropped_messages(env) > 0))
            good = await reader
            return before, good, rss_bytes(env.pid)

    before, good, after = asyncio.run(scenario())
    assert dropped_messages(env) > 0, "the stuck client's queue never overflowed within 60 s"
    results = [m for m in good if "seq" in m]
    assert len(results) >= 10, f"a reading client only got {len(results)} results beside a stuck one"
    assert after - before < 64 * 1024 * 1024, f"server RSS grew by {(after - before) / 1e6:.1f} MB"


def dropped_messages(env: Env) -> float:
    metrics = httpx.get(f"{env.url}/metrics", timeout=10).text
    return sum(v for lb, v in metric_samples(metrics, "poseserve_ws_messages_dropped_total") if lb["stream"] == "cam1")
