"""The frame preview of `GET /v1/streams/{id}/frame.jpg`: each stream's latest frame as a JPEG.

At most `preview_fps` encodes per second per stream, whatever the number of viewers: the encoded
bytes are cached per stream and handed out until the interval has passed and a newer frame exists.
Encoding runs on a thread pool, never on the event loop; concurrent requests share one encode.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import cv2
import numpy as np

from service.config import StreamSettings
from service.errors import NoFrameError
from service.streams.stream import Stream

__all__ = ["JPEG_QUALITY", "FramePreviews", "encode_jpeg", "preview_refusal"]

JPEG_QUALITY = 80


def preview_refusal(settings: StreamSettings, skeleton_only: bool) -> str | None:
    """Why a stream's frames may not be shown (privacy), or None: off unless `streams.preview_enabled`,
    and never for a skeleton-only stream (no pixels are kept after inference)."""
    if not settings.preview_enabled:
        return "frame preview is off (streams.preview_enabled)"
    if settings.skeleton_only or skeleton_only:
        return "the stream is skeleton-only: no frame pixels are kept"
    return None


def encode_jpeg(image_bgr: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """(H, W, 3) uint8 BGR -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class _Cached:
    jpeg: bytes | None = None
    seq: int = 0
    """frame number of `jpeg` (0: none yet)"""
    encoded_mono: float = -math.inf
    pending: asyncio.Future[bytes] | None = None


class FramePreviews:
    """Per stream: the last encoded frame, refreshed at most `fps` times a second."""

    def __init__(self, pool: Executor, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._clock = clock
        self._cache: weakref.WeakKeyDictionary[Stream, _Cached] = weakref.WeakKeyDictionary()  # gone with its stream
        self.encodes = 0

    async def jpeg(self, stream: Stream, fps: float) -> bytes:
        """The stream's latest frame as JPEG (possibly up to `1 / fps` s old); NoFrameError before the first frame."""
        cached = self._cache.setdefault(stream, _Cached())
        if cached.pending is not None:
            return await asyncio.shield(cached.pending)
        now = self._clock()
        fresh = now - cached.encoded_mono < 1.0 / fps
        frame = None if fresh else stream.reader.latest(cached.seq)
        if frame is None:
            if cached.jpeg is None:
                raise NoFrameError(f"stream {stream.id!r} has no frame yet (state {stream.state})")
            return cached.jpeg
        cached.encoded_mono, seq = now, frame.seq
        self.encodes += 1
        pending = asyncio.get_running_loop().run_in_executor(self._pool, encode_jpeg, frame.image_bgr)
        cached.pending = pending

        def store(done: asyncio.Future[bytes]) -> None:
            cached.pending = None
            if not done.cancelled() and done.exception() is None:
                cached.jpeg, cached.seq = done.result(), seq

        pending.add_done_callback(store)
        return await asyncio.shield(pending)  # a client that leaves does not cancel the others' encode
