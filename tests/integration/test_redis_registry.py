"""The Redis stream registry of gateways against a real `redis-server`: many subscriptions at once
never pass `streams.max_streams`, and a name is taken once."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.config import Settings, StreamSettings
from service.distributed.cameras import NAMES_KEY, STREAMS_KEY, RemoteCameras
from service.distributed.link import RedisLink
from service.errors import DuplicateStreamError, StreamLimitError
from service.metrics import Metrics
from service.schemas import StreamCreate
from tests.redis_support import running_redis

pytestmark = pytest.mark.integration

CAMERA = "rtsp://127.0.0.1:9/cam"  # validated, never opened: no worker runs here


async def _gateways(url: str, settings: Settings, pool: ThreadPoolExecutor, count: int) -> list[RemoteCameras]:
    """``count`` gateways' registries, each on its own connection, Redis reached."""
    metrics = Metrics()
    out = []
    for i in range(count):
        link = RedisLink(url, metrics, backoff_max_s=1.0, role=f"gateway-{i}")
        await link.confirm()
        out.append(RemoteCameras(settings, metrics, pool, link, check_backend=lambda name: None))
    return out


def test_concurrent_subscriptions_stop_at_the_limit_and_names_are_unique(tmp_path: Path) -> None:
    settings = Settings(streams=StreamSettings(max_streams=3))

    async def scenario(url: str) -> tuple[list[object], list[object], int, int]:
        with ThreadPoolExecutor(2) as pool:
            gateways = await _gateways(url, settings, pool, 2)
            bodies = [StreamCreate(url=CAMERA, name=f"cam{i}") for i in range(8)]
            created = await asyncio.gather(
                *(gateways[i % 2].create(body) for i, body in enumerate(bodies)), return_exceptions=True
            )
            twins = await asyncio.gather(
                *(g.create(StreamCreate(url=CAMERA, name="twin")) for g in gateways), return_exceptions=True
            )
            client = gateways[0].link.client
            counts = (await client.hlen(STREAMS_KEY), await client.hlen(NAMES_KEY))
            for g in gateways:
                await g.link.close()
        return created, twins, *counts

    with running_redis(tmp_path) as server:
        created, twins, streams, names = asyncio.run(scenario(server.url))
    ok = [c for c in created if not isinstance(c, BaseException)]
    assert len(ok) == 3, created
    assert all(isinstance(c, StreamLimitError) for c in created if isinstance(c, BaseException)), created
    assert streams == names == 3
    # the registry is full: the twins are refused by the limit, checked before the name
    assert all(isinstance(t, StreamLimitError) for t in twins), twins


def test_a_name_is_registered_once(tmp_path: Path) -> None:
    settings = Settings(streams=StreamSettings(max_streams=10))

    async def scenario(url: str) -> list[object]:
        with ThreadPoolExecutor(2) as pool:
            (cameras,) = await _gateways(url, settings, pool, 1)
            out = await asyncio.gather(
                *(cameras.create(StreamCreate(url=CAMERA, name="door")) for _ in range(4)), return_exceptions=True
            )
            await cameras.link.close()
        return out

    with running_redis(tmp_path) as server:
        out = asyncio.run(scenario(server.url))
    assert sum(not isinstance(o, BaseException) for o in out) == 1, out
    assert sum(isinstance(o, DuplicateStreamError) for o in out) == 3, out
