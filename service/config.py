"""Service configuration: one validated `Settings`, built in `main()` and passed down.

Environment variables use the prefix `POSESERVE_` and `__` between nested fields, e.g.
`POSESERVE_BATCHING__MAX_BATCH=16`, `POSESERVE_BACKENDS='{"movenet-multipose": {"workers": 2}}'`,
`POSESERVE_API_KEYS=key1,key2`. Nothing else in the project reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.weights import DEFAULT_MODEL_DIR

__all__ = ["BackendSettings", "Provider", "Settings"]

Provider = Literal["tensorrt", "cuda", "cpu"]


class BackendSettings(BaseModel):
    """Batching and execution knobs of one backend (every field may be overridden per backend)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(4.0, ge=0, le=1000)
    max_queue: int = Field(64, ge=1)
    workers: int = Field(1, ge=1, le=64, description="ORT sessions (one thread each) per stage")
    intra_op_threads: int = Field(0, ge=0, description="ORT intra-op threads per session; 0 = ORT default")
    providers: tuple[Provider, ...] = ("cuda", "cpu")
    fp16: bool = False
    input_size: int | None = Field(None, ge=32, description="square input side; None = the model's default")

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> BackendSettings:
        if self.max_queue < self.max_batch:
            raise ValueError("max_queue must be >= max_batch")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSESERVE_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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
    max_image_pixels: int = Field(40_000_000, ge=1)
    request_timeout_s: float = Field(10.0, gt=0)
    max_inflight_requests: int = Field(256, ge=1, description="requests decoding or queued at once")
    decode_threads: int = Field(2, ge=1, le=64)
    min_person_score: float = Field(0.2, ge=0, le=1)

    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    redis_url: str | None = None

    @field_validator("preload", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def backend(self, name: str) -> BackendSettings:
        """Effective settings of backend `name`: its override, else the shared defaults."""
        return self.backends.get(name, self.batching)
