"""The live viewer in real headless Chromium, driven over the Chrome DevTools Protocol: a real
server with the frame preview on, a real RTSP camera with people walking, and the page draws
skeletons over the camera's frames. The screenshot is kept under `POSESERVE_TEST_ARTEFACTS`
(default `<repo>/test-artefacts/`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import websockets

from loadtest.fleet import CameraFleet, fleet_available
from tests.support import REPO, assert_clean_log, running_server, shared_dir, skip_unless_ci

pytestmark = pytest.mark.e2e

SKELETON_DEADLINE_S = 30.0
FIRST_PERSON_BGR = (0x76, 0xE6, 0x00)  # the viewer's colour of the first person (#00e676)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--remote-debugging-port=0",
]


def artefacts_dir() -> Path:
    path = Path(os.environ.get("POSESERVE_TEST_ARTEFACTS", REPO / "test-artefacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        skip_unless_ci("chromium not found (apt: chromium)")
    return binary


@contextmanager
def chromium(binary: str, profile: Path, timeout_s: float = 30.0) -> Iterator[str]:
    """Headless Chromium on an ephemeral DevTools port: the WebSocket URL of its first page."""
    log = (profile.parent / "chromium.log").open("w")
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its renderers and helpers share its process group
    )
    try:
        deadline = time.monotonic() + timeout_s
        port_file = profile / "DevToolsActivePort"
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}: {_tail(profile.parent)}"
            assert time.monotonic() < deadline, f"no DevTools port in {timeout_s} s: {_tail(profile.parent)}"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
            if pages:
                yield pages[0]["webSocketDebuggerUrl"]
                break
            assert time.monotonic() < deadline, f"no page target in {timeout_s} s: {targets}"
            time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the browser process
        log.close()


def _tail(folder: Path) -> str:
    return (folder / "chromium.log").read_text(errors="replace")[-2000:]


class DevTools:
    """One CDP session over a page's WebSocket: `call` sends a command and returns its result."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, timeout_s: float = 15.0, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        async with asyncio.timeout(timeout_s):
            while True:
                reply = json.loads(await self.ws.recv())
                if reply.get("id") == call_id:  # events (no id) and other replies are skipped
                    assert "error" not in reply, f"{method}: {reply['error']}"
                    result: dict[str, Any] = reply["result"]
                    return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")


async def watch_viewer(page_ws: str, url: str) -> tuple[dict[str, Any], bytes, float]:
    """Open `url`; once the viewer drew a skeleton over a preview frame: (its status, a PNG
    screenshot, seconds it took)."""
    async with websockets.connect(page_ws, max_size=None, open_timeout=10) as ws:
        tools = DevTools(ws)
        await tools.call("Page.navigate", url=url)
        started = time.monotonic()
        while True:
            status = await tools.evaluate("JSON.stringify(window.poseserveViewer || null)")
            viewer = json.loads(status) if status else None
            if viewer and viewer["skeletonsDrawn"] >= 1 and viewer["previewFrames"] >= 1:
                break
            assert time.monotonic() - started < SKELETON_DEADLINE_S, f"no skeleton drawn: {viewer}"
            await asyncio.sleep(0.25)
        elapsed = time.monotonic() - started
        shot = await tools.call("Page.captureScreenshot", format="png")
        return viewer, base64.b64decode(shot["data"]), elapsed


def test_viewer_draws_skeletons_on_a_live_camera(model_dir: Path, tmp_path: Path) -> None:
    browser = chromium_binary()
    reason = fleet_available()
    if reason:
        skip_unless_ci(f"RTSP camera fleet unavailable: {reason}")
    video = shared_dir() / "data" / "videos" / "pose2sim_multi" / "cam01.mp4"
    if not video.is_file():
        skip_unless_ci(f"{video} not found (set POSESERVE_SHARED_DIR)")
    settings_env = {
        "POSESERVE_STREAMS__PREVIEW_ENABLED": "true",
        "POSESERVE_STREAMS__DEFAULT_MAX_FPS": "5",
        "POSESERVE_BATCHING__INTRA_OP_THREADS": "2",
    }
    log = tmp_path / "server.log"
    with (
        CameraFleet([video], fps=25) as fleet,
        running_server(model_dir, log, **settings_env) as (url, _),
        chromium(browser, tmp_path / "profile") as page_ws,
    ):
        created = httpx.post(f"{url}/v1/streams", json={"url": fleet.urls[0], "name": "cam1"}, timeout=30)
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        viewer, png, elapsed = asyncio.run(watch_viewer(page_ws, f"{url}/viewer#stream={stream_id}"))
    assert_clean_log(log)

    screenshot = artefacts_dir() / "viewer-live.png"
    screenshot.write_bytes(png)
    print(f"viewer: first skeleton after {elapsed:.1f} s, {viewer}; screenshot {screenshot}")
    assert viewer["lastError"] is None and viewer["streamId"] == stream_id and viewer["state"] == "live"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] >= 300 and image.shape[1] >= 600
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 500 and float(image.std()) > 10, "the screenshot is (nearly) one colour"
    skeleton_pixels = int(np.all(np.abs(image.astype(int) - FIRST_PERSON_BGR) <= 40, axis=-1).sum())
    assert skeleton_pixels > 50, f"no skeleton in the screenshot ({skeleton_pixels} pixels of its colour)"
