"""`poseserve worker`: load the named backends, then take their image jobs and cameras from Redis until stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from models.weights import WeightsStore
from service.backends import BackendManager
from service.config import Settings
from service.distributed.health import HealthServer
from service.distributed.link import RedisLink
from service.distributed.local import decode_pool, in_process_jobs, start_worker, stop_tasks, stream_manager
from service.metrics import Metrics

__all__ = ["run_worker"]

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, names: Sequence[str], *, metrics_port: int | None = None) -> None:
    """Blocks until SIGTERM/SIGINT. A backend that cannot load (no weights) fails the start.

    A gateway admitted every job already, and the job may have waited in Redis: here, only its
    deadline bounds its wait, not `max_queue_delay_ms` (which would drop the second batch a
    worker holds whenever one batch takes longer than that).
    """
    unbounded = {n: settings.backend(n).model_copy(update={"max_queue_delay_ms": None}) for n in names}
    settings = settings.model_copy(update={"backends": {**settings.backends, **unbounded}})
    metrics = Metrics()
    backends = BackendManager(settings, WeightsStore(settings.model_dir), metrics)
    link: list[RedisLink] = []  # the worker's connection, once serving

    def problems() -> list[str]:
        found = [f"backend {name} is not loaded" for name in names if not backends.loaded(name)]
        found += backends.problems()
        if not link or not link[0].connected:
            found.append("redis is unreachable")
        return found

    health = HealthServer(settings.host, metrics_port, metrics, problems) if metrics_port is not None else None
    pool = decode_pool(settings)
    try:
        if health is not None:
            health.start()  # live (/healthz) while the models load; ready once they have and Redis answers
        for name in names:
            backends.get(name)
        asyncio.run(_serve(settings, metrics, backends, pool, names, link))
    finally:
        if health is not None:
            health.stop()
        backends.close()
        pool.shutdown(wait=False, cancel_futures=True)


async def _serve(
    settings: Settings,
    metrics: Metrics,
    backends: BackendManager,
    pool: ThreadPoolExecutor,
    names: Sequence[str],
    link: list[RedisLink],
) -> None:
    manager = stream_manager(settings, backends, metrics, pool)
    manager.start()
    worker, tasks = start_worker(settings, metrics, backends, in_process_jobs(settings, backends, pool), manager, names)
    link.append(worker.link)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info("worker %s serving %s from %s", worker.worker_id, ", ".join(names), settings.redis_url)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    await stop_tasks(tasks)
    stopped.cancel()
    await manager.close()
    logger.info("worker %s stopped", worker.worker_id)
