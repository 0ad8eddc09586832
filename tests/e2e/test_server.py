"""A real `poseserve serve` (uvicorn) subprocess on an ephemeral loopback port."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import bad_inputs, batches_larger_than_one, sample_jpeg

pytestmark = pytest.mark.e2e

MAX_BYTES = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w+")
    env = {
        **os.environ,
        "POSESERVE_PORT": str(port),
        "POSESERVE_HOST": "127.0.0.1",
        "POSESERVE_MODEL_DIR": str(model_dir),
        "POSESERVE_MAX_IMAGE_BYTES": str(MAX_BYTES),
        "POSESERVE_BATCHING__MAX_WAIT_MS": "20",
        "POSESERVE_BATCHING__INTRA_OP_THREADS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"server exited early: {log.seek(0) or log.read()}"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready within 90 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_bad_inputs_then_still_ready(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for bad in bad_inputs(MAX_BYTES):
            url = "/v1/pose" + (f"?{bad.query}" if bad.query else "")
            if bad.multipart:
                r = client.post(url, files={"file": ("x.jpg", bad.body, "image/jpeg")})
            else:
                r = client.post(
                    url,
                    content=bad.body,
                    headers={"content-type": bad.content_type} if bad.content_type else {},
                )
            assert r.status_code == bad.status, f"{bad.name}: {r.status_code} {r.text}"
            assert r.json()["error"]["code"] == bad.code, bad.name
            assert client.get("/readyz").status_code == 200, f"not ready after {bad.name}"


def test_sixteen_concurrent_requests_batch_together(server: str) -> None:
    image = sample_jpeg()

    def one(_: int) -> int:
        return httpx.post(
            f"{server}/v1/pose", content=image, headers={"content-type": "image/jpeg"}, timeout=60
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes == [200] * 16
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    assert batches_larger_than_one(metrics) >= 1
    for name in (
        "poseserve_queue_wait_seconds_count",
        "poseserve_inference_seconds_count",
        "poseserve_request_seconds_count",
    ):
        assert name in metrics


def test_curl_multipart_like_the_readme(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/pose", files={"image": ("person.jpg", sample_jpeg(), "image/jpeg")}, timeout=30
    )
    assert r.status_code == 200
    persons = r.json()["persons"]
    assert len(persons) >= 2 and all(len(p["keypoints"]) == 17 for p in persons)
