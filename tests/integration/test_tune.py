"""`poseserve tune` measures each batch shape on a server of its own under HTTP load and records the
shape it keeps, which a backend loading later serves. Only what it keeps and records is checked,
never its figures, which are timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.measured import MeasuredStore
from models.weights import WeightsStore
from service.backends.variants import choose_variant
from service.config import BackendSettings, Settings
from service.tune import held_budget_ms, pick_shape, tune
from tests.support import linked_store

pytestmark = pytest.mark.integration

MODEL = "movenet-multipose"


def test_tune_serves_every_shape_and_keeps_the_picked_one(
    tmp_path: Path, model_dir: Path, pose_sample_images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSESERVE_API_KEYS", "a-key-the-load-does-not-send")  # the measuring server runs without
    store = linked_store(tmp_path / "store", model_dir, MODEL)
    settings = Settings(model_dir=store, preload=())
    weights = WeightsStore(store)

    report = tune(
        weights,
        MODEL,
        settings.backend(MODEL),
        served=pose_sample_images[0].read_bytes(),
        batches=(1,),
        seconds=0.3,
        cores=2,
    )

    # a CPU too slow for the 100 ms budget even alone still keeps shapes: some variant always keeps one
    assert report.budget_ms == held_budget_ms(report.rows, 100.0, 0.1) >= 100.0
    within = [r for r in report.rows if r["alone_ms"] <= report.budget_ms]
    assert report.batch_bound_ms == held_budget_ms(within, 500.0, 0.1, key="batch_p50_ms") >= 500.0
    assert report.best
    assert all(
        r["eligible"] == (r["alone_ms"] <= report.budget_ms and r["batch_p50_ms"] <= report.batch_bound_ms)
        for r in report.rows
    )
    variants = sorted({r["variant"] for r in report.rows})
    assert "onnxruntime-fp32" in variants
    kept = MeasuredStore(store).variants(MODEL, weights.require(MODEL).card.sha256)
    for key in variants:
        rows = [r for r in report.rows if r["variant"] == key]
        shapes = {(r["workers"], r["intra_op_threads"], r["max_batch"]) for r in rows}
        assert shapes == {(w, t, b) for w, t in ((1, 2), (2, 1), (2, 2)) for b in (1,)}
        assert all(r["img_per_s"] > 0 and r["batch_p50_ms"] > 0 and r["alone_ms"] > 0 for r in rows)
        picked = pick_shape(rows, 0.1)
        if picked is None:  # every shape of this variant slower than the budget another one met
            assert key not in report.best and key not in kept
            continue
        assert report.best[key] == picked
        assert kept[key]["how"] == "tune" and kept[key]["measured"] == "served"
        assert {k: kept[key][k] for k in ("workers", "intra_op_threads", "max_batch")} == {
            k: picked[k] for k in ("workers", "intra_op_threads", "max_batch")
        }
    assert report.chosen is not None
    choice = choose_variant(weights, MODEL, settings.backend(MODEL))
    assert f"{choice.runtime}-{choice.precision}" == report.chosen
    assert choice.settings.workers == report.best[report.chosen]["workers"]


def test_an_image_the_server_refuses_measures_nothing(tmp_path: Path, model_dir: Path) -> None:
    store = linked_store(tmp_path / "store", model_dir, MODEL)
    fixed = BackendSettings(runtime="onnxruntime", workers=1, intra_op_threads=1)
    with pytest.raises(ValueError, match="no image answered"):
        tune(WeightsStore(store), MODEL, fixed, served=b"\xff\xd8 not a jpeg", batches=(1,), seconds=0.1)
    assert MeasuredStore(store).variants(MODEL, WeightsStore(store).require(MODEL).card.sha256) == {}
