"""`poseserve data pseudolabel` on real photos, and the mixed-supervision merge of its output with
labels that lack the face points (as LSPET's do)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.train.coco import load_coco
from models.train.merge import FACE_JOINTS, MergeRule, merge_supervision
from service.cli import app
from tests.support import coco_samples

pytestmark = [pytest.mark.integration]


def test_pseudolabels_complete_labels_without_face_points(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, coco = coco_samples()
    chosen = coco["images"][:3]
    photos = tmp_path / "photos"
    for img in chosen:
        link = photos / img["file_name"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(root / img["file_name"])
    monkeypatch.setenv("POSESERVE_MODEL_DIR", str(model_dir))
    out = tmp_path / "pseudo.json"
    args = ["data", "pseudolabel", "--images", str(photos), "--teacher", "movenet-multipose", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pseudo = json.loads(out.read_text())
    assert pseudo["info"]["teacher"] == "movenet-multipose"
    assert len(pseudo["info"]["teacher_weights"]["sha256"]) == 64
    assert {i["file_name"] for i in pseudo["images"]} == {i["file_name"] for i in chosen}
    assert pseudo["annotations"], "the teacher kept no person on three photos with people"
    for ann in pseudo["annotations"]:
        assert ann["score"] >= 0.4 and ann["num_keypoints"] >= 8
        assert sum(v == 2 for v in ann["keypoints"][2::3]) == ann["num_keypoints"]
    load_coco(out)  # a valid COCO file for pycocotools

    # labels of the same photos with the face points removed, as LSPET ships them
    ids = {i["id"] for i in chosen}
    labels = {**coco, "images": chosen, "annotations": [dict(a) for a in coco["annotations"] if a["image_id"] in ids]}
    for ann in labels["annotations"]:
        kps = np.asarray(ann["keypoints"], float).reshape(17, 3)
        kps[list(FACE_JOINTS)] = 0
        ann["keypoints"] = kps.reshape(-1).tolist()
    merged = merge_supervision(labels, pseudo, MergeRule(min_oks=0.3, add_unmatched=True))
    assert merged["info"]["teacher"] == "movenet-multipose"
    assert merged["info"]["merge"]["joints_filled"] > 0
    originals = {a["id"]: a for a in labels["annotations"]}
    for ann in merged["annotations"]:
        kps = np.asarray(ann["keypoints"], float).reshape(17, 3)
        if ann.get("pseudo"):
            continue
        before = np.asarray(originals[ann["id"]]["keypoints"], float).reshape(17, 3)
        body = [j for j in range(17) if j not in FACE_JOINTS]
        np.testing.assert_array_equal(kps[body], before[body])  # labels win on the joints they have
    assert len(merged["annotations"]) >= len(labels["annotations"])
