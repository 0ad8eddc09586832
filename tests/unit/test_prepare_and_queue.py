"""In-process image jobs of a single-stage backend: the decode thread queues the image itself.

The backend is a fake whose `queue` hands out futures the test settles; the decoding is real.
What a request that gives up leaves behind is the point: nothing queued, nothing decoded late.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import pytest

from models.persons import Persons
from models.transforms import letterbox
from service.backends.base import Prepared
from service.distributed.transport import InProcessJobs, LocalAdmitted
from service.engine import ItemResult, Ticket
from service.errors import InvalidImageError, QueueFullError

pytestmark = pytest.mark.unit


class FakeBackend:
    """Queues prepared images into futures the test holds (`queued`)."""

    name = "fake"
    untrained = False
    queues_prepared = True
    input_side = 32

    def __init__(self, refuse: Exception | None = None) -> None:
        self.prepared = 0
        self.queued: list[Future[ItemResult[Persons]]] = []
        self.refuse = refuse
        self.threads: set[str] = set()

    def prepare(self, image_rgb: np.ndarray) -> Prepared:
        self.prepared += 1
        self.threads.add(threading.current_thread().name)
        tensor, geometry = letterbox(image_rgb, self.input_side)
        return Prepared(tensor=tensor, geometry=geometry)

    def queue(
        self, prepared: Prepared, *, deadline: float, key: Any = None, ticket: Ticket | None = None
    ) -> Future[Any]:
        if self.refuse is not None:
            raise self.refuse
        future: Future[ItemResult[Persons]] = Future()
        self.queued.append(future)
        return future


def jpeg(width: int = 64, height: int = 48) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8))
    assert ok
    return data.tobytes()


def jobs_for(backend: FakeBackend, pool: ThreadPoolExecutor) -> tuple[InProcessJobs, LocalAdmitted]:
    jobs = InProcessJobs(None, pool, max_image_pixels=10_000)  # type: ignore[arg-type]  # admit is not used
    return jobs, LocalAdmitted(backend, Ticket(lambda t: None, admitted_at=0.0))  # type: ignore[arg-type]


def test_the_result_comes_back_with_the_image_size() -> None:
    backend = FakeBackend()
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        jobs, admitted = jobs_for(backend, pool)

        async def scenario() -> Any:
            run = asyncio.create_task(jobs.run(admitted, jpeg(), deadline=time.monotonic() + 5))
            while not backend.queued:
                await asyncio.sleep(0.001)
            backend.queued[0].set_result(ItemResult(Persons.empty(), queue_s=0.01, inference_s=0.02, batch_size=1))
            return await run

        outcome = asyncio.run(scenario())
    assert (outcome.width, outcome.height, outcome.queue_s, outcome.inference_s) == (64, 48, 0.01, 0.02)
    assert backend.threads == {"decode_0"}  # prepared off the event loop


def test_a_request_that_times_out_while_queued_drops_its_item() -> None:
    backend = FakeBackend()
    with ThreadPoolExecutor(1) as pool:
        jobs, admitted = jobs_for(backend, pool)
        with pytest.raises(TimeoutError):
            asyncio.run(jobs.run(admitted, jpeg(), deadline=time.monotonic() + 0.2))
    assert len(backend.queued) == 1 and backend.queued[0].cancelled()


def test_a_request_that_gives_up_before_a_thread_is_free_is_never_decoded() -> None:
    backend = FakeBackend()
    busy = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(busy.wait, 5)  # the only decode thread is taken
        jobs, admitted = jobs_for(backend, pool)
        with pytest.raises(TimeoutError):
            asyncio.run(jobs.run(admitted, jpeg(), deadline=time.monotonic() + 0.1))
        busy.set()
    assert backend.prepared == 0 and backend.queued == []


@pytest.mark.parametrize(
    ("data", "refuse", "error"),
    [(b"not an image", None, InvalidImageError), (jpeg(), QueueFullError("full"), QueueFullError)],
)
def test_errors_of_decoding_or_queueing_reach_the_request(data: bytes, refuse: Exception | None, error: type) -> None:
    backend = FakeBackend(refuse)
    with ThreadPoolExecutor(1) as pool:
        jobs, admitted = jobs_for(backend, pool)
        with pytest.raises(error):
            asyncio.run(jobs.run(admitted, data, deadline=time.monotonic() + 5))
    assert backend.queued == []
