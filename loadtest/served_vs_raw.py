"""Served against raw, side by side: how far the server stays from its model alone.

    python -m loadtest.served_vs_raw --image photo.jpg [--rounds 6]     # starts a server of its own
    python -m loadtest.served_vs_raw --image photo.jpg --server now=http://127.0.0.1:8000 \\
        --server before=http://127.0.0.1:8001

Each round measures, one after another (the servers' order alternating between rounds, as these
machines' speed drifts within minutes):

- the variant the backend serves here (`choose_variant`), as bare sessions in this process: one
  session of every core's thread alone (a lone image's median ms), and each split of the cores
  into sessions (`core_splits`, batch 1; the best one's images per second);
- each server at concurrency 1 (median latency) and at `--concurrency` (requests per second),
  through `wrk` where it is installed (a C client: about 0.6 ms of a request on 2 cores), else
  this process's httpx client (2-3 ms; the report says which).

It reports, per round and as medians over rounds, each server's gap (its concurrency-1 median
minus the bare lone image's) and ratio (its requests per second over the best bare split's images
per second). Servers given must be running this backend on this machine; without one it starts a
server of this tree. The bare sessions are idle while a server is measured, and the servers idle
while the bare sessions run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.weights import WeightsStore
from service.backends.variants import choose_variant
from service.bench import bench_http, format_table, write_json
from service.config import Settings
from service.imaging import decode_image
from service.spawn import spawned_server
from service.tune import BareVariant, core_splits

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_LUA = """local f = io.open(os.getenv("POSESERVE_BODY"), "rb")
wrk.body = f:read("*all")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
"""


@dataclass(frozen=True)
class Level:
    """One closed-loop load level against one server."""

    p50_ms: float
    rps: float
    errors: int


def parse_wrk(text: str) -> Level:
    """`wrk --latency` output -> its median latency, answered (2xx) requests per second, and non-2xx
    answers plus socket errors. wrk's own Requests/sec counts refusals too: a server shedding load
    with fast 503s would read as thousands of requests a second. Its latencies include them too,
    hence the errors beside them. Raises ValueError when the output has no latency distribution."""
    median = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),", text, re.MULTILINE)
    if median is None or total is None:
        raise ValueError(f"not wrk --latency output: {text[-500:]!r}")
    refused = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", text))
    errors = refused
    if sockets := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(n) for n in sockets.groups())
    seconds = float(total.group(2)) * {"m": 60e3, **_UNITS_MS}[total.group(3)] / 1e3
    answered = int(total.group(1)) - refused
    return Level(float(median.group(1)) * _UNITS_MS[median.group(2)], answered / seconds, errors)


def summarize(rounds: list[dict[str, Any]], servers: list[str]) -> dict[str, Any]:
    """Medians over rounds: the bare figures, and per server its gap (ms) and ratio, each taken
    round by round (so that both sides of one come from the same minute)."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    out: dict[str, Any] = {
        "bare_alone_ms": median([r["bare_alone_ms"] for r in rounds]),
        "bare_best_img_per_s": median([r["bare_best_img_per_s"] for r in rounds]),
    }
    for name in servers:
        out[name] = {
            "c1_p50_ms": median([r[name]["c1_p50_ms"] for r in rounds]),
            "gap_ms": median([r[name]["c1_p50_ms"] - r["bare_alone_ms"] for r in rounds]),
            "loaded_rps": median([r[name]["loaded_rps"] for r in rounds]),
            "ratio": round(statistics.median(r[name]["loaded_rps"] / r["bare_best_img_per_s"] for r in rounds), 3),
        }
    return out


