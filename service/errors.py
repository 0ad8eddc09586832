"""Typed failures of the serving path. `service.api` maps them to HTTP codes; nothing else does."""

from __future__ import annotations

from models.errors import PoseserveError as ServeError
from models.errors import WeightsMissingError

__all__ = [
    "AuthRefusal",
    "BackendUnavailableError",
    "DeadlineExceededError",
    "DuplicateStreamError",
    "Forbidden",
    "ImageTooLargeError",
    "InvalidImageError",
    "InvalidStreamUrlError",
    "NoFrameError",
    "OverloadedError",
    "PreviewDisabledError",
    "QueueDelayError",
    "QueueFullError",
    "RateLimited",
    "ServeError",
    "StreamLimitError",
    "Unauthorized",
    "UnknownBackendError",
    "UnknownStreamError",
    "UnsupportedMediaTypeError",
    "WeightsMissingError",
    "WorkerLostError",
]


class InvalidImageError(ServeError):
    code = "invalid_image"


class ImageTooLargeError(ServeError):
    code = "too_large"


class UnsupportedMediaTypeError(ServeError):
    code = "unsupported_media_type"


class UnknownBackendError(ServeError):
    code = "unknown_backend"


class BackendUnavailableError(ServeError):
    """The backend's model exists but could not be loaded (corrupt file, provider failure), or it
    has no live worker. `retry_after_s` is set when retrying later can succeed."""

    code = "backend_unavailable"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkerLostError(BackendUnavailableError):
    """The worker thread running this item's batch died; the supervisor restarts it (retryable)."""


class OverloadedError(ServeError):
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(OverloadedError):
    """A batcher queue is at its bound."""


class QueueDelayError(QueueFullError):
    """A queue is at its bound in time: a new item would wait longer than `max_queue_delay_ms`
    (refused before any work), or a queued item did (dropped before inference)."""


class DeadlineExceededError(ServeError):
    code = "timeout"


class InvalidStreamUrlError(ServeError):
    """A stream URL is malformed or not allowed; the message says which rule refused it."""

    code = "invalid_stream_url"


class UnknownStreamError(ServeError):
    code = "unknown_stream"


class DuplicateStreamError(ServeError):
    code = "duplicate_stream"


class StreamLimitError(ServeError):
    code = "too_many_streams"


class PreviewDisabledError(ServeError):
    """The frame preview is off (`streams.preview_enabled`) for the server or this stream."""

    code = "preview_disabled"


class NoFrameError(ServeError):
    """The stream has not read a frame yet (connecting); retrying later can succeed."""

    code = "no_frame"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AuthRefusal(ServeError):
    """A request refused by API-key auth; `headers` go on the answer. Messages never hold a key."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class Unauthorized(AuthRefusal):
    code = "unauthorized"


class Forbidden(AuthRefusal):
    code = "forbidden"


class RateLimited(AuthRefusal):
    code = "rate_limited"
