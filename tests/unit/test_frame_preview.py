"""FramePreviews: at most `fps` encodes per second per stream, concurrent requests share one encode."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import cv2
import numpy as np
import pytest

from service.errors import NoFrameError
from service.streams.preview import FramePreviews
from service.streams.reader import Frame
from service.streams.stream import Stream
from tests.support import FakeClock

pytestmark = pytest.mark.unit


class FakeReader:
    def __init__(self) -> None:
        self.frame: Frame | None = None

    def push(self, seq: int) -> None:
        image = np.full((24, 32, 3), seq * 10 % 256, np.uint8)
        self.frame = Frame(seq, image, 0, 0.0)

    def latest(self, after_seq: int = 0) -> Frame | None:
        return self.frame if self.frame is not None and self.frame.seq > after_seq else None


class FakeStream:
    def __init__(self) -> None:
        self.id, self.state, self.reader = "s1", "connecting", FakeReader()


def grey(jpeg: bytes) -> int:
    return int(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)[0, 0])


def test_rate_limit_and_newest_frame() -> None:
    clock = FakeClock()
    fake = FakeStream()
    stream = cast(Stream, fake)

    async def scenario(previews: FramePreviews) -> list[Any]:
        out: list[Any] = []
        with pytest.raises(NoFrameError):
            await previews.jpeg(stream, fps=2)
        fake.reader.push(1)
        out.append(await previews.jpeg(stream, fps=2))  # encoded
        fake.reader.push(2)
        clock.advance_ms(100)
        out.append(await previews.jpeg(stream, fps=2))  # within 500 ms: the cached frame 1
        clock.advance_ms(450)
        out.append(await previews.jpeg(stream, fps=2))  # frame 2, encoded
        clock.advance_ms(600)
        out.append(await previews.jpeg(stream, fps=2))  # no newer frame: cached, no encode
        fake.reader.push(3)
        clock.advance_ms(600)
        out.extend(await asyncio.gather(*(previews.jpeg(stream, fps=2) for _ in range(8))))  # one shared encode
        return out

    with ThreadPoolExecutor(2) as pool:
        previews = FramePreviews(pool, clock=clock)
        out = asyncio.run(scenario(previews))
    assert [grey(j) for j in out[:4]] == [10, 10, 20, 20]
    assert {grey(j) for j in out[4:]} == {30} and len({id(j) for j in out[4:]}) == 1
    assert previews.encodes == 3
