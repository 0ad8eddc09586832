"""The floor of a burst measurement: a bare ASGI app on the server's own HTTP stack (uvicorn,
uvloop, httptools) that refuses every `POST` at once with the service's 503 body, and answers
`/readyz` and an empty `/metrics`. `python -m loadtest.burst --floor` sends it the same burst, so
the refusal latency the load generator and the machine alone cause is measured beside the
server's (no model, no middleware, no admission: what no server on this stack can beat here)."""

from __future__ import annotations

import json
from typing import Any

_REFUSAL = json.dumps({"error": {"code": "overloaded", "message": "floor: every request is refused"}}).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    status, body = (503, _REFUSAL) if scope["method"] == "POST" else (200, b"")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
