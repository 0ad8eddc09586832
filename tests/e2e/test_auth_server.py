"""A real `poseserve serve` with a key file: SIGHUP swaps keys, a bad file keeps them, no key is logged."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import assert_clean_log, running_server

pytestmark = pytest.mark.e2e


def write_atomically(path: Path, text: str) -> None:
    """The way an operator should replace a key file: a reader never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.1)


def status(client: httpx.Client, key: str) -> int:
    return client.get("/v1/backends", headers={"authorization": f"Bearer {key}"}).status_code


async def ws_outcome(url: str, headers: dict[str, str] | None = None) -> str:
    """'refused NNN' (the handshake's HTTP status) or 'closed NNNN' (the close code after accepting)."""
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), timeout=10)
    except InvalidStatus as exc:
        return f"refused {exc.response.status_code}"
    except ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else None}"
    return "open"


def test_sighup_reloads_the_key_file_and_no_key_reaches_the_log(model_dir: Path, tmp_path: Path) -> None:
    old, new, env_key, wrong = (f"{name}-{secrets.token_hex(12)}" for name in ("old", "new", "env", "wrong"))
    key_file = tmp_path / "keys"
    write_atomically(key_file, f"{old} scopes=pose name=old-team\n")
    log = tmp_path / "server.log"
    env = {
        "POSESERVE_API_KEY_FILE": str(key_file),
        "POSESERVE_API_KEYS": f"{env_key}:streams",
        "POSESERVE_LOG_LEVEL": "debug",  # the most the server ever logs
        "POSESERVE_PRELOAD": "",
    }
    with running_server(model_dir, log, **env) as (url, pid), httpx.Client(base_url=url, timeout=30) as client:
        assert status(client, old) == 200 and status(client, new) == 401
        assert status(client, env_key) == 403  # a streams key on a pose route

        write_atomically(key_file, f"{new} scopes=pose name=new-team\n")
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: status(client, new) == 200, 30, "the new key accepted")
        assert status(client, old) == 401
        assert status(client, env_key) == 403  # environment keys stay across reloads

        write_atomically(key_file, f"{old} scopes=everything\n")  # malformed: the keys stay as they are
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "not reloaded" in log.read_text(), 30, "the reload error logged")
        assert status(client, new) == 200 and status(client, old) == 401
        assert client.get("/readyz").status_code == 200

        ws_base = url.replace("http://", "ws://") + "/v1/streams/no-such-stream/ws?token="
        assert asyncio.run(ws_outcome(ws_base + env_key)) == "closed 4404"  # admitted, then: no such stream
        assert asyncio.run(ws_outcome(ws_base + wrong)) == "refused 401"
        assert asyncio.run(ws_outcome(ws_base + new)) == "refused 403"
        assert asyncio.run(ws_outcome(ws_base, {"authorization": f"Bearer {env_key}"})) == "closed 4404"
        assert asyncio.run(ws_outcome(ws_base, {"x-api-key": wrong})) == "refused 401"
    text = log.read_text()
    assert "API keys reloaded" in text and "added: new-team; removed: old-team" in text
    assert "line 1: scopes must name" in text
    assert "token=[redacted]" in text  # uvicorn logged the WebSocket paths, without their keys
    assert "authorization: [redacted]" in text  # and at debug level the handshake headers
    for key in (old, new, env_key, wrong):
        assert key not in text, f"a key ({key.split('-')[0]}) is in the server log"
    assert_clean_log(log)
