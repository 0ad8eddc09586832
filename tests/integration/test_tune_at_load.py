"""A single-stage backend loading on a machine where nothing is measured for its model tunes first
(`Settings.tune_at_load`): the shape it then serves is the one `poseserve tune` keeps, recorded in
the store for the next load, which measures nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from models.measured import MeasuredStore, machine_description
from models.weights import WeightsStore
from service.api import create_app
from service.config import BackendSettings, Settings
from tests.support import linked_store

pytestmark = pytest.mark.integration

MODEL = "movenet-multipose"


def _load(settings: Settings) -> BackendSettings:
    async def scenario() -> BackendSettings:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            backend = await app.state.services.backends.acquire(MODEL)
            return backend.settings

    return asyncio.run(scenario())


@pytest.mark.skipif(machine_description()["nvidia"], reason="a GPU machine does not tune at load (CPU-only measure)")
def test_a_backend_tunes_once_when_nothing_is_measured(tmp_path: Path, model_dir: Path) -> None:
    store = linked_store(tmp_path / "store", model_dir, MODEL)
    measured = MeasuredStore(store)
    sha = WeightsStore(store).require(MODEL).card.sha256
    settings = Settings(model_dir=store, tune_at_load=True, batching=BackendSettings(max_batch=1))
    assert measured.variants(MODEL, sha) == {}

    served = _load(settings)

    kept = measured.variants(MODEL, sha)
    assert "onnxruntime-fp32" in kept and kept["onnxruntime-fp32"]["how"] == "tune"
    fastest = max(kept.values(), key=lambda f: f["img_per_s"])
    assert (served.max_batch, served.workers, served.intra_op_threads) == (
        1,  # explicit: measured at 1 only
        fastest["workers"],
        fastest["intra_op_threads"],
    )
    recorded = measured.path.stat().st_mtime_ns
    assert _load(settings) == served  # the second load finds the measurements
    assert measured.path.stat().st_mtime_ns == recorded


def test_no_tuning_when_every_shape_field_is_set(tmp_path: Path, model_dir: Path) -> None:
    store = linked_store(tmp_path / "store", model_dir, MODEL)
    fixed = BackendSettings(max_batch=1, workers=1, intra_op_threads=1)
    served = _load(Settings(model_dir=store, tune_at_load=True, batching=fixed))
    assert (served.max_batch, served.workers, served.intra_op_threads) == (1, 1, 1)
    assert not (store / "measured").exists()
