"""Burst load: many clients at once, each sending a few requests back to back; answered and refused
requests are reported apart (how fast is a refusal, how long does an answered request wait).

    python -m loadtest.burst                                  # 200 clients x 5 requests, spawned server
    python -m loadtest.burst --url http://127.0.0.1:8000      # a running server (loopback only)
    python -m loadtest.burst --env POSESERVE_BATCHING__MAX_QUEUE_DELAY_MS=250
    python -m loadtest.burst --floor          # the same burst against a bare 503-only app (loadtest.floor)

The image is a 640x480 JPEG made from a ../shared/data/pose_samples photo. Each client keeps one
HTTP/1.1 keep-alive connection and speaks it over plain asyncio streams: a generic client library
costs about a millisecond of CPU per request, which with 200 clients on a small machine would
measure the load generator's own event loop instead of the server. Bounded: every request has a
timeout and the whole burst a deadline (--max-seconds); a spawned server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np

from service.spawn import spawned_server

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = "images/crowdpose/103319.jpg"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: no HTTP answer (connection error or timeout)
    latency_ms: float
    queue_ms: float | None = None  # timing_ms.queue of an answer
    total_ms: float | None = None  # timing_ms.total of an answer: the route's own time, body read to answer
    retry_after: str | None = None
    error: str | None = None
    message: str = ""
    sent_at: float = 0.0  # perf_counter seconds


def jpeg_640x480(photo: Path) -> bytes:
    """`photo` scaled to cover 640x480, centre-cropped, JPEG quality 90."""
    bgr = cv2.imread(str(photo))
    if bgr is None:
        raise SystemExit(f"cannot read {photo}")
    h, w = bgr.shape[:2]
    scale = max(640 / w, 480 / h)
    bgr = cv2.resize(bgr, (max(640, round(w * scale)), max(480, round(h * scale))), interpolation=cv2.INTER_AREA)
    y, x = (bgr.shape[0] - 480) // 2, (bgr.shape[1] - 640) // 2
    ok, buf = cv2.imencode(".jpg", bgr[y : y + 480, x : x + 640], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request out, a Content-Length answer back."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(request)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _one(conn: _Connection, request: bytes, timeout_s: float) -> Outcome:
    started = time.perf_counter()
    try:
        status, headers, body = await asyncio.wait_for(conn.post(request), timeout_s)
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
        conn.close()
        return Outcome(0, (time.perf_counter() - started) * 1000, error=type(exc).__name__, sent_at=started)
    latency_ms = (time.perf_counter() - started) * 1000
    doc = json.loads(body) if headers.get("content-type", "").startswith("application/json") else {}
    if status == 200:
        timing = doc["timing_ms"]
        return Outcome(200, latency_ms, queue_ms=timing["queue"], total_ms=timing["total"], sent_at=started)
    error = doc.get("error", {}) if isinstance(doc, dict) else {}
    code, message = error.get("code"), error.get("message", "")
    return Outcome(
        status, latency_ms, retry_after=headers.get("retry-after"), error=code, message=message, sent_at=started
    )


async def _burst(url: str, image: bytes, clients: int, requests: int, timeout_s: float, max_s: float) -> dict[str, Any]:
    parts = urlsplit(url)
    metrics_url = f"{parts.scheme}://{parts.netloc}/metrics"
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        # warm: the server has run full batches (ORT sizes its buffers on a first run) before the burst
        for _ in range(2):
            await asyncio.gather(
                *(client.post(url, content=image, headers={"content-type": "image/jpeg"}) for _ in range(8))
            )
        metrics_before = (await client.get(metrics_url)).text
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(image)}\r\n\r\n"
    ).encode() + image
    outcomes: list[Outcome] = []
    go = asyncio.Event()

    async def user() -> None:
        conn = _Connection(host, port)
        try:
            await go.wait()
            for _ in range(requests):
                outcomes.append(await _one(conn, request, timeout_s))
        finally:
            conn.close()

    tasks = [asyncio.create_task(user()) for _ in range(clients)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    go.set()
    _, pending = await asyncio.wait(tasks, timeout=max_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed_s = time.perf_counter() - started
    outcomes = [replace(o, sent_at=round(o.sent_at - started, 4)) for o in outcomes]  # s since the burst began
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        metrics = (await client.get(metrics_url)).text
    return {
        "elapsed_s": elapsed_s,
        "unfinished_clients": len(pending),
        "outcomes": outcomes,
        "metrics_before": metrics_before,
        "metrics": metrics,
    }


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _sums(metrics_text: str, name: str, by: str) -> dict[str, float]:
    """Samples of metric `name` summed by the value of label `by`."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}}\s+(\S+)$", metrics_text, re.M):
        key = dict(re.findall(r'(\w+)="([^"]*)"', m[1])).get(by, "?")
        out[key] = out.get(key, 0.0) + float(m[2])
    return out


