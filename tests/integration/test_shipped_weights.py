"""The seed weights trained here and shipped with the project (``models/shipped``): the file is
what its card says, `poseserve models pull` installs it like a pretrained model, a server without
``--allow-untrained`` serves it, and `poseserve eval` reproduces the AP its card records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.card import read_card
from models.weights import SHIPPED_DIR, WeightsStore, sha256_file, shipped
from service.cli import app
from tests.support import require_pose_samples

pytestmark = pytest.mark.integration

NAME = "amfacpose-r18"
MAX_BYTES = 25 * 1024 * 1024


def test_the_shipped_file_is_what_its_card_says() -> None:
    assert shipped() == [NAME], f"shipped weights: {shipped()}"
    onnx, card_path = SHIPPED_DIR / f"{NAME}.onnx", SHIPPED_DIR / f"{NAME}.json"
    card = read_card(card_path)
    assert onnx.stat().st_size < MAX_BYTES and card.bytes == onnx.stat().st_size
    assert sha256_file(onnx) == card.sha256
    assert not card.untrained
    training = card.source["training"]  # type: ignore[index]
    assert "research use" in card.licence["training_data"], card.licence
    assert training["teacher"] == "topdown-movenet" and training["split"] == "1-9000"
    assert training["eval"]["AP"] > 0.0


def _cli(store: Path, *args: str) -> str:
    env = {**os.environ, "POSESERVE_MODEL_DIR": str(store), "POSESERVE_PRELOAD": ""}
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_pull_installs_it_and_eval_of_the_served_backend_gives_the_card_ap(detector_store: Path) -> None:
    store = detector_store
    samples = require_pose_samples()
    assert not WeightsStore(store).available(NAME)
    _cli(store, "models", "pull", NAME)
    installed = WeightsStore(store).require(NAME)
    assert installed.card == read_card(SHIPPED_DIR / f"{NAME}.json")
    assert "shipped" in _cli(store, "models", "list")

    recorded = installed.card.source["training"]["eval"]  # type: ignore[index]
    out = _cli(
        store, "eval", "amfacpose-r18", "--data", str(samples / "person_keypoints.json"),
        "--images", str(samples), "--json",
    )  # fmt: skip
    report = json.loads(out)
    assert report["images"] == recorded["images"] and report["boxes"] == recorded["boxes"]
    # the same ONNX file through the same API path; ONNX Runtime's thread count may move a score
    # in the last digits, so the AP must agree to 0.005, not bit for bit
    assert report["stats"]["AP"] == pytest.approx(recorded["AP"], abs=0.005)
    assert report["body_stats"]["AP"] == pytest.approx(recorded["AP_body12"], abs=0.005)


def test_the_image_build_sends_and_installs_it() -> None:
    repo = SHIPPED_DIR.parents[1]
    ignore = [ln.strip() for ln in (repo / ".dockerignore").read_text().splitlines()]
    # .dockerignore: the last matching line wins, so the exception must follow the rule on *.onnx
    assert ignore.index("!models/shipped/*.onnx") > ignore.index("**/*.onnx")
    models_arg = next(ln for ln in (repo / "Dockerfile").read_text().splitlines() if ln.startswith("ARG MODELS="))
    assert NAME in models_arg.split("=", 1)[1].strip('"').split()
