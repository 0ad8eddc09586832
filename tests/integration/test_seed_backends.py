"""Seed-paper backends through the API: 409 without weights, honest `untrained` when allowed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from models.export import build, export_to_store
from models.weights import DEFAULT_MODEL_DIR
from service.config import Settings
from tests.support import client_for, sample_jpeg

pytestmark = [pytest.mark.integration, pytest.mark.train]


SEED_BACKENDS = ["erpose-n", "amfacpose-r18"]


def user_store_state(names: list[str]) -> dict[Path, int | None]:
    """mtime (ns) of each model file of ``names`` in the user's store (None when absent)."""
    paths = [DEFAULT_MODEL_DIR / f"{name}{suffix}" for name in names for suffix in (".onnx", ".json")]
    return {p: p.stat().st_mtime_ns if p.exists() else None for p in paths}


def settings_for(detector_store: Path, **overrides: Any) -> Settings:
    """No preloading; a generous request timeout: the random networks' 20+ crops take seconds on a busy CPU."""
    return Settings(model_dir=detector_store, preload=(), request_timeout_s=25, **overrides)


def post_all(settings: Settings, backends: list[str], query: str = "") -> list[httpx.Response]:
    image = sample_jpeg()

    async def scenario() -> list[httpx.Response]:
        async with client_for(settings) as client:
            return [
                await client.post(f"/v1/pose?backend={b}{query}", content=image, headers={"content-type": "image/jpeg"})
                for b in backends
            ]

    return asyncio.run(scenario())


def test_missing_weights_are_409_with_the_fix(detector_store: Path) -> None:
    responses = post_all(settings_for(detector_store), SEED_BACKENDS)
    for r in responses:
        assert r.status_code == 409, r.text
        error: dict[str, Any] = r.json()["error"]
        assert error["code"] == "weights_missing"
        assert "poseserve export" in error["message"] and "--allow-untrained" in error["message"]


def test_allow_untrained_exports_random_weights_and_says_so(detector_store: Path) -> None:
    user_store_before = user_store_state(SEED_BACKENDS)
    allowed = settings_for(detector_store, allow_untrained=True)
    responses = post_all(allowed, SEED_BACKENDS)
    for r in responses:
        assert r.status_code == 200, r.text
        assert r.json()["untrained"] is True
    assert (detector_store / "erpose-n.onnx").is_file() and (detector_store / "amfacpose-r18.json").is_file()
    # the exports went into the store the server was given, not into the user's
    assert user_store_state(SEED_BACKENDS) == user_store_before
    # the same untrained files are refused by a server that does not allow them
    refused = post_all(settings_for(detector_store), ["erpose-n"])[0]
    assert refused.status_code == 409 and "untrained" in refused.json()["error"]["message"]


def test_checkpoint_export_is_served_as_trained(detector_store: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = tmp_path_factory.mktemp("ckpt") / "amfacpose-r18.pt"
    torch.manual_seed(1)
    torch.save(build("amfacpose-r18").state_dict(), checkpoint)
    card = export_to_store("amfacpose-r18", detector_store, checkpoint=checkpoint)
    assert card.untrained is False and card.checkpoint == str(checkpoint)
    assert max(card.parity["max_abs_diff"].values()) < 1e-3
    # min_score=0: the random network's keypoint scores put every person under the default 0.2,
    # but each NanoDet box still comes back as a person with 17 keypoints
    r = post_all(settings_for(detector_store), ["amfacpose-r18"], query="&min_score=0")[0]
    assert r.status_code == 200, r.text
    assert r.json()["untrained"] is False
    persons = r.json()["persons"]
    assert len(persons) >= 2, persons  # the sample photo holds several people
    for person in persons:
        assert len(person["keypoints"]) == 17 and 0 <= person["score"] <= 1
