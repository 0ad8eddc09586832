"""Service configuration: one validated `Settings`, built in `main()` and passed down.

Environment variables use the prefix `POSESERVE_` and `__` between nested fields, e.g.
`POSESERVE_BATCHING__MAX_BATCH=16`, `POSESERVE_BACKENDS='{"movenet-multipose": {"workers": 2}}'`,
`POSESERVE_API_KEYS=key1,key2:pose`. Nothing else in the project reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.registry import DETECTORS
from models.weights import DEFAULT_MODEL_DIR
from service.auth import parse_rate

__all__ = [
    "AuthSettings",
    "BackendSettings",
    "DistributedSettings",
    "Provider",
    "Settings",
    "StreamSettings",
    "TopDownSettings",
]

Provider = Literal["tensorrt", "cuda", "cpu"]


class BackendSettings(BaseModel):
    """Batching and execution knobs of one backend (every field may be overridden per backend)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    max_queue: int = Field(64, ge=1)
    max_queue_delay_ms: float | None = Field(
        500.0,
        gt=0,
        le=60_000,
        description="longest an item may wait from its admission (before its body is read) until its batch "
        "starts, reading and decoding included: a request that would wait longer is refused (503 + Retry-After) "
        "before its body is read, and a queued item that did is dropped before inference; None = no time bound "
        "but the request deadline",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="sessions per stage, each run by its own worker thread (with `intra_op_threads` threads inside)",
    )
    intra_op_threads: int = Field(0, ge=0, description="ORT intra-op threads per session; 0 = ORT default")
    providers: tuple[Provider, ...] = ("cuda", "cpu")
    fp16: bool = False
    runtime: Literal["onnxruntime", "openvino"] | None = Field(
        None,
        description="inference runtime (openvino: the optional `openvino` extra); None = what measured fastest "
        "on this machine within the AP budget (`poseserve tune`), else onnxruntime",
    )
    precision: Literal["fp32", "bf16", "fp16", "int8"] | None = Field(
        None,
        description="precision variant of a single-stage model (`poseserve models optimize`); None = what measured "
        "fastest on this machine within the AP budget, else fp32. Top-down backends run fp32",
    )
    sparse_heads: bool = Field(
        True,
        description="heads the decoder reads at a few cells only (movenet-multipose: keypoint offsets and "
        "regressions, box sizes and offsets) are computed at those cells instead of on the whole feature map; "
        "same results, less model time",
    )
    ort_spinning: bool | None = Field(
        None,
        description="let idle ORT threads busy-wait; None = on for single-stage backends, off for top-down "
        "ones (their two sessions alternate, and one's spinning threads would slow the other)",
    )
    worker_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="inference threads (and, from `batching`, the image decode threads) run this many nice levels "
        "below the event loop (Linux), so refusals and "
        "health checks answer at once while the model saturates the cores; 0 = same priority",
    )
    input_size: int | None = Field(None, ge=32, description="square input side; None = the model's default")
    quality_threshold: float = Field(
        0.95,
        ge=0,
        le=2,
        description="quality-gated top-down backends (SHaRPose): a crop whose predicted pose quality Q (0..1) "
        "is below this also runs the fine stage; 0 = never refine, above 1 = always",
    )

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> BackendSettings:
        if self.max_queue < self.max_batch:
            raise ValueError("max_queue must be >= max_batch")
        if self.max_queue_delay_ms is not None and self.max_queue_delay_ms <= self.max_wait_ms:
            raise ValueError("max_queue_delay_ms must be > max_wait_ms (a partial batch waits max_wait_ms)")
        return self


