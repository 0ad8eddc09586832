"""Image jobs over Redis: key names, the job and reply wire formats, reply deduplication.

Pure logic (no I/O), shared by gateways (`gateway`) and workers (`worker`).

Keys
- `poseserve:jobs:{backend}`: a Stream of jobs per backend (MAXLEN ~ `stream_maxlen`), consumer
  group `workers`;
- `poseserve:replies:{gateway}`: each gateway's reply Stream (MAXLEN ~, expires when idle);
- `poseserve:workers:{backend}`: a sorted set, worker id -> last heartbeat (epoch ms).

A job: `id`, `reply` (the reply stream), `deadline` and `enqueued` (epoch s, wall clock: gateway and
worker hosts keep their clocks in sync), `image` (the encoded image exactly as the client sent it).
A reply: `id`, `worker`, `meta` (JSON: width, height, queue_s, inference_s, untrained, or an error's
code, message, retry_after_s), and for a success the persons as float32 arrays `keypoints`
(P, 17, 3), `boxes` (P, 4), `scores` (P,).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from models.persons import NUM_KEYPOINTS, Persons
from service import errors
from service.distributed.transport import PoseOutcome
from service.errors import ServeError

__all__ = [
    "GROUP",
    "KEY_PREFIX",
    "Deduper",
    "Job",
    "Reply",
    "decode_job",
    "decode_reply",
    "encode_job",
    "encode_reply",
    "error_from_reply",
    "jobs_key",
    "replies_key",
    "workers_key",
]

GROUP = "workers"
KEY_PREFIX = "poseserve"
"""every Redis key and channel of the service starts with this"""

Fields = dict[bytes, bytes]


def jobs_key(backend: str) -> str:
    return f"{KEY_PREFIX}:jobs:{backend}"


def replies_key(gateway: str) -> str:
    return f"{KEY_PREFIX}:replies:{gateway}"


def workers_key(backend: str) -> str:
    return f"{KEY_PREFIX}:workers:{backend}"


@dataclass(frozen=True)
class Job:
    id: str
    reply_to: str
    deadline: float
    """epoch seconds"""
    enqueued: float
    """epoch seconds"""
    image: bytes

    def expired(self, now_epoch_s: float) -> bool:
        return now_epoch_s >= self.deadline


def encode_job(job: Job) -> dict[str, bytes | str]:
    return {
        "id": job.id,
        "reply": job.reply_to,
        "deadline": repr(job.deadline),
        "enqueued": repr(job.enqueued),
        "image": job.image,
    }


def decode_job(fields: Fields) -> Job:
    """A job from its stream entry (`KeyError`/`ValueError` when malformed)."""
    return Job(
        id=fields[b"id"].decode(),
        reply_to=fields[b"reply"].decode(),
        deadline=float(fields[b"deadline"]),
        enqueued=float(fields[b"enqueued"]),
        image=fields[b"image"],
    )


@dataclass(frozen=True)
class Reply:
    """What a worker answers: an outcome, or a typed failure (`error_from_reply`)."""

    id: str
    worker: str
    outcome: PoseOutcome | None = None
    code: str | None = None
    message: str = ""
    retry_after_s: float | None = None


def encode_reply(job_id: str, worker: str, result: PoseOutcome | ServeError) -> dict[str, bytes | str]:
    if isinstance(result, ServeError):
        retry = getattr(result, "retry_after_s", None)
        meta = {"code": result.code, "message": result.message, "retry_after_s": retry}
        return {"id": job_id, "worker": worker, "meta": json.dumps(meta)}
    p = result.persons
    meta = {
        "width": result.width,
        "height": result.height,
        "queue_s": result.queue_s,
        "inference_s": result.inference_s,
        "untrained": result.untrained,
    }
    return {
        "id": job_id,
        "worker": worker,
        "meta": json.dumps(meta),
        "keypoints": np.ascontiguousarray(p.keypoints, np.float32).tobytes(),
        "boxes": np.ascontiguousarray(p.boxes_xyxy, np.float32).tobytes(),
        "scores": np.ascontiguousarray(p.scores, np.float32).tobytes(),
    }


def decode_reply(fields: Fields) -> Reply:
    job_id, worker = fields[b"id"].decode(), fields[b"worker"].decode()
    meta = json.loads(fields[b"meta"])
    if "code" in meta:
        return Reply(job_id, worker, code=meta["code"], message=meta["message"], retry_after_s=meta["retry_after_s"])
    persons = Persons(
        keypoints=np.frombuffer(fields[b"keypoints"], np.float32).reshape(-1, NUM_KEYPOINTS, 3),
        boxes_xyxy=np.frombuffer(fields[b"boxes"], np.float32).reshape(-1, 4),
        scores=np.frombuffer(fields[b"scores"], np.float32),
    )
    outcome = PoseOutcome(
        persons=persons,
        width=int(meta["width"]),
        height=int(meta["height"]),
        queue_s=float(meta["queue_s"]),
        inference_s=float(meta["inference_s"]),
        untrained=bool(meta["untrained"]),
        worker=worker,
    )
    return Reply(job_id, worker, outcome=outcome)


_SIMPLE: dict[str, type[ServeError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidImageError,
        errors.ImageTooLargeError,
        errors.UnsupportedMediaTypeError,
        errors.UnknownBackendError,
        errors.WeightsMissingError,
        errors.DeadlineExceededError,
    )
}


def error_from_reply(reply: Reply) -> ServeError:
    """The typed failure a worker reported, as the exception the API maps to its HTTP answer."""
    message = f"{reply.message} (worker {reply.worker})"
    if reply.code == errors.OverloadedError.code:
        return errors.OverloadedError(message, retry_after_s=reply.retry_after_s or 1.0)
    if reply.code in _SIMPLE:
        return _SIMPLE[reply.code](message)
    return errors.BackendUnavailableError(message, retry_after_s=reply.retry_after_s)


class Deduper:
    """Job ids already answered, the most recent `capacity` of them (at-least-once delivery: a job
    re-delivered after its first worker was presumed dead can be answered twice)."""

    def __init__(self, capacity: int = 65536) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first(self, job_id: str) -> bool:
        """True the first time `job_id` is seen (within the last `capacity` ids)."""
        if job_id in self._seen:
            self._seen.move_to_end(job_id)
            return False
        self._seen[job_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True
