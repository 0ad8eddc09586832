"""Every panel of the Grafana dashboards returns data from a real Prometheus scraping a real server.

A real server with one real RTSP camera and a WebSocket client reading it, HTTP load with a few bad
requests and an overload burst, a camera outage; a real `prometheus` scraping
the server every second. Then each panel target, with Grafana's variables substituted, goes to
Prometheus' HTTP API. Only the GPU panels (without an NVIDIA GPU) and the Redis panels (a single
process has no Redis series) may come back empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from deploy.grafana import build
from loadtest.fleet import CameraFleet
from service.spawn import free_port, stop_process
from tests.support import assert_clean_log, camera_video, running_server, sample_jpeg, skip_unless_ci

pytestmark = pytest.mark.e2e

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_S = 1
ZERO_FALLBACK = " or sum by ("  # build.zero_fallback: a counter, or 0 until its first event
RATE_WINDOW = "15s"  # stands in for $__rate_interval (Grafana: at least 4 scrape intervals)


@dataclass
class Target:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool


def dashboard_targets() -> list[Target]:
    out = []
    for name, text in build.build_all().items():
        board = json.loads(text)
        for panel in board["panels"]:
            for inner in [panel, *(panel.get("panels") or [])]:
                for t in inner.get("targets") or []:
                    out.append(
                        Target(
                            name.removesuffix(".json"), inner["title"], t["refId"], t["expr"], t.get("instant", False)
                        )
                    )
    return out


def substitute(expr: str, *, stream: str, backend: str, range_s: int) -> str:
    """What Grafana sends: its variables and interval macros replaced."""
    values = {
        "datasource": build.DATASOURCE_UID,
        "stream": stream,
        "backend": backend,
        "__rate_interval": RATE_WINDOW,
        "__interval": f"{SCRAPE_S}s",
        "__range": f"{range_s}s",
    }
    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], expr)
    assert "$" not in out, out
    return out


def has_data(payload: dict[str, Any]) -> bool:
    """At least one finite sample in a /api/v1/query(_range) answer."""
    assert payload["status"] == "success", payload
    data = payload["data"]
    if data["resultType"] == "matrix":
        samples = [v for s in data["result"] for _, v in s["values"]]
    elif data["resultType"] == "vector":
        samples = [s["value"][1] for s in data["result"]]
    else:  # scalar
        samples = [data["result"][1]]
    return any(math.isfinite(float(v)) for v in samples)


def describe_source(fallback: dict[str, bool] | None, data: bool) -> str:
    """Where a panel's data came from: its series, or the 0 that stands for a counter without events."""
    if fallback is None:
        return "series" if data else "none"
    refs = {key.split(":")[1]: only for key, only in fallback.items() if key.startswith("all:")}
    if len(set(refs.values())) == 1:
        return "0 fallback (no event yet)" if next(iter(refs.values())) else "series"
    return ", ".join(f"{ref}: {'0 fallback' if only else 'series'}" for ref, only in sorted(refs.items()))


def nvidia_gpu_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    finally:
        pynvml.nvmlShutdown()


@contextlib.contextmanager
def running_prometheus(target: str, workdir: Path) -> Iterator[str]:
    """A real Prometheus scraping `target` (host:port) every second: its base URL."""
    config = workdir / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n"
        f"scrape_configs:\n  - job_name: poseserve\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus not ready in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc, grace_s=10)
        log.close()