class StreamSettings(BaseModel):
    """Camera subscriptions: limits, the URL allow-list (SSRF guard), reader timeouts, freshness."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_streams: int = Field(16, ge=0)
    allowed_schemes: tuple[str, ...] = ("rtsp", "rtsps", "http", "https")
    allow_file: bool = Field(False, description="accept file:// URLs (local videos; off for network services)")
    allowed_hosts: tuple[str, ...] = Field((), description="if set, only these hosts (names or CIDRs)")
    block_private: bool = Field(False, description="refuse RFC 1918 / ULA addresses")
    block_loopback: bool = Field(False, description="refuse 127.0.0.0/8 and ::1")
    open_timeout_ms: int = Field(3000, ge=100)
    decode_threads: int = Field(1, ge=1, le=16, description="FFmpeg decoder threads per camera")
    read_timeout_ms: int = Field(2000, ge=100)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(10.0, gt=0)
    default_max_fps: float = Field(10.0, gt=0, le=120)
    frame_max_age_ms: float = Field(500.0, gt=0, description="frames older than this are dropped, not inferred")
    ws_queue_messages: int = Field(16, ge=1, description="per WebSocket client; the oldest is dropped when full")
    preview_enabled: bool = Field(
        False, description="serve each camera's latest frame at /v1/streams/{id}/frame.jpg (off: privacy)"
    )
    preview_fps: float = Field(2.0, gt=0, le=30, description="most JPEG encodes per second per stream (preview)")
    skeleton_only: bool = Field(
        False, description="every stream is skeleton-only: no frame pixels kept after inference, no preview"
    )


class TopDownSettings(BaseModel):
    """The cascade of top-down backends: which detector, crop padding, flip test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str = Field(
        "nanodet", description="a catalogue model that finds person boxes (models.registry.DETECTORS)"
    )
    padding: float = Field(1.25, ge=1.0, le=2.0, description="crop side / person box side")
    flip_test: bool = Field(False, description="also run each crop mirrored and average (2x pose cost)")
    max_persons: int = Field(64, ge=1, le=256, description="detector boxes kept per frame")
    pose_max_queue: int = Field(512, ge=1, description="crops waiting for the pose stage")
    det_every_n: int = Field(
        1,
        ge=1,
        le=30,
        description="cameras: run the person detector on every n-th frame and crop the frames in between from "
        "the previous frame's keypoints (1 = detector on every frame; single images always run it)",
    )

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, value: str) -> str:
        if value not in DETECTORS:
            raise ValueError(f"unknown person detector {value!r}; known: {', '.join(sorted(DETECTORS))}")
        return value