class _Client:
    """Closed-loop load through `wrk` if installed, else httpx in this process."""

    def __init__(self, image: Path, backend: str) -> None:
        self.image, self.backend = image, backend
        self.wrk = shutil.which("wrk")
        self._body = image.read_bytes() if self.wrk is None else b""
        self._dir = tempfile.TemporaryDirectory()
        self._script = Path(self._dir.name) / "post.lua"
        self._script.write_text(_LUA)

    @property
    def name(self) -> str:
        return "wrk" if self.wrk else "httpx"

    def level(self, base_url: str, concurrency: int, seconds: float) -> Level:
        if self.wrk is None:
            (row,) = bench_http(base_url, self._body, concurrency=(concurrency,), seconds=seconds, backend=self.backend)
            return Level(row["latency_p50_ms"], row["throughput_rps"], sum(row["errors"].values()))
        url = base_url.rstrip("/") + f"/v1/pose?backend={self.backend}"
        command = [self.wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(self._script), url]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            env={**os.environ, "POSESERVE_BODY": str(self.image)},
            check=True,
        )
        return parse_wrk(done.stdout)

    def close(self) -> None:
        self._dir.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="a JPEG photo to send and to run bare")
    parser.add_argument(
        "--server", action="append", metavar="NAME=URL", help="a running server (repeat for more; default: start one)"
    )
    parser.add_argument("--backend", default=None, help="the backend the servers run (default: the settings')")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=8, help="the loaded level's clients")
    parser.add_argument("--c1-seconds", type=float, default=6.0)
    parser.add_argument("--loaded-seconds", type=float, default=10.0)
    parser.add_argument("--bare-seconds", type=float, default=3.0, help="per bare shape and round")
    parser.add_argument("--out", type=Path, default=Path("bench-results/served_vs_raw.json"))
    args = parser.parse_args()
    settings = Settings()
    backend = args.backend or settings.default_backend
    with contextlib.ExitStack() as stack:
        if args.server:
            servers = dict(s.split("=", 1) for s in args.server)
        else:
            env = {"POSESERVE_PRELOAD": backend, "POSESERVE_LOG_LEVEL": "warning"}
            servers = {"served": stack.enter_context(spawned_server(env))[0]}
        _compare(args, settings, backend, servers)


def _compare(args: argparse.Namespace, settings: Settings, backend: str, servers: dict[str, str]) -> None:
    store = WeightsStore(settings.model_dir)
    choice = choose_variant(store, backend, settings.backend(backend))
    image_rgb = decode_image(args.image.read_bytes(), max_pixels=settings.max_image_pixels)
    bare = BareVariant.load(store, backend, choice.settings, choice.runtime, choice.precision, image_rgb)
    cores = os.cpu_count() or 1
    splits = {f"{w}x{t}": bare.sessions(w, t, 1) for w, t in core_splits(cores, settings.backend(backend))}
    alone = splits.get(f"1x{cores}") or bare.sessions(1, cores, 1)
    client = _Client(args.image, backend)
    print(f"{backend}: {choice.runtime} {choice.precision} ({choice.reason}); client {client.name}", flush=True)
    try:
        for url in servers.values():  # warm-up, untimed
            client.level(url, args.concurrency, 2)
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            row: dict[str, Any] = {
                "round": index,
                "bare_alone_ms": round(bare.measure(alone, 1, args.bare_seconds)[1], 2),
            }
            per_split = {name: bare.measure(sessions, 1, args.bare_seconds)[0] for name, sessions in splits.items()}
            row["bare_best_split"], best = max(per_split.items(), key=lambda kv: kv[1])
            row["bare_best_img_per_s"] = round(best, 1)
            order = list(servers) if index % 2 == 0 else list(servers)[::-1]
            for name in order:
                lone = client.level(servers[name], 1, args.c1_seconds)
                loaded = client.level(servers[name], args.concurrency, args.loaded_seconds)
                row[name] = {
                    "c1_p50_ms": round(lone.p50_ms, 2),
                    "loaded_rps": round(loaded.rps, 1),
                    "errors": lone.errors + loaded.errors,
                }
            rounds.append(row)
            print(
                f"round {index}: bare alone {row['bare_alone_ms']} ms, best {row['bare_best_split']} "
                f"{row['bare_best_img_per_s']} img/s; "
                + "; ".join(
                    f"{n} c1 p50 {row[n]['c1_p50_ms']} ms, c{args.concurrency} {row[n]['loaded_rps']}/s"
                    + (f" ({row[n]['errors']} refused or failed)" if row[n]["errors"] else "")
                    for n in servers
                ),
                flush=True,
            )
    finally:
        client.close()
    summary = summarize(rounds, list(servers))
    table = [
        {
            "server": name,
            "c1_p50_ms": summary[name]["c1_p50_ms"],
            "gap_ms": summary[name]["gap_ms"],
            f"c{args.concurrency}_rps": summary[name]["loaded_rps"],
            "ratio": summary[name]["ratio"],
        }
        for name in servers
    ]
    print(
        f"medians of {args.rounds} rounds: bare alone {summary['bare_alone_ms']} ms, "
        f"best split {summary['bare_best_img_per_s']} img/s"
    )
    print(format_table(table, list(table[0])))
    write_json(args.out, "served_vs_raw", rounds, backend=backend, client=client.name, summary=summary)


if __name__ == "__main__":
    main()
