"""Typed failures of the ``models`` package; the service maps them to HTTP errors by ``code``."""

from __future__ import annotations

__all__ = ["PoseModelError", "PoseserveError", "PullError", "WeightsMissingError"]


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
