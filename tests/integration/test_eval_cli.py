"""`poseserve eval` scores the served backend: the same AP as asking the API image by image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.evaluation import evaluate_keypoints
from service.cli import app
from service.config import Settings
from tests.integration.test_accuracy import api_results
from tests.support import coco_samples

pytestmark = [pytest.mark.integration, pytest.mark.accuracy]


def test_eval_equals_the_api_path(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, coco = coco_samples()
    monkeypatch.setenv("POSESERVE_MODEL_DIR", str(model_dir))
    args = ["eval", "movenet-multipose", "--data", str(root / "person_keypoints.json"), "--images", str(root), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    expected = evaluate_keypoints(coco, api_results(Settings(model_dir=model_dir, preload=()), "movenet-multipose"))
    assert report["stats"] == expected
    assert report["stats"]["AP"] > 0.2
    assert report["images"] == len(coco["images"])
    assert report["labelled_joints"] == list(range(17))
    assert 0 < report["body_stats"]["AP"] <= 1
