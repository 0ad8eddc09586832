"""Typed failures of the ``models`` package; the service maps them to HTTP errors by ``code``."""

from __future__ import annotations

__all__ = [
    "OptimizeError",
    "PoseModelError",
    "PoseserveError",
    "PullError",
    "RuntimeUnavailableError",
    "WeightsMissingError",
]


class PoseserveError(Exception):
    """Base of every expected failure of the project; ``code`` is its stable machine-readable name
    (the service's ``ServeError`` is this class)."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PoseModelError(PoseserveError):
    """Base class of every error raised on purpose by ``models``."""

    code = "model_error"


class PullError(PoseModelError):
    """``WeightsStore.pull`` failed: fetch, extraction, conversion, graph fix or parity check.

    The message says which step failed and why (e.g. npm's exit code and stderr). Nothing was
    written into the model directory.
    """

    code = "pull_failed"


class WeightsMissingError(PoseModelError):
    """A model's ONNX file or card is absent, or the file does not match its card's sha256, or
    the weights are untrained where trained ones are required.

    The message names the model and what is missing (HTTP 409 ``weights_missing``).
    """

    code = "weights_missing"


class RuntimeUnavailableError(PoseModelError):
    """The inference runtime or precision asked for cannot run here: the runtime is not installed
    (e.g. OpenVINO without the ``openvino`` extra), or this runtime or CPU lacks the precision.

    The message names what is missing and how to get it.
    """

    code = "runtime_unavailable"


class OptimizeError(PoseModelError):
    """``poseserve models optimize`` could not build, check or install a precision variant (the
    variant loses more keypoint AP than allowed, the calibration set is empty, ...).

    Nothing was written into the model directory.
    """

    code = "optimize_failed"
