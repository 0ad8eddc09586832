"""A fleet of real RTSP cameras on loopback: GStreamer rtsp-server + one ffmpeg encoder per video.

Videos are first normalised once (H.264, `fps`, at most `max_side` pixels, short GOP) into a
cache folder, then streamed with `-c copy` in a loop, so the encoders cost almost no CPU and the
readers see a steady `fps`. Every process started here is stopped by `stop()` (also on errors).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from service.spawn import free_port

__all__ = ["CameraFleet", "FleetError", "fleet_available"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"
DEFAULT_CACHE = Path.home() / ".cache" / "poseserve" / "fleet"


class FleetError(RuntimeError):
    pass


def fleet_available() -> str | None:
    """None when the fleet can run here, else the reason it cannot."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (Debian python3 with python3-gi)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return "GStreamer rtsp-server bindings missing (apt: gir1.2-gst-rtsp-server-1.0 python3-gi)"
    if subprocess.run(["which", "ffmpeg"], capture_output=True, check=False).returncode != 0:
        return "ffmpeg not found (apt: ffmpeg)"
    return None


def normalise(video: Path, *, fps: int, max_side: int, cache: Path = DEFAULT_CACHE) -> Path:
    """An H.264 copy of `video` at `fps` and at most `max_side` px, GOP = 1 s (cached by content)."""
    digest = hashlib.sha256(video.read_bytes()).hexdigest()[:16]
    out = cache / f"{video.stem}-{digest}-{fps}fps-{max_side}.mp4"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    scale = f"scale='if(gt(iw,ih),min({max_side},iw),-2)':'if(gt(iw,ih),-2,min({max_side},ih))',fps={fps}"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(video), "-vf", scale, "-an"]
    cmd += [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-g",
        str(fps),
        "-bf",
        "0",
        str(tmp),
    ]
    subprocess.run(cmd, check=True, timeout=300)
    os.replace(tmp, out)
    return out


class CameraFleet:
    """`urls[i]` is an RTSP URL playing `videos[i]` in a loop at `fps`."""

    def __init__(self, videos: Sequence[Path], *, fps: int = 25, max_side: int = 640) -> None:
        self.videos = [normalise(v, fps=fps, max_side=max_side) for v in videos]
        self.rtsp_port = free_port()
        self.udp_ports = [free_port(socket.SOCK_DGRAM) for _ in self.videos]
        self.urls = [f"rtsp://127.0.0.1:{self.rtsp_port}/cam{i + 1}" for i in range(len(self.videos))]
        self._server: subprocess.Popen[str] | None = None
        self._encoders: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CameraFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        self.start_server()
        for video, port in zip(self.videos, self.udp_ports, strict=True):
            cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video)]
            cmd += ["-c", "copy", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"]
            self._encoders.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))

    def start_server(self, ready_timeout_s: float = 20.0) -> None:
        cmd = [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(self.rtsp_port)]
        for i, port in enumerate(self.udp_ports):
            cmd += ["--mount", f"cam{i + 1}={port}"]
        self._server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_timeout_s
        assert self._server.stdout is not None
        os.set_blocking(self._server.stdout.fileno(), False)
        buffer = ""
        while "READY" not in buffer:
            if self._server.poll() is not None:
                raise FleetError(f"rtsp server exited with {self._server.returncode}")
            if time.monotonic() > deadline:
                raise FleetError(f"rtsp server not ready within {ready_timeout_s:g} s")
            with contextlib.suppress(TypeError):
                buffer += self._server.stdout.read() or ""
            time.sleep(0.05)

    def kill_server(self) -> None:
        """Kill the RTSP server abruptly (cameras go away; encoders keep pushing)."""
        if self._server is not None:
            self._server.kill()
            self._server.wait(timeout=10)
            self._server = None

    @contextlib.contextmanager
    def server_paused(self) -> Iterator[None]:
        """SIGSTOP the server: connections stay open but no packet flows (a stalled camera)."""
        assert self._server is not None
        os.kill(self._server.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self._server.pid, signal.SIGCONT)

    def stop(self) -> None:
        procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = list(self._encoders)
        if self._server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._server.pid, signal.SIGCONT)
            procs.append(self._server)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self._encoders, self._server = [], None
