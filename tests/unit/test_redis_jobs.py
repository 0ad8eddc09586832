"""Image jobs over Redis, the pure parts: wire formats, reply deduplication, deadlines, backoff.
The Redis client is a fake here; tests/e2e/test_redis_scaleout.py runs the real thing."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from models.persons import Persons
from service.config import Settings
from service.distributed.gateway import RedisJobs
from service.distributed.link import Backoff
from service.distributed.redis_jobs import (
    Deduper,
    Job,
    decode_job,
    decode_reply,
    encode_job,
    encode_reply,
    error_from_reply,
    jobs_key,
)
from service.distributed.transport import PoseOutcome
from service.distributed.worker import JobWorker
from service.errors import BackendUnavailableError, InvalidImageError, OverloadedError, QueueFullError
from service.metrics import Metrics
from tests.support import metric_samples

URL = "redis://127.0.0.1:1/0"  # never connected to: the clients below are fakes


def _bytes_fields(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """What redis-py hands back for fields it was given."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def _outcome(people: int = 2) -> PoseOutcome:
    rng = np.random.default_rng(0)
    persons = Persons(
        rng.random((people, 17, 3), dtype=np.float32),
        rng.random((people, 4), dtype=np.float32),
        rng.random(people, dtype=np.float32),
    )
    return PoseOutcome(persons, width=640, height=360, queue_s=0.01, inference_s=0.02, untrained=False)


def _count(metrics: Metrics, outcome: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return sum(v for lb, v in metric_samples(text, "poseserve_redis_jobs_total") if lb["outcome"] == outcome)


def test_job_round_trip_and_deadline() -> None:
    job = Job("j1", "poseserve:replies:g", deadline=1000.5, enqueued=990.25, image=b"\xff\xd8jpeg")
    back = decode_job(_bytes_fields(encode_job(job)))
    assert back == job
    assert not back.expired(1000.4) and back.expired(1000.5)


@pytest.mark.parametrize("people", [0, 3])
def test_reply_round_trip_keeps_persons_exactly(people: int) -> None:
    sent = _outcome(people)
    reply = decode_reply(_bytes_fields(encode_reply("j1", "w1", sent)))
    assert reply.id == "j1" and reply.worker == "w1" and reply.outcome is not None
    got = reply.outcome
    assert (got.width, got.height, got.queue_s, got.inference_s, got.worker) == (640, 360, 0.01, 0.02, "w1")
    np.testing.assert_array_equal(got.persons.keypoints, sent.persons.keypoints)
    np.testing.assert_array_equal(got.persons.boxes_xyxy, sent.persons.boxes_xyxy)
    np.testing.assert_array_equal(got.persons.scores, sent.persons.scores)


def test_typed_failures_cross_the_wire() -> None:
    def through(exc: Exception) -> Exception:
        return error_from_reply(decode_reply(_bytes_fields(encode_reply("j", "w9", exc))))  # type: ignore[arg-type]

    bad = through(InvalidImageError("not a decodable image"))
    assert isinstance(bad, InvalidImageError) and "w9" in bad.message
    busy = through(QueueFullError("queue full", retry_after_s=2.5))
    assert isinstance(busy, OverloadedError) and busy.retry_after_s == 2.5
    down = through(BackendUnavailableError("no live worker", retry_after_s=1.0))
    assert isinstance(down, BackendUnavailableError) and down.retry_after_s == 1.0


def test_deduper_answers_each_id_once_within_its_capacity() -> None:
    dedupe = Deduper(capacity=3)
    assert [dedupe.first(i) for i in "abca"] == [True, True, True, False]
    assert dedupe.first("d")  # evicts the least recently seen ("b"; "a" was just seen again)
    assert not dedupe.first("a") and dedupe.first("b")


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, rng=random.Random(1))
    waits = [backoff.next() for _ in range(8)]
    assert 0.05 <= waits[0] <= 0.1 and all(0.5 <= w <= 1.0 for w in waits[4:])
    backoff.reset()
    assert backoff.next() <= 0.1


class _FakeClient:
    """Records XADDs; a job is answered by the test calling `RedisJobs.deliver`."""

    def __init__(self) -> None:
        self.added: list[tuple[str, dict[str, Any]]] = []

    async def xadd(self, key: str, fields: dict[str, Any], **_: Any) -> bytes:
        self.added.append((key, fields))
        return b"1-0"