def _during(raw: dict[str, Any], name: str, by: str) -> dict[str, float]:
    """How much metric `name` grew during the burst, by label `by`."""
    before, after = _sums(raw["metrics_before"], name, by), _sums(raw["metrics"], name, by)
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def _batches(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per stage, the batches run during the burst: count, mean size, mean model time."""
    count = _during(raw, "poseserve_batch_size_count", "stage")
    items = _during(raw, "poseserve_batch_size_sum", "stage")
    model_s = _during(raw, "poseserve_inference_seconds_sum", "stage")
    return {
        stage: {
            "batches": n,
            "mean_size": round(items.get(stage, 0.0) / n, 2),
            "mean_model_ms": round(1000 * model_s.get(stage, 0.0) / n, 1),
        }
        for stage, n in count.items()
    }


def summarize(raw: dict[str, Any], clients: int, requests: int) -> dict[str, Any]:
    outcomes: list[Outcome] = raw["outcomes"]
    answered = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    # a 503 after the item waited max_queue_delay_ms in the queue (admitted, decoded, then dropped)
    dropped = [o for o in refused if "waited max_queue_delay_ms" in o.message]
    at_admission = [o for o in refused if "waited max_queue_delay_ms" not in o.message]
    rows = []
    groups = (
        ("answered", answered),
        ("refused_503", refused),
        ("  at_admission", at_admission),
        ("  after_queue", dropped),
    )
    for name, group in groups:
        lat = [o.latency_ms for o in group]
        rows.append(
            {
                "outcome": name,
                "count": len(group),
                "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99),
                "max_ms": round(max(lat), 1) if lat else None,
            }
        )
    queue = [o.queue_ms for o in answered if o.queue_ms is not None]
    route = [o.total_ms for o in answered if o.total_ms is not None]
    others: dict[str, int] = {}
    for o in outcomes:
        if o.status not in (200, 503):
            key = f"{o.status}:{o.error}"
            others[key] = others.get(key, 0) + 1
    return {
        "clients": clients,
        "requests_per_client": requests,
        "sent": len(outcomes),
        "elapsed_s": round(raw["elapsed_s"], 2),
        "answered_per_s": round(len(answered) / raw["elapsed_s"], 2),
        "unfinished_clients": raw["unfinished_clients"],
        "rows": rows,
        "answered_queue_ms": {"p50": _pct(queue, 50), "p99": _pct(queue, 99), "max": max(queue, default=None)},
        # the answered requests' time inside the route (body, decode, queue, model); the rest of
        # their latency is spent before it (connection, headers, admission) and sending the answer
        "answered_route_ms": {"p50": _pct(route, 50), "p99": _pct(route, 99), "max": max(route, default=None)},
        "refused_codes": sorted({str(o.error) for o in refused}),
        "retry_after_values": sorted({str(o.retry_after) for o in refused}),
        "other_outcomes": others,
        "server_items_dropped": _during(raw, "poseserve_items_dropped_total", "reason"),
        "server_batches": _batches(raw),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    shared = Path(os.environ.get("POSESERVE_SHARED_DIR", REPO.parent / "shared"))
    image = jpeg_640x480(args.photo or shared / "data/pose_samples" / DEFAULT_PHOTO)

    def burst(base: str) -> dict[str, Any]:
        url = base.rstrip("/") + "/v1/pose" + (f"?backend={args.backend}" if args.backend else "")
        coro = _burst(url, image, args.clients, args.requests, args.timeout_s, args.max_seconds)
        try:  # the load generator's own event loop lag is part of what it measures: keep it small
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        return uvloop.run(coro)

    if args.url:
        if urlsplit(args.url).hostname not in LOOPBACK:
            raise SystemExit("--url must be a loopback address (127.0.0.1, localhost, ::1)")
        raw = burst(args.url)
    elif args.floor:

        def uvicorn_floor(port: int) -> list[str]:
            app, host = "loadtest.floor:app", "127.0.0.1"
            return [sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port), "--no-access-log"]

        with spawned_server(argv=uvicorn_floor) as (url, _):
            raw = burst(url)
    else:
        env = {"POSESERVE_LOG_LEVEL": "warning", **dict(kv.split("=", 1) for kv in args.env)}
        with spawned_server(env) as (url, _):
            raw = burst(url)
    report = summarize(raw, args.clients, args.requests)
    report["raw"] = [asdict(o) for o in raw["outcomes"]]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="burst load: answered vs refused latency")
    parser.add_argument("--url", help="a running server on a loopback address; default: spawn one")
    parser.add_argument(
        "--floor", action="store_true", help="burst a bare 503-only ASGI app instead (loadtest.floor): the floor"
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5, help="per client, back to back")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--photo", type=Path, default=None, help=f"default: shared/data/pose_samples/{DEFAULT_PHOTO}")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per request")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="for the whole burst")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for a spawned server (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/burst.json"))
    args = parser.parse_args()
    if not 1 <= args.clients <= 1000 or not 1 <= args.requests <= 100:
        raise SystemExit("--clients must be in 1..1000 and --requests in 1..100")
    if any(not kv.startswith("POSESERVE_") or "=" not in kv for kv in args.env):
        raise SystemExit("--env takes POSESERVE_KEY=VALUE")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'outcome':>12} {'count':>6} {'p50_ms':>8} {'p99_ms':>8} {'max_ms':>8}")
    for row in report["rows"]:
        print(f"{row['outcome']:>12} {row['count']:>6} {row['p50_ms']!s:>8} {row['p99_ms']!s:>8} {row['max_ms']!s:>8}")
    summary = {k: v for k, v in report.items() if k not in ("rows", "raw")}
    print(json.dumps(summary))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
