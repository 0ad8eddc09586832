"""Response bodies of the HTTP API (they also document it at /docs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field

from models.persons import Persons
from service.streams.states import FrameOutcome, StreamState

if TYPE_CHECKING:
    from service.streams.stream import StreamSnapshot

__all__ = [
    "STREAM_URL_PATTERN",
    "BackendInfo",
    "ErrorBody",
    "ErrorResponse",
    "ImageSize",
    "Person",
    "PoseResponse",
    "Readiness",
    "SmoothingOptions",
    "StreamCreate",
    "StreamFrameMessage",
    "StreamInfo",
    "StreamLatency",
    "StreamStateEvent",
    "StreamTrackEvent",
    "Timing",
    "TrackedPerson",
    "TrackingOptions",
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


class TrackedPerson(Person):
    """A person in a stream's result message."""

    track_id: int | None = Field(
        None,
        description="the person's track (stable across frames, unique in the stream); null while the track is "
        "tentative (seen fewer than tracking.min_hits frames in a row) or with tracking off",
    )


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


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


Count = Annotated[int, BeforeValidator(_not_a_bool)]
"""an integer (12 or 12.0, as JSON Schema's `integer`), never true/false"""
Number = Annotated[float, BeforeValidator(_not_a_bool)]


class TrackingOptions(BaseModel):
    """Per-stream tracking: a stable `track_id` on each person, `track` events when tracks are born or lost."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(True, strict=True, description="put track ids on persons and send track events")
    max_age_frames: Count = Field(
        30, ge=1, le=1000, description="processed frames a track survives without its person before it is lost"
    )
    min_hits: Count = Field(
        3, ge=1, le=100, description="frames in a row a person must be seen before the track gets an id (born)"
    )


class SmoothingOptions(BaseModel):
    """Per-stream One-Euro filtering of each tracked person's keypoints (image pixels, capture timestamps)."""

    model_config = {"extra": "forbid"}

    enabled: bool = Field(False, strict=True, description="off: keypoints are sent as the model gives them")
    min_cutoff: Number = Field(1.0, gt=0, le=100, description="Hz: the cutoff at rest (lower = smoother, more lag)")
    beta: Number = Field(
        0.01, ge=0, le=100, description="Hz per pixel/s: how fast the cutoff rises with speed (higher = less lag)"
    )
    d_cutoff: Number = Field(1.0, gt=0, le=100, description="Hz: the cutoff of the speed estimate")


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
    tracking: TrackingOptions = Field(default_factory=TrackingOptions)
    smoothing: SmoothingOptions = Field(default_factory=SmoothingOptions)
    skeleton_only: bool = Field(
        False,
        strict=True,
        description="keep no frame pixels after inference (no preview); forced for every stream by the server "
        "setting streams.skeleton_only",
    )


class StreamInfo(BaseModel):
    """A stream as `/v1/streams` shows it."""

    id: str
    name: str
    url: str = Field(description="the camera URL with any credentials redacted")
    backend: str
    max_fps: float
    state: StreamState
    created_at: float = Field(description="Unix time (s) of the subscription")
    input_fps: float = Field(description="frames/s read from the camera")
    result_fps: float = Field(description="results/s sent")
    last_frame_age_s: float | None
    reconnects: int = Field(description="times the camera was lost and reconnected")
    reader_restarts: int = Field(description="times the watchdog restarted the camera's failed reader")
    frames: dict[FrameOutcome, int] = Field(description="frames by outcome (only outcomes that occurred)")
    drops: dict[FrameOutcome, int] = Field(description="the outcomes of `frames` that lost a frame")
    reader_cpu_s: float = Field(description="CPU seconds the camera's reader (decoding) used")
    ws_clients: int
    tracking: TrackingOptions
    smoothing: SmoothingOptions
    skeleton_only: bool = Field(description="no frame pixels are kept after inference")

    @classmethod
    def from_snapshot(cls, s: StreamSnapshot) -> StreamInfo:
        return cls(
            id=s.id,
            name=s.name,
            url=s.url_redacted,
            backend=s.backend,
            max_fps=s.max_fps,
            state=s.state,
            created_at=s.created_at,
            input_fps=round(s.input_fps, 2),
            result_fps=round(s.result_fps, 2),
            last_frame_age_s=None if s.last_frame_age_s is None else round(s.last_frame_age_s, 3),
            reconnects=s.reconnects,
            reader_restarts=s.reader_restarts,
            frames=dict(s.frames),
            drops={outcome: n for outcome, n in s.frames.items() if outcome.is_drop},
            reader_cpu_s=round(s.reader_cpu_s, 3),
            ws_clients=s.ws_clients,
            tracking=s.tracking,
            smoothing=s.smoothing,
            skeleton_only=s.skeleton_only,
        )


class StreamLatency(BaseModel):
    capture_to_result: float = Field(description="ms from the frame's capture to its result")
    queue: float = Field(description="ms waiting for a batch")
    inference: float = Field(description="ms the batch spent in the model")


class StreamFrameMessage(BaseModel):
    """WebSocket `/v1/streams/{id}/ws`: one message per processed frame."""

    stream_id: str
    seq: int = Field(description="the frame's number in the stream (gaps: frames not processed)")
    untrained: bool = False
    captured_at: float = Field(description="Unix time (s) the frame was read")
    image: ImageSize
    persons: list[TrackedPerson]
    latency_ms: StreamLatency


class StreamStateEvent(BaseModel):
    """WebSocket `/v1/streams/{id}/ws`: the stream's state, on connect and on every change."""

    event: Literal["state"] = "state"
    stream_id: str
    state: StreamState


class StreamTrackEvent(BaseModel):
    """WebSocket `/v1/streams/{id}/ws`: a track was born (confirmed) or lost (with tracking on)."""

    event: Literal["track"] = "track"
    stream_id: str
    frame_seq: int = Field(
        description="`seq` of the frame whose processing confirmed or ended the track (not `seq`: result messages "
        "alone carry that)"
    )
    change: Literal["born", "lost"]
    track_id: int
