"""Response bodies of the HTTP API (they also document it at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["BackendInfo", "ErrorBody", "ErrorResponse", "ImageSize", "Person", "PoseResponse", "Timing"]


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
