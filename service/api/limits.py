"""A size limit on every request body but the image of `POST /v1/pose`.

`POST /v1/pose` reads its image itself under `max_image_bytes`. Every other body is a small JSON
document (a stream subscription), so it is capped at `max_json_body_bytes`: a body that declares
more, or streams more, ends in `413 too_large` at the first chunk past the limit, read no further
and never parsed.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.shed import POSE_PATH

__all__ = ["CapBody"]


class CapBody:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == POSE_PATH:
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        seen = int(declared) if declared.isdigit() else 0

        async def capped() -> Message:
            nonlocal seen
            if seen > limit:  # raised inside the route's body read, so the error handler and metrics see the route
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            message = await receive()
            if message["type"] == "http.request" and not declared.isdigit():
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, capped, send)
