"""Mutated photos on one keep-alive connection to a real uvicorn subprocess: 200 or 4xx, and the
connection keeps working (the same socket answers every request, a good photo after them too)."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support import assert_clean_log, image_mutants, running_server, sample_images, sample_jpeg

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]

ANSWERS = {200, 400, 413, 415}


def client_socket(response: httpx.Response) -> str:
    """'host:port' of the client side of the connection that carried `response`; 'closed' once it is shut."""
    with contextlib.suppress(OSError):
        host, port = response.extensions["network_stream"].get_extra_info("client_addr")
        return f"{host}:{port}"
    return "closed"


def test_mutated_images_on_one_connection(model_dir: Path, tmp_path: Path) -> None:
    mutants = image_mutants(100, 4, sample_images())
    env = {"POSESERVE_BATCHING__MAX_WAIT_MS": "2", "POSESERVE_BATCHING__INTRA_OP_THREADS": "2"}
    log = tmp_path / "server.log"
    answers: list[httpx.Response] = []
    sockets: Counter[str] = Counter()
    with running_server(model_dir, log, **env) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        for m in mutants:
            answers.append(client.post("/v1/pose", content=m.body, headers={"content-type": m.media_type}))
            sockets[client_socket(answers[-1])] += 1
        good = client.post("/v1/pose", content=sample_jpeg(), headers={"content-type": "image/jpeg"})
        ready = client.get("/readyz")
        sockets.update(client_socket(r) for r in (good, ready))
    by_status = Counter(r.status_code for r in answers)
    assert set(by_status) <= ANSWERS, f"answers by status: {dict(by_status)}"
    assert by_status[200] >= 10 and by_status[400] >= 30, f"answers by status: {dict(by_status)}"
    assert good.status_code == 200 and len(good.json()["persons"]) >= 2, good.text
    assert ready.status_code == 200, ready.text
    assert len(sockets) == 1 and "closed" not in sockets, f"requests per client socket: {dict(sockets)}"
    assert_clean_log(log)