def test_gateway_answers_a_job_once_however_many_replies_arrive() -> None:
    metrics = Metrics()
    jobs = RedisJobs(Settings(redis_url=URL), metrics, gateway_id="g1")
    fake = _FakeClient()
    jobs.link.client = fake  # type: ignore[assignment]
    jobs.link.connected = True

    async def scenario() -> PoseOutcome:
        admitted = await jobs.admit("movenet-multipose")
        task = asyncio.create_task(jobs.run(admitted, b"jpeg", deadline=time.monotonic() + 5))
        while not fake.added:
            await asyncio.sleep(0)
        key, fields = fake.added[0]
        assert key == jobs_key("movenet-multipose") and fields["image"] == b"jpeg"
        reply = decode_reply(_bytes_fields(encode_reply(fields["id"], "w1", _outcome())))
        jobs.deliver(reply)
        jobs.deliver(reply)  # a re-delivered job's second answer
        result = await task
        jobs.deliver(reply)
        admitted.release()
        admitted.release()  # idempotent
        return result

    result = asyncio.run(scenario())
    assert result.worker == "w1" and len(result.persons) == 2
    assert (_count(metrics, "answered"), _count(metrics, "duplicate")) == (1, 2)


def test_gateway_refuses_without_redis_or_workers_and_at_its_bound() -> None:
    settings = Settings(redis_url=URL, batching={"max_queue": 8, "max_batch": 8})
    jobs = RedisJobs(settings, Metrics(), gateway_id="g1")

    async def scenario() -> None:
        with pytest.raises(BackendUnavailableError, match="Redis is unreachable"):
            await jobs.admit("movenet-multipose")
        jobs.link.connected = True
        jobs._live_workers["movenet-multipose"] = 0
        jobs.link.connected_at = time.monotonic()  # Redis just came back: workers get a TTL to say so
        (await jobs.admit("movenet-multipose")).release()
        jobs.link.connected_at = time.monotonic() - settings.distributed.worker_ttl_ms / 1000
        with pytest.raises(BackendUnavailableError, match="no worker serves"):
            await jobs.admit("movenet-multipose")
        jobs._live_workers["movenet-multipose"] = 1
        held = [await jobs.admit("movenet-multipose") for _ in range(8)]
        with pytest.raises(QueueFullError):
            await jobs.admit("movenet-multipose")
        held[0].release()
        await jobs.admit("movenet-multipose")

    asyncio.run(scenario())


class _FakePipeline:
    def __init__(self, log: list[tuple[str, tuple[Any, ...]]]) -> None:
        self._log = log

    def __getattr__(self, command: str) -> Any:
        return lambda *args, **_: self._log.append((command, args))

    async def execute(self, **_: Any) -> list[Any]:
        return []


class _FakeWorkerClient:
    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def pipeline(self, **_: Any) -> _FakePipeline:
        return _FakePipeline(self.commands)


class _NeverRun:
    """A local transport that fails the test if anything reaches it."""

    async def admit(self, backend: str) -> Any:
        raise AssertionError(f"an expired job of {backend} was run")


def test_worker_acknowledges_expired_jobs_without_running_or_answering_them() -> None:
    metrics = Metrics()
    settings = Settings(redis_url=URL)
    worker = JobWorker(settings, metrics, None, _NeverRun(), ["movenet-multipose"], worker_id="w1")  # type: ignore[arg-type]
    fake = _FakeWorkerClient()
    worker.link.client = fake  # type: ignore[assignment]
    past = time.time() - 0.001
    entries = [
        (b"1-0", _bytes_fields(encode_job(Job("j1", "poseserve:replies:g", past, past - 5, b"jpeg")))),
        (b"2-0", {b"garbage": b"1"}),  # malformed: acknowledged and dropped too
    ]

    async def scenario() -> None:
        await worker._slots["movenet-multipose"].acquire()
        await worker._batch("movenet-multipose", entries)

    asyncio.run(scenario())
    assert fake.commands == [("xack", (jobs_key("movenet-multipose"), "workers", b"1-0", b"2-0"))]
    assert _count(metrics, "expired") == 1
