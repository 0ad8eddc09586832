"""The SHaRPose backend through the API: 409 without weights (either graph), its two graphs exported
with --allow-untrained and served as trained-or-not, honestly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.weights import WeightsStore
from service.config import Settings
from tests.support import client_for, metric_samples, sample_jpeg

pytestmark = [pytest.mark.integration, pytest.mark.train]

BACKEND = "sharpose-s"


def post(settings: Settings, query: str = "") -> tuple[httpx.Response, str]:
    """One pose request, then the metrics text."""

    async def scenario() -> tuple[httpx.Response, str]:
        async with client_for(settings) as client:
            r = await client.post(
                f"/v1/pose?backend={BACKEND}{query}", content=sample_jpeg(), headers={"content-type": "image/jpeg"}
            )
            return r, (await client.get("/metrics")).text

    return asyncio.run(scenario())


def settings_for(detector_store: Path, **overrides: Any) -> Settings:
    return Settings(model_dir=detector_store, preload=(), request_timeout_s=60, **overrides)


def test_missing_weights_are_409_with_the_fix(detector_store: Path) -> None:
    r, _ = post(settings_for(detector_store))
    assert r.status_code == 409, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == "weights_missing"
    assert f"poseserve export {BACKEND}" in error["message"] and "--allow-untrained" in error["message"]


@pytest.mark.slow
def test_allow_untrained_exports_both_graphs_and_gates(detector_store: Path) -> None:
    """Exports sharpose-s (two 108 MB graphs, ~40 s on two cores) and serves it; an untrained
    quality head answers Q ~ 0.5 < 0.95, so every crop runs the fine stage."""
    r, metrics = post(settings_for(detector_store, allow_untrained=True), "&min_score=0")
    assert r.status_code == 200, r.text
    assert r.json()["untrained"] is True and len(r.json()["persons"]) >= 2
    store = WeightsStore(detector_store)
    coarse = store.require(BACKEND).card
    assert coarse.codec_params["fine_model"] == f"{BACKEND}-fine" and coarse.codec_params["num_refined"] == 24
    fine = store.require(f"{BACKEND}-fine").card
    assert fine.sha256 == coarse.codec_params["fine_sha256"] and fine.untrained
    assert max(max(c.parity["max_abs_diff"].values()) for c in (coarse, fine)) < 1e-3
    gate = {s[0]["decision"]: s[1] for s in metric_samples(metrics, "poseserve_quality_gate_total")}
    assert gate["refined"] == len(r.json()["persons"]) and gate["coarse"] == 0
    fine_items = [v for labels, v in metric_samples(metrics, "poseserve_batch_size_sum") if labels["stage"] == "fine"]
    assert fine_items == [gate["refined"]]
    # without the fine graph the backend cannot load: 409 naming it
    (detector_store / f"{BACKEND}-fine.onnx").unlink()
    r, _ = post(settings_for(detector_store, allow_untrained=True))
    assert r.status_code == 409 and f"{BACKEND}-fine" in r.json()["error"]["message"]
