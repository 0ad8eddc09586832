"""`GET /viewer`: the live viewer, one static HTML page (vanilla JS, no build step, nothing fetched
from elsewhere). The page holds no data: it calls `/v1/streams`, the stream's WebSocket and
`frame.jpg` with the key the user gives it, so it is served without auth."""

from __future__ import annotations

import functools
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.api.openapi import HTML_ANSWER

__all__ = ["router"]

router = APIRouter()


@functools.cache
def _page() -> bytes:
    return files("service.api").joinpath("viewer.html").read_bytes()


@router.get("/viewer", response_class=HTMLResponse, responses={200: HTML_ANSWER})
async def viewer() -> HTMLResponse:
    """The live viewer: choose a stream, see skeletons over its latest frame, fps and latency.
    Takes an API key from its field or the URL fragment (`#token=KEY&stream=ID`)."""
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})