class AuthSettings(BaseModel):
    """What API keys guard besides /v1, and the rate limit of keys that set none (keys: `api_keys`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protect_health: bool = Field(False, description="/healthz and /readyz need a valid key (any scope)")
    protect_metrics: bool = Field(False, description="/metrics needs a valid key (any scope)")
    default_rate: str | None = Field(
        None, description="rate limit of keys without rate=, e.g. '20/s', '600/min'; None = unlimited"
    )

    @field_validator("default_rate")
    @classmethod
    def _valid_rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value


class DistributedSettings(BaseModel):
    """Gateways and workers over Redis (`redis_url`): image jobs on a Stream per backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    visibility_timeout_ms: int = Field(
        2000, ge=100, description="a job delivered this long ago and not acknowledged is re-delivered (XAUTOCLAIM)"
    )
    stream_maxlen: int = Field(10_000, ge=100, description="jobs kept per backend stream (MAXLEN ~)")
    reply_maxlen: int = Field(10_000, ge=100, description="replies kept per gateway stream (MAXLEN ~)")
    heartbeat_ms: int = Field(1000, ge=100, description="how often a worker says it is alive")
    worker_ttl_ms: int = Field(5000, ge=500, description="a worker silent this long is counted as gone")
    backoff_max_s: float = Field(2.0, gt=0, description="longest wait between reconnection attempts")
    lease_ttl_ms: int = Field(
        5000, ge=500, description="a camera whose worker stopped renewing its lease this long moves to another"
    )
    local_workers: bool = Field(False, description="a gateway also runs workers for `preload` in its own process")
    worker_name: str | None = Field(None, description="this worker's id in Redis and replies; None = host-pid")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSESERVE_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    socket_send_buffer_bytes: int | None = Field(
        65536, ge=4096, description="SO_SNDBUF of client connections; None = kernel autotuning"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tune_at_load: bool = Field(
        False,
        description="when a single-stage backend loads and nothing is measured for its model on this machine, "
        "first measure its batch shapes on bare sessions (0.4 s a shape: about 10-20 s on 2 cores) and keep "
        "them in the weights store (measured/); skipped on a read-only store, on a GPU machine (the measurement "
        "is CPU-only) and when max_batch, workers and intra_op_threads are all set. Off by default: such short "
        "measurements are noisy, and on a 2-core CPU they chose between two fp32 shapes that differ 2x in a "
        "lone request's latency from one start to the next; `poseserve tune` (each shape served) is the sure way",
    )
    malloc_arenas: int | None = Field(
        2,
        ge=1,
        le=64,
        description="glibc malloc arenas of the server process (None = glibc's default, 8 per core): few arenas "
        "keep the resident memory flat under load (service/memory.py)",
    )
    malloc_mmap_threshold_kib: int = Field(
        4096,
        ge=128,
        le=32768,
        description="with malloc_arenas: glibc's mmap threshold, fixed (service/memory.py): blocks below it come from "
        "the arenas and are reused; each one above is a new mapping whose pages fault in on every use",
    )

    default_backend: str = "movenet-multipose"
    preload: Annotated[tuple[str, ...], NoDecode] = Field(
        ("movenet-multipose",), description="backends loaded at start-up (others load on first use)"
    )
    batching: BackendSettings = BackendSettings()
    backends: dict[str, BackendSettings] = Field(
        default_factory=dict, description="per-backend overrides of `batching`, keyed by backend name"
    )
    allow_untrained: bool = False
    model_dir: Path = DEFAULT_MODEL_DIR

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_json_body_bytes: int = Field(
        64 * 1024, ge=1024, description="every request body but the image of POST /v1/pose (413 above)"
    )
    max_image_pixels: int = Field(40_000_000, ge=1)
    request_timeout_s: float = Field(10.0, gt=0)
    max_inflight_requests: int = Field(256, ge=1, description="requests decoding or queued at once")
    max_refusals_per_s: float = Field(
        200.0,
        ge=0,
        description="POST /v1/pose refusals for overload answered at once per second once max_refusal_burst went "
        "at once; beyond, a refusal waits its turn, at most max_refusal_delay_ms: clients retrying refusals at once "
        "cannot spend the cores on refusals. 0 = every refusal at once",
    )
    max_refusal_burst: int = Field(1000, ge=1, description="refusals answered at once before pacing starts")
    max_refusal_delay_ms: float = Field(1000.0, gt=0, le=60_000)
    decode_threads: int = Field(2, ge=1, le=64)
    jpeg_decode_scale: float = Field(
        2.0,
        ge=0.0,
        description="single-stage backends: decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) while its "
        "long side stays >= this (>= 1) x the model input; 0 decodes every image at full size. Keypoints are "
        "always in the full image's pixels",
    )

    min_person_score: float = Field(0.2, ge=0, le=1)

    streams: StreamSettings = StreamSettings()
    topdown: TopDownSettings = TopDownSettings()

    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="comma list of KEY (every scope) or KEY:pose+streams; checked by service.auth"
    )
    api_key_file: Path | None = Field(None, description="one key per line with scopes/rate/name; reread on SIGHUP")
    auth: AuthSettings = AuthSettings()
    redis_url: str | None = Field(
        None, description="set: `serve` is a gateway and `worker` takes jobs, both over this Redis (DESIGN §4)"
    )
    distributed: DistributedSettings = DistributedSettings()

    @field_validator("jpeg_decode_scale")
    @classmethod
    def _whole_input_at_least(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("jpeg_decode_scale is 0 (off) or >= 1 (the decoded long side never below the model input)")
        return value

    @field_validator("preload", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _redelivery_before_deadline(self) -> Settings:
        if self.redis_url and self.distributed.visibility_timeout_ms >= self.request_timeout_s * 1000:
            raise ValueError("distributed.visibility_timeout_ms must be shorter than request_timeout_s")
        return self

    def backend(self, name: str) -> BackendSettings:
        """Effective settings of backend `name`: its override, else the shared defaults."""
        return self.backends.get(name, self.batching)
