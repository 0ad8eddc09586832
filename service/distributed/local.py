"""The parts of a process that runs models itself, built one way for every process that does:
`serve` in-process, a gateway with `--local-workers`, and `poseserve worker`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from service.backends import BackendManager
from service.config import Settings
from service.distributed.camera_worker import CameraWorker
from service.distributed.transport import InProcessJobs
from service.distributed.worker import JobWorker
from service.metrics import Metrics
from service.priority import lower_this_thread
from service.streams.manager import StreamManager
from service.streams.preview import FramePreviews

__all__ = ["decode_pool", "in_process_jobs", "start_worker", "stop_tasks", "stream_manager"]


def decode_pool(settings: Settings) -> ThreadPoolExecutor:
    """Image decoding is CPU work like inference: it runs below the event loop too, so refusals stay
    prompt under a burst."""
    return ThreadPoolExecutor(
        max_workers=settings.decode_threads,
        thread_name_prefix="decode",
        initializer=lower_this_thread,
        initargs=(settings.batching.worker_nice,),
    )


def in_process_jobs(settings: Settings, backends: BackendManager, pool: ThreadPoolExecutor) -> InProcessJobs:
    return InProcessJobs(
        backends,
        pool,
        max_image_pixels=settings.max_image_pixels,
        jpeg_decode_scale=settings.jpeg_decode_scale,
    )


def stream_manager(
    settings: Settings, backends: BackendManager, metrics: Metrics, pool: ThreadPoolExecutor
) -> StreamManager:
    return StreamManager(
        settings.streams,
        backends,
        metrics,
        pool,
        default_backend=settings.default_backend,
        inference_timeout_s=settings.request_timeout_s,
        min_person_score=settings.min_person_score,
        det_every_n=settings.topdown.det_every_n,
    )


def start_worker(
    settings: Settings,
    metrics: Metrics,
    backends: BackendManager,
    local: InProcessJobs,
    manager: StreamManager,
    names: Sequence[str],
) -> tuple[JobWorker, list[asyncio.Task[None]]]:
    """The Redis worker of `names` (image jobs and camera leases) as tasks of the running loop;
    stop them with `stop_tasks`, in the order given (cameras first: they release their leases
    over the worker's link)."""
    worker = JobWorker(settings, metrics, backends, local, names)
    leases = CameraWorker(
        settings, metrics, manager, worker.link, names, worker_id=worker.worker_id, previews=FramePreviews(local.pool)
    )
    return worker, [asyncio.create_task(leases.run()), asyncio.create_task(worker.run())]


async def stop_tasks(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
