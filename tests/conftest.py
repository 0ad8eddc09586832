"""Session fixtures shared by integration and e2e tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.weights import DEFAULT_MODEL_DIR, WeightsStore


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The weights store with movenet-multipose pulled (reuses ~/.cache/poseserve like `make models`)."""
    store = WeightsStore(DEFAULT_MODEL_DIR)
    if not store.available("movenet-multipose"):
        store.pull("movenet-multipose")
    return DEFAULT_MODEL_DIR
