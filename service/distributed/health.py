"""A worker's HTTP port: `/healthz`, `/readyz` and `/metrics` (probes and scraping).

A worker has no API, only this port (`poseserve worker --metrics-port`). `/readyz` answers 200
once every backend the worker serves is loaded with live workers and Redis is reachable, 503 with
the problems named otherwise, and sets `poseserve_ready` like the gateway's. Served by the standard
library's WSGI server on a thread of its own (prometheus_client's exposition app for `/metrics`),
so a busy event loop never fails a probe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from service.metrics import Metrics

__all__ = ["HealthServer"]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
        pass


class HealthServer:
    """Serves on `host:port` from `start()` until `stop()`; `problems()` says why it is not ready."""

    def __init__(self, host: str, port: int, metrics: Metrics, problems: Callable[[], list[str]]) -> None:
        self._metrics = metrics
        self._problems = problems
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._server = make_server(host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _ready(self) -> list[str]:
        problems = self._problems()
        self._metrics.ready.set(0.0 if problems else 1.0)
        return problems

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _json(start_response, 200, {"status": "ok"})
        if path == "/readyz":
            problems = self._ready()
            if problems:
                return _json(start_response, 503, {"status": "not_ready", "problems": problems})
            return _json(start_response, 200, {"status": "ready"})
        if path == "/metrics":
            self._ready()  # `poseserve_ready` as fresh as the scrape
            return self._metrics_app(environ, start_response)
        return _json(start_response, 404, {"error": {"code": "not_found", "message": f"no route {path}"}})


def _json(start_response: Callable[..., Any], status: int, doc: dict[str, Any]) -> list[bytes]:
    body = json.dumps(doc).encode()
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
