"""API keys through the app in-process: 401 / 403 / 429 on every guarded route and the WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import Depends, FastAPI

from service.api import create_app
from service.api.auth import route_scopes
from service.api.deps import require_scope
from service.config import AuthSettings, Settings
from tests.support import metric_samples, noise_jpeg

pytestmark = pytest.mark.integration

T = TypeVar("T")
DEAD_CAMERA = "rtsp://127.0.0.1:9/cam"  # nothing listens: the stream is accepted and keeps connecting
KEYS = "pose-key scopes=pose name=poser\nstreams-key scopes=streams name=watcher\nslow-key rate=1/min name=slow\n"
WS_PATH = "/v1/streams/{stream_id}/ws"


def settings_for(model_dir: Path, key_file: Path, **overrides: Any) -> Settings:
    key_file.write_text(KEYS)
    base: dict[str, Any] = {"model_dir": model_dir, "api_keys": ("env-key",), "api_key_file": key_file}
    return Settings(**{**base, **overrides})


@asynccontextmanager
async def app_for(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app in-process, its lifespan run, and an httpx client on it (WebSockets: `handshake`)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=30) as client:
            yield app, client


def run(settings: Settings, scenario: Callable[[FastAPI, httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with app_for(settings) as (app, client):
            return await scenario(app, client)

    return asyncio.run(main())


async def handshake(
    app: FastAPI, path: str, *, token: str | None = None, headers: dict[str, str] | None = None, denial: bool = True
) -> list[dict[str, Any]]:
    """A WebSocket handshake through the ASGI app; what the app sent until it closed or denied it.

    `denial`: the server supports the HTTP denial response extension (uvicorn does).
    """
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.accept":
            inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": f"token={token}".encode() if token else b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "root_path": "",
        "client": ("127.0.0.1", 50000),
        "server": ("app", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if denial else {},
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return sent


def denied(messages: list[dict[str, Any]]) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(status, headers, JSON body) of a WebSocket denial response."""
    start, body = messages[0], messages[-1]
    assert start["type"] == "websocket.http.response.start", messages
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body["body"])


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def jpeg_headers(key: str | None = None) -> dict[str, str]:
    return {"content-type": "image/jpeg", **(bearer(key) if key else {})}


