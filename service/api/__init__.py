"""HTTP and WebSocket API (DESIGN §3): routes, status codes and JSON errors live here only."""

from service.api.app import create_app

__all__ = ["create_app"]
