"""A process's link to Redis: the client, whether Redis is reachable now, reconnection with backoff.

Commands fail fast (one immediate retry on a fresh connection, then the error): the loops of
`gateway` and `worker` notice a failure, mark the link down and retry with a jittered backoff
until Redis answers again; nothing needs a restart. `run_id` tells whether the Redis that came
back is the same server (a blip: jobs and replies are still there) or a new one (they are gone).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.metrics import Metrics

__all__ = ["REDIS_ERRORS", "Backoff", "RedisLink"]

logger = logging.getLogger(__name__)

REDIS_ERRORS: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError, TimeoutError)
"""what a command raises when Redis is unreachable or went away"""


class Backoff:
    """Jittered exponential waits: `initial_s`, doubling up to `max_s`, until `reset`."""

    def __init__(self, initial_s: float = 0.05, max_s: float = 2.0, rng: random.Random | None = None) -> None:
        self.initial_s, self.max_s = initial_s, max_s
        self._next = initial_s
        self._rng = rng or random.Random()

    def next(self) -> float:
        wait = self._next * self._rng.uniform(0.5, 1.0)
        self._next = min(self.max_s, self._next * 2)
        return wait

    def reset(self) -> None:
        self._next = self.initial_s


class RedisLink:
    """The client of one process and the state of its connection (gauge `redis_connected`)."""

    def __init__(self, url: str, metrics: Metrics, *, backoff_max_s: float, role: str) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=10.0,  # above every BLOCK the loops use
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
        )
        self._metrics = metrics
        self._role = role
        self.backoff_max_s = backoff_max_s
        self.connected = False
        self.connected_at = 0.0
        """`time.monotonic()` when Redis was reached last after being out of reach"""
        self.run_id: str | None = None
        self._ever = False
        metrics.redis_connected.set(0)

    def lost(self, exc: BaseException) -> None:
        """A command failed: Redis is down (or went away) until `confirm` succeeds."""
        if self.connected:
            logger.warning("%s: lost Redis (%s: %s); reconnecting", self._role, type(exc).__name__, exc)
        self.connected = False
        self._metrics.redis_connected.set(0)

    async def confirm(self) -> bool:
        """Reach Redis now (raises what the command raises); True when it is another server than
        before (restarted: everything it held is gone)."""
        info: dict[str, Any] = await self.client.info("server")
        run_id = str(info.get("run_id", ""))
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        if not self.connected:
            self.connected_at = time.monotonic()
            if self._ever:
                self._metrics.redis_reconnects_total.inc()
                logger.warning("%s: Redis is back%s", self._role, " (a restarted server)" if restarted else "")
            self._ever = True
        self.connected = True
        self._metrics.redis_connected.set(1)
        return restarted

    def backoff(self) -> Backoff:
        return Backoff(max_s=self.backoff_max_s)

    async def close(self) -> None:
        await self.client.aclose()