def test_scopes_on_every_guarded_route(model_dir: Path, tmp_path: Path) -> None:
    image = noise_jpeg()

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
        created = await client.post("/v1/streams", json={"url": DEAD_CAMERA}, headers=bearer("streams-key"))
        sid = created.json()["id"]
        out: dict[str, Any] = {"created": created}
        for who in (None, "wrong-key", "pose-key", "streams-key", "env-key"):
            headers = bearer(who) if who else {}
            out[who, "pose"] = await client.post("/v1/pose", content=image, headers=jpeg_headers(who))
            out[who, "backends"] = await client.get("/v1/backends", headers=headers)
            out[who, "list"] = await client.get("/v1/streams", headers=headers)
            out[who, "one"] = await client.get(f"/v1/streams/{sid}", headers=headers)
            out[who, "ws"] = await handshake(app, f"/v1/streams/{sid}/ws", token=who)
        out["x-api-key"] = await client.get("/v1/backends", headers={"x-api-key": "pose-key"})
        out["ws header"] = await handshake(app, f"/v1/streams/{sid}/ws", headers=bearer("streams-key"))
        out["forbidden delete"] = await client.delete(f"/v1/streams/{sid}", headers=bearer("pose-key"))
        out["delete"] = await client.delete(f"/v1/streams/{sid}", headers=bearer("streams-key"))
        return out

    out = run(settings_for(model_dir, tmp_path / "keys"), scenario)
    assert out["created"].status_code == 201
    http_routes = ("pose", "backends", "list", "one")
    for route in http_routes:
        for who in (None, "wrong-key"):
            r = out[who, route]
            assert r.status_code == 401, (who, route, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    for who, allowed in (("pose-key", {"pose", "backends"}), ("streams-key", {"list", "one"})):
        for route in http_routes:
            r = out[who, route]
            if route in allowed:
                assert r.status_code == 200, (who, route, r.text)
            else:
                assert r.status_code == 403, (who, route, r.text)
                assert r.json()["error"]["code"] == "forbidden"
                assert "insufficient_scope" in r.headers["www-authenticate"]
    assert all(out["env-key", route].status_code == 200 for route in http_routes)  # plain env keys: every scope
    assert out["x-api-key"].status_code == 200

    for who in (None, "wrong-key"):
        status, headers, body = denied(out[who, "ws"])
        assert (status, body["error"]["code"]) == (401, "unauthorized") and headers["www-authenticate"] == "Bearer"
    status, _, body = denied(out["pose-key", "ws"])
    assert (status, body["error"]["code"]) == (403, "forbidden")
    for accepted in (out["streams-key", "ws"], out["env-key", "ws"], out["ws header"]):
        assert accepted[0]["type"] == "websocket.accept", accepted
    assert out["forbidden delete"].status_code == 403 and out["delete"].status_code == 204


def test_rate_limit_answers_429_with_retry_after_before_reading_the_body(model_dir: Path, tmp_path: Path) -> None:
    """`slow` may make one request a minute; the refused ones never have their bodies read."""
    consumed: list[str] = []

    def body(name: str, data: bytes) -> Callable[[], AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            consumed.append(name)
            yield data

        return chunks

    image = noise_jpeg()
    stream_json = json.dumps({"url": DEAD_CAMERA}).encode()

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
        out: dict[str, Any] = {}
        post = client.post
        out["first"] = await post("/v1/pose", content=body("first", image)(), headers=jpeg_headers("slow-key"))
        out["pose"] = await post("/v1/pose", content=body("limited pose", image)(), headers=jpeg_headers("slow-key"))
        json_headers = {"content-type": "application/json", **bearer("slow-key")}
        out["streams"] = await post("/v1/streams", content=body("limited streams", stream_json)(), headers=json_headers)
        out["backends"] = await client.get("/v1/backends", headers=bearer("slow-key"))
        out["ws"] = await handshake(app, "/v1/streams/none/ws", token="slow-key")
        no_key = {"content-type": "application/json"}
        out["no key"] = await post("/v1/streams", content=body("no key", stream_json)(), headers=no_key)
        out["other key"] = await client.get("/v1/backends", headers=bearer("pose-key"))  # its own bucket
        out["metrics"] = (await client.get("/metrics")).text
        return out

    out = run(settings_for(model_dir, tmp_path / "keys"), scenario)
    assert out["first"].status_code == 200, out["first"].text
    for name in ("pose", "streams", "backends"):
        r = out[name]
        assert r.status_code == 429, (name, r.text)
        assert r.json()["error"]["code"] == "rate_limited" and "'slow'" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60  # one token a minute
    status, headers, _ = denied(out["ws"])
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
    assert out["no key"].status_code == 401
    assert consumed == ["first"]  # refused requests were answered without reading their bodies
    assert out["other key"].status_code == 200
    counts = {
        (labels["route"], labels["code"]): value
        for labels, value in metric_samples(out["metrics"], "poseserve_requests_total")
    }
    assert counts[("/v1/pose", "200")] == 1 and counts[("/v1/pose", "429")] == 1
    assert counts[("/v1/streams", "429")] == 1 and counts[("/v1/streams", "401")] == 1
    assert counts[("/v1/backends", "429")] == 1


def test_websocket_refusal_without_the_denial_extension_closes_before_accepting(
    model_dir: Path, tmp_path: Path
) -> None:
    async def scenario(app: FastAPI, _: httpx.AsyncClient) -> list[list[dict[str, Any]]]:
        path = "/v1/streams/none/ws"
        return [
            await handshake(app, path, token="wrong-key", denial=False),
            await handshake(app, path, token="pose-key", denial=False),
            await handshake(app, path, token="slow-key", denial=False),
            await handshake(app, path, token="slow-key", denial=False),
        ]

    missing, forbidden, _, limited = run(settings_for(model_dir, tmp_path / "keys", preload=()), scenario)
    for messages, code in ((missing, 1008), (forbidden, 1008), (limited, 1013)):
        assert [m["type"] for m in messages] == ["websocket.close"] and messages[0]["code"] == code


@pytest.mark.parametrize("protect", [False, True])
def test_health_and_metrics_are_open_by_default_and_protected_when_configured(
    model_dir: Path, tmp_path: Path, protect: bool
) -> None:
    auth = AuthSettings(protect_health=protect, protect_metrics=protect)

    async def scenario(_: FastAPI, client: httpx.AsyncClient) -> dict[str, list[int]]:
        out = {}
        for path in ("/healthz", "/readyz", "/metrics"):
            out[path] = [
                (await client.get(path)).status_code,
                (await client.get(path, headers=bearer("wrong-key"))).status_code,
                (await client.get(path, headers=bearer("streams-key"))).status_code,  # any scope will do
            ]
        out["/docs"] = [(await client.get("/docs")).status_code]
        return out

    out = run(settings_for(model_dir, tmp_path / "keys", auth=auth), scenario)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert out[path] == ([401, 401, 200] if protect else [200, 200, 200]), path
    assert out["/docs"] == [200]


def test_every_v1_route_is_in_the_scope_table(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tmp_path, preload=()))
    table = route_scopes(AuthSettings())
    paths = {p for p in app.openapi()["paths"] if p.startswith("/v1")} | {WS_PATH}
    assert paths <= set(table), paths - set(table)
    assert {p: table[p] for p in paths} == {
        "/v1/pose": "pose",
        "/v1/backends": "pose",
        "/v1/streams": "streams",
        "/v1/streams/{stream_id}": "streams",
        "/v1/streams/{stream_id}/frame.jpg": "streams",
        WS_PATH: "streams",
    }


def test_route_outside_the_table_checks_its_own_scope(model_dir: Path, tmp_path: Path) -> None:
    """The routes' `require_scope` dependency is the check of last resort for a path the table misses."""
    settings = settings_for(model_dir, tmp_path / "keys", preload=())

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> list[int]:
        async def extra() -> dict[str, str]:
            return {"ok": "yes"}

        app.add_api_route("/extra", extra, dependencies=[Depends(require_scope("streams"))])
        return [
            (await client.get("/extra", headers=headers)).status_code
            for headers in ({}, bearer("pose-key"), bearer("streams-key"))
        ]

    assert run(settings, scenario) == [401, 403, 200]


def test_unlisted_v1_path_needs_a_key(model_dir: Path, tmp_path: Path) -> None:
    async def scenario(_: FastAPI, client: httpx.AsyncClient) -> list[int]:
        return [(await client.get("/v1/nothing-here", headers=h)).status_code for h in ({}, bearer("pose-key"))]

    assert run(settings_for(model_dir, tmp_path / "keys", preload=()), scenario) == [401, 404]


def test_the_openapi_document_says_which_routes_need_a_key(model_dir: Path, tmp_path: Path) -> None:
    keyed = create_app(settings_for(model_dir, tmp_path / "keys", auth=AuthSettings(protect_health=True))).openapi()
    open_ = create_app(Settings(model_dir=model_dir)).openapi()
    either = [{"bearer": []}, {"apiKey": []}]
    for document, required in ((keyed, True), (open_, False)):
        assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        for path, item in document["paths"].items():
            for method, operation in item.items():
                guarded = path.startswith("/v1") or (required and path in ("/healthz", "/readyz"))
                expected = (either if required else [*either, {}]) if guarded else None
                assert operation.get("security") == expected, (path, method, operation.get("security"))
    assert "`pose` scope" in keyed["paths"]["/v1/pose"]["post"]["description"]
    assert "`streams` scope" in keyed["paths"]["/v1/streams"]["post"]["description"]