class WebSocketClient:
    """In a thread: a client reading the stream's results."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> WebSocketClient:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the WebSocket client did not stop"

    async def _run(self) -> None:
        async with websockets.connect(self.ws_url, open_timeout=10) as reader:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.recv(), timeout=0.2)
                    self.received += 1


def stream_states(url: str) -> dict[str, str]:
    return {s["name"]: s["state"] for s in httpx.get(f"{url}/v1/streams", timeout=10).json()}


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        time.sleep(0.2)


def http_load(url: str) -> dict[int, int]:
    """Good and bad POST /v1/pose, then a burst beyond the queue: status code -> count."""
    image = sample_jpeg()

    def post(body: bytes, media_type: str = "image/jpeg") -> int:
        return httpx.post(f"{url}/v1/pose", content=body, headers={"content-type": media_type}, timeout=60).status_code

    bodies = [(image, "image/jpeg")] * 30 + [
        (b"not an image", "image/jpeg"),
        (b"", "image/jpeg"),
        (image, "text/plain"),
    ]
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda b: post(*b), bodies))
    with ThreadPoolExecutor(32) as pool:  # POSESERVE_BATCHING__MAX_QUEUE=8: some are refused
        codes += list(pool.map(lambda _: post(image), range(48)))
    counts: dict[int, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return counts


def test_every_panel_returns_data(model_dir: Path, tmp_path: Path) -> None:
    if not Path(PROMETHEUS).is_file() and shutil.which("prometheus") is None:
        skip_unless_ci("prometheus not installed (apt: prometheus)")
    video = camera_video()

    settings_env = {
        "POSESERVE_STREAMS__READ_TIMEOUT_MS": "2000",
        "POSESERVE_STREAMS__OPEN_TIMEOUT_MS": "3000",
        "POSESERVE_STREAMS__BACKOFF_INITIAL_S": "0.2",
        "POSESERVE_STREAMS__BACKOFF_MAX_S": "1",
        "POSESERVE_STREAMS__DEFAULT_MAX_FPS": "10",
        "POSESERVE_STREAMS__WS_QUEUE_MESSAGES": "2",
        "POSESERVE_BATCHING__INTRA_OP_THREADS": "1",
        "POSESERVE_BATCHING__MAX_QUEUE": "8",  # the burst is refused by queue length, whatever the CPU load
        "POSESERVE_BATCHING__MAX_QUEUE_DELAY_MS": "30000",
        "POSESERVE_REQUEST_TIMEOUT_S": "60",
        "POSESERVE_SOCKET_SEND_BUFFER_BYTES": "8192",
    }
    log = tmp_path / "server.log"
    started = time.time()
    with (
        CameraFleet([video], fps=25) as fleet,
        running_server(model_dir, log, **settings_env) as (url, _pid),
        running_prometheus(url.removeprefix("http://"), tmp_path) as prom,
    ):
        r = httpx.post(f"{url}/v1/streams", json={"url": fleet.urls[0], "name": "cam1"}, timeout=30)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        wait_until(lambda: stream_states(url).get("cam1") == "live", 30, "cam1 live")
        ws_url = f"{url.replace('http://', 'ws://')}/v1/streams/{sid}/ws"
        with WebSocketClient(ws_url) as client:
            codes = http_load(url)
            # a camera outage: the stream reconnects by itself once the camera is back
            fleet.kill_server()
            wait_until(lambda: stream_states(url).get("cam1") != "live", 15, "cam1 not live")
            fleet.start_server()
            wait_until(lambda: stream_states(url).get("cam1") == "live", 30, "cam1 live again")
            http_load_done = time.time()
            time.sleep(3 * SCRAPE_S + 1)  # the last state and counters scraped
            # Prometheus saw the whole scenario
            up = httpx.get(f"{prom}/api/v1/query", params={"query": 'up{job="poseserve"}'}, timeout=10).json()
            assert [s["value"][1] for s in up["data"]["result"]] == ["1"], up
            assert float(up["data"]["result"][0]["value"][0]) >= http_load_done
            assert client.received > 0
        print(f"\nHTTP status codes: {dict(sorted(codes.items()))}")
        assert codes.get(200, 0) > 0 and any(400 <= c < 500 for c in codes) and codes.get(503, 0) > 0, codes

        end = time.time()
        range_s = math.ceil(end - started)

        def label_values(label: str, metric: str) -> list[str]:
            r = httpx.get(f"{prom}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10).json()
            return list(r["data"])

        streams = label_values("stream", "poseserve_stream_frames_total")
        backends = label_values("backend", "poseserve_batch_size_count")
        assert streams == ["cam1"] and backends, (streams, backends)

        results: dict[tuple[str, str], dict[str, bool]] = {}
        fallback_only: dict[tuple[str, str], dict[str, bool]] = {}
        for target in dashboard_targets():
            for selection, stream, backend in (("all", ".*", ".*"), ("one", "cam1", backends[0])):
                expr = substitute(target.expr, stream=stream, backend=backend, range_s=range_s)
                if target.instant:
                    answer = httpx.get(f"{prom}/api/v1/query", params={"query": expr, "time": end}, timeout=10)
                else:
                    answer = httpx.get(
                        f"{prom}/api/v1/query_range",
                        params={"query": expr, "start": started, "end": end, "step": SCRAPE_S},
                        timeout=10,
                    )
                assert answer.status_code == 200, f"{target.panel} {target.ref}: {answer.text}\n{expr}"
                cell = results.setdefault((target.dashboard, target.panel), {})
                cell[f"{selection}:{target.ref}"] = has_data(answer.json())
                if ZERO_FALLBACK in expr:  # was it the counter itself, or only its 0 fallback?
                    own = expr.split(ZERO_FALLBACK)[0]
                    answer = httpx.get(f"{prom}/api/v1/query", params={"query": own, "time": end}, timeout=10)
                    only = not answer.json()["data"]["result"]
                    fallback_only.setdefault((target.dashboard, target.panel), {})[f"{selection}:{target.ref}"] = only

    assert_clean_log(log)
    print(f"{'dashboard':<10} {'panel':<32} {'data (all)':<11} {'data (cam1/' + backends[0] + ')':<31} source")
    for key, cells in results.items():
        all_ok, one_ok = (all(v for k, v in cells.items() if k.startswith(f"{sel}:")) for sel in ("all", "one"))
        source = describe_source(fallback_only.get(key), all_ok)
        board, panel = key
        print(f"{board:<10} {panel:<32} {'yes' if all_ok else 'NO':<11} {'yes' if one_ok else 'NO':<31} {source}")

    empty = {panel for (_, panel), cells in results.items() if not all(cells.values())}
    # a single process without --redis-url exports no Redis series (tests/e2e/test_redis_*.py run those)
    expected_empty = set(build.REDIS_PANELS) | (set() if nvidia_gpu_present() else set(build.GPU_PANELS))
    assert empty == expected_empty, f"panels without data: {sorted(empty)} (expected only {sorted(expected_empty)})"
    # the camera outage and the overload burst show up as real series, not only as the 0 fallback
    reconnects = fallback_only[("cameras", "Reconnects and reader restarts")]
    assert not reconnects["all:A"] and not reconnects["one:A"], "the camera outage counted no reconnect"
    assert not any(fallback_only[("engine", "Items dropped by reason")].values()), "the burst dropped no item"
