"""Start `poseserve serve` as a subprocess on an ephemeral loopback port (benchmarks, tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import httpx

__all__ = ["free_port", "spawned_server", "stop_process"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing on 127.0.0.1 uses right now (TCP, or UDP with `socket.SOCK_DGRAM`)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawned_server(
    env: dict[str, str] | None = None,
    *,
    log: IO[str] | None = None,
    ready_timeout_s: float = 120.0,
    argv: Callable[[int], list[str]] | None = None,
    unset: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(base url, process) once /readyz answers 200; terminated (then killed) on exit.

    `env` adds POSESERVE_* settings to this process's environment, less the variables in `unset`;
    output goes to `log`. `argv` (given the port) starts another server in its place, e.g. a bare
    ASGI app under uvicorn.
    """
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in unset}
    full_env = {**inherited, **(env or {}), "POSESERVE_HOST": "127.0.0.1", "POSESERVE_PORT": str(port)}
    proc = subprocess.Popen(
        argv(port) if argv is not None else [sys.executable, "-m", "service", "serve"],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before becoming ready")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready within {ready_timeout_s:g} s")
            time.sleep(0.2)
        yield url, proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; returns once the process is reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
