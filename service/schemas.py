"""Response bodies of the HTTP API (they also document it at /docs)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from models.persons import Persons

__all__ = [
    "STREAM_URL_PATTERN",
    "BackendInfo",
    "ErrorBody",
    "ErrorResponse",
    "ImageSize",
    "Person",
    "PoseResponse",
    "Readiness",
    "StreamCreate",
    "StreamInfo",
    "Timing",
    "persons_json",
]


def persons_json(persons: Persons) -> list[dict[str, Any]]:
    """`Persons` as JSON-ready dicts (pixels to 0.01 px, scores to 1e-4)."""
    keypoints = np.round(persons.keypoints.astype(np.float64), 2).tolist()
    boxes = np.round(persons.boxes_xyxy.astype(np.float64), 2).tolist()
    scores = np.round(persons.scores.astype(np.float64), 4).tolist()
    return [{"score": s, "bbox": b, "keypoints": k} for s, b, k in zip(scores, boxes, keypoints, strict=True)]


class Person(BaseModel):
    score: float = Field(description="person score in [0, 1]")
    bbox: list[float] = Field(description="x1, y1, x2, y2 in image pixels")
    keypoints: list[list[float]] = Field(description="17 x [x, y, score], COCO order, image pixels")


class ImageSize(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    queue: float = Field(description="ms waiting for a batch")
    inference: float = Field(description="ms the batch spent in the model")
    total: float = Field(description="ms from request arrival to response")


class PoseResponse(BaseModel):
    request_id: str
    backend: str
    untrained: bool = False
    image: ImageSize
    persons: list[Person]
    timing_ms: Timing


class BackendInfo(BaseModel):
    name: str
    kind: str
    input_size: int
    codec: str
    detector: str | None = None
    pretrained: bool
    weights_present: bool
    loaded: bool
    providers: list[str]
    max_batch: int
    max_wait_ms: float
    workers: int
    description: str


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    problems: list[str] = Field(default_factory=list, description="why not ready (absent when ready)")


# The form of every URL some configuration accepts: an allowed scheme (any case), then a host for
# the network schemes, no whitespace. Documented in the schema, enforced by
# `service.streams.urls.validate_stream_url`, which refuses with the reason (400 invalid_stream_url)
# and also checks this server's schemes, the host's addresses and the allow-list.
STREAM_URL_PATTERN = r"^(?:(?:[Rr][Tt][Ss][Pp][Ss]?|[Hh][Tt][Tt][Pp][Ss]?)://[^\s/?#]+|[Ff][Ii][Ll][Ee]:\S)\S*$"


class StreamCreate(BaseModel):
    model_config = {"extra": "forbid"}

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="rtsp://, rtsps://, http(s):// with a host (file: when enabled), no whitespace; the host must "
        "resolve and pass the server's allow-list and SSRF guard. Refused with 400 invalid_stream_url otherwise",
        json_schema_extra={"pattern": STREAM_URL_PATTERN},
        examples=["rtsp://127.0.0.1:8554/cam1"],
    )
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    backend: str | None = None
    max_fps: float | None = Field(None, gt=0, le=120)


class StreamInfo(BaseModel):
    id: str
    name: str
    url: str
    backend: str
    max_fps: float
    state: str
    created_at: float
    input_fps: float
    result_fps: float
    last_frame_age_s: float | None
    reconnects: int
    frames: dict[str, int]
    drops: dict[str, int]
    reader_cpu_s: float
    ws_clients: int
