"""Typed failures of the ``models`` package (the service maps them to HTTP errors)."""

from __future__ import annotations

__all__ = ["PoseModelError", "PullError", "WeightsMissingError"]


class PoseModelError(Exception):
    """Base class of every error raised on purpose by ``models``."""


class PullError(PoseModelError):
    """``WeightsStore.pull`` failed: fetch, extraction, conversion, graph fix or parity check.

    The message says which step failed and why (e.g. npm's exit code and stderr). Nothing was
    written into the model directory.
    """


class WeightsMissingError(PoseModelError):
    """A model's ONNX file or card is absent, or the file does not match its card's sha256.

    The message names the model and what is missing (HTTP 409 ``weights_missing``).
    """
