"""How an image job reaches a model: the `ImageJobs` interface and its in-process implementation.

`POST /v1/pose` uses one `ImageJobs`: `admit` (before a byte of the body is read: a slot
reserved, or an `OverloadedError` / `BackendUnavailableError` with `retry_after_s`), then `run`
(encoded image -> `PoseOutcome`, within the request's deadline). `InProcessJobs` is the default:
decode and preprocess on the decode pool, then the backend's batcher and worker threads in this
process. `service.distributed.gateway.RedisJobs` is the other: the job goes to a worker process
over a Redis Stream. Workers run the jobs they take with an `InProcessJobs` too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from models.persons import Persons
from service.backends import BackendManager, LoadedBackend, Prepared
from service.backends.base import prepare_and_infer
from service.engine import ItemResult, Ticket
from service.imaging import decode_image_reduced

__all__ = ["Admitted", "ImageJobs", "InProcessJobs", "LocalAdmitted", "PoseOutcome"]


@dataclass(frozen=True)
class PoseOutcome:
    """One image's persons (image pixels) and where its time went; `worker` names the process
    that ran it when that is not this one."""

    persons: Persons
    width: int
    height: int
    queue_s: float
    inference_s: float
    untrained: bool
    worker: str | None = None


class Admitted(Protocol):
    """A slot `ImageJobs.admit` reserved for one image; `release` is idempotent."""

    @property
    def backend(self) -> str: ...

    def release(self) -> None: ...


class ImageJobs(Protocol):
    async def admit(self, backend: str, *, reserved: Ticket | None = None) -> Admitted:
        """Reserve a slot for one image of `backend` before reading it (raises a `ServeError`);
        `reserved`: a slot `service.api.shed.ShedOverload` reserved already (in this process)."""
        ...

    async def run(self, admitted: Admitted, data: bytes, *, deadline: float) -> PoseOutcome:
        """Persons of the encoded image `data`; `deadline` is `time.monotonic()` seconds (TimeoutError)."""
        ...


@dataclass(eq=False)
class LocalAdmitted:
    loaded: LoadedBackend
    ticket: Ticket

    @property
    def backend(self) -> str:
        return self.loaded.name

    def release(self) -> None:
        self.ticket.release()  # no-op once the image was queued in its slot


class InProcessJobs:
    """Decode + preprocess on `pool`, then the backend's batcher in this process."""

    def __init__(
        self, backends: BackendManager, pool: Executor, *, max_image_pixels: int, jpeg_decode_scale: float = 0
    ) -> None:
        """`jpeg_decode_scale` (settings): a JPEG is decoded reduced (1/2, 1/4, 1/8) while its long
        side stays at least this many times the model input; 0 decodes at full size."""
        self._backends = backends
        self.pool = pool
        self._max_image_pixels = max_image_pixels
        self._jpeg_decode_scale = jpeg_decode_scale

    async def admit(self, backend: str, *, reserved: Ticket | None = None) -> LocalAdmitted:
        loaded = await self._backends.acquire(backend)  # a first use loads the model
        return LocalAdmitted(loaded, reserved or loaded.admit())

    async def prepare(self, admitted: Admitted, data: bytes, *, deadline: float) -> tuple[Prepared, int, int]:
        """(model input, image width, image height), decoded on the pool within `deadline`."""
        assert isinstance(admitted, LocalAdmitted)
        return await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(self.pool, self._prepare_now, admitted.loaded, data),
            timeout=max(0.0, deadline - time.monotonic()),
        )

    def _prepare_now(self, loaded: LoadedBackend, data: bytes) -> tuple[Prepared, int, int]:
        """`prepare`'s work, on the calling thread."""
        scale = self._jpeg_decode_scale
        long_side = None if scale == 0 or loaded.input_side is None else round(scale * loaded.input_side)
        rgb, (width, height) = decode_image_reduced(data, max_pixels=self._max_image_pixels, long_side=long_side)
        prepared = loaded.prepare(rgb)
        if (rgb.shape[1], rgb.shape[0]) != (width, height):  # decoded reduced: keypoints in full-image pixels
            prepared = dataclasses.replace(prepared, geometry=prepared.geometry.of_full_size((width, height)))
        return prepared, width, height

    async def infer(self, admitted: Admitted, prepared: Prepared, *, deadline: float) -> ItemResult[Persons]:
        """Queue `prepared` in the admitted slot (synchronously, before the first await) and wait."""
        assert isinstance(admitted, LocalAdmitted)
        return await admitted.loaded.infer(
            prepared, deadline=deadline, wait_s=deadline - time.monotonic(), ticket=admitted.ticket
        )

    async def run(self, admitted: Admitted, data: bytes, *, deadline: float) -> PoseOutcome:
        assert isinstance(admitted, LocalAdmitted)
        size: list[tuple[int, int]] = []  # the image's, from the thread that decodes it

        def prepare() -> Prepared:
            prepared, width, height = self._prepare_now(admitted.loaded, data)
            size.append((width, height))
            return prepared

        result = await prepare_and_infer(
            self.pool,
            admitted.loaded,
            prepare,
            deadline=deadline,
            wait_s=deadline - time.monotonic(),
            ticket=admitted.ticket,
        )
        return outcome(admitted, result, *size[0])


def outcome(admitted: LocalAdmitted, result: ItemResult[Persons], width: int, height: int) -> PoseOutcome:
    return PoseOutcome(
        persons=result.value,
        width=width,
        height=height,
        queue_s=result.queue_s,
        inference_s=result.inference_s,
        untrained=admitted.loaded.untrained,
    )
