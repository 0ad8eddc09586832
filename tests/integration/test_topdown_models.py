"""The top-down cascade with the real pulled models on real photos (pose_samples), scored by pycocotools.

Measured on the CPU (onnxruntime 1.31, 2 threads), padding 1.25; floors sit just under:
- NanoDet person bbox AP: 0.289 at score threshold 0.05, 0.284 at the default 0.35; with cell
  centres at ``x * stride`` (NanoDet-Plus) instead of ``(x + 0.5) * stride`` only 0.205 / 0.199.
- keypoint AP of ``run_topdown``: nanodet -> thunder 0.346 (flip test 0.352), multipose boxes ->
  thunder 0.318 (0.331), nanodet -> blazepose 0.144, multipose boxes -> blazepose 0.147.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from models import registry
from models.codecs import nanodet
from models.evaluation import coco_keypoint_results, evaluate_keypoints
from models.pipelines import build, topdown
from models.pipelines.base import CropPose, Detector, PipelineOptions
from models.pipelines.nanodet import IOU_THRESHOLD
from models.runtime import OrtModel
from models.weights import DEFAULT_MODEL_DIR, DEFAULT_NPM_CACHE_DIR, WeightsStore
from tests.support import coco_samples, four_person_grid, iou

pytestmark = [pytest.mark.integration, pytest.mark.accuracy]

logger = logging.getLogger(__name__)

MODELS = ("nanodet", "movenet-multipose", "movenet-thunder", "blazepose-heavy")


@pytest.fixture(scope="session")
def topdown_store(weights_store: WeightsStore, topdown_models: Path) -> WeightsStore:
    """The tests' weights store with the four cascade models: a session temp dir of links to the
    user's store, missing models pulled into the temp dir (conftest), never into the user's store."""
    assert weights_store.model_dir != DEFAULT_MODEL_DIR and weights_store.npm_cache_dir != DEFAULT_NPM_CACHE_DIR
    assert all(weights_store.available(name) for name in MODELS)
    return weights_store


@pytest.fixture(scope="module")
def sessions(topdown_store: WeightsStore) -> dict[str, OrtModel]:
    return {
        name: OrtModel(topdown_store.require(name).path, providers=("cuda", "cpu"), intra_op_threads=2)
        for name in MODELS
    }


def detector_named(name: str) -> Detector:
    return build.detector(registry.DETECTORS[name], None, PipelineOptions())


def crop_pose_named(name: str) -> CropPose:
    return build.crop_pose(registry.MODELS[name], None)


@pytest.fixture(scope="module")
def images() -> dict[int, np.ndarray]:
    """Every pose_samples image as (H, W, 3) uint8 RGB, by COCO image id."""
    root, coco = coco_samples()
    assert coco["images"], "no images in pose_samples/person_keypoints.json"
    out = {}
    for image in coco["images"]:
        bgr = cv2.imread(str(root / image["file_name"]))
        assert bgr is not None, image["file_name"]
        out[image["id"]] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out


def bbox_ap(ground_truth: dict[str, Any], results: list[dict[str, Any]]) -> float:
    """COCO bbox AP (IoU 0.50:0.95) of person ``results`` (x, y, w, h in image pixels)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def box_results(image_id: int, boxes_xyxy: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(s),
        }
        for (x1, y1, x2, y2), s in zip(boxes_xyxy, scores, strict=True)
    ]


@pytest.mark.parametrize(("score_threshold", "floor"), [(0.05, 0.28), (0.35, 0.27)])
def test_nanodet_person_bbox_ap(
    sessions: dict[str, OrtModel], images: dict[int, np.ndarray], score_threshold: float, floor: float
) -> None:
    _, coco = coco_samples()
    codec = nanodet.NanoDetCodec(
        (416, 416), score_threshold=score_threshold, iou_threshold=IOU_THRESHOLD, max_persons=20
    )
    detector = dataclasses.replace(detector_named("nanodet"), codec=codec)
    by_offset: dict[float, list[dict[str, Any]]] = {0.5: [], 0.0: []}
    for image_id, image in images.items():
        row, geometry = detector.preprocess(image)
        outputs = [o[0] for o in sessions["nanodet"].run(row[None])]
        boxes, scores = detector.postprocess(outputs, geometry)
        by_offset[0.5] += box_results(image_id, boxes, scores)
        # the other cell-centre convention (NanoDet-Plus priors at x * stride), mapped the same way
        boxes, scores = nanodet.decode_persons(
            outputs,
            input_wh=(detector.input_size, detector.input_size),
            score_threshold=score_threshold,
            iou_threshold=IOU_THRESHOLD,
            centre_offset=0.0,
        )
        boxes[:, 0::2] = (boxes[:, 0::2] - geometry.pad_x) / geometry.scale_x
        boxes[:, 1::2] = (boxes[:, 1::2] - geometry.pad_y) / geometry.scale_y
        by_offset[0.0] += box_results(image_id, boxes, scores)

    ap = {offset: bbox_ap(coco, results) for offset, results in by_offset.items()}
    logger.info("nanodet person bbox AP at threshold %s by centre offset: %s", score_threshold, ap)
    assert ap[0.5] >= floor, ap
    assert ap[0.5] > ap[0.0] + 0.05, f"(x + 0.5) * stride should clearly beat x * stride: {ap}"


COMBINATIONS = [
    ("nanodet", "movenet-thunder", False, 0.33),
    ("nanodet", "movenet-thunder", True, 0.34),  # the best combination
    ("movenet-multipose", "movenet-thunder", False, 0.30),
    ("movenet-multipose", "movenet-thunder", True, 0.32),
    ("nanodet", "blazepose-heavy", False, 0.13),
    ("movenet-multipose", "blazepose-heavy", False, 0.13),
]


@pytest.mark.parametrize(("detector_name", "pose_name", "flip_test", "floor"), COMBINATIONS)
def test_topdown_keypoint_ap(
    sessions: dict[str, OrtModel],
    images: dict[int, np.ndarray],
    detector_name: str,
    pose_name: str,
    flip_test: bool,
    floor: float,
) -> None:
    _, coco = coco_samples()
    detector, pose = detector_named(detector_name), crop_pose_named(pose_name)
    results: list[dict[str, Any]] = []
    for image_id, image in images.items():
        persons = topdown.run_topdown(
            detector, sessions[detector_name], pose, sessions[pose_name], image, flip_test=flip_test
        )
        assert persons.keypoints.shape == (len(persons), 17, 3)
        assert (np.diff(persons.scores) <= 0).all()
        results += coco_keypoint_results(image_id, persons.keypoints, persons.scores)
    stats = evaluate_keypoints(coco, results)
    logger.info("%s -> %s (flip %s): %s", detector_name, pose_name, flip_test, stats)
    assert stats["AP"] >= floor, stats


@pytest.mark.parametrize("pose_name", ["movenet-thunder", "blazepose-heavy"])
@pytest.mark.parametrize("detector_name", ["nanodet", "movenet-multipose"])
def test_four_people_are_four_persons(
    sessions: dict[str, OrtModel], images: dict[int, np.ndarray], detector_name: str, pose_name: str
) -> None:
    """Each of the 4 people is found exactly once (IoU >= 0.5); with Thunder they are the 4 best.

    The tiles also hold small spectators that NanoDet rightly finds; BlazePose's near-saturated
    visibilities rank some of those above a person, so only Thunder is held to the top 4.
    """
    grid, people = four_person_grid()
    persons = topdown.run_topdown(
        detector_named(detector_name),
        sessions[detector_name],
        crop_pose_named(pose_name),
        sessions[pose_name],
        grid,
    )
    overlap = iou(people, persons.boxes_xyxy)
    assert ((overlap >= 0.5).sum(axis=1) == 1).all(), overlap.round(2)
    if pose_name == "movenet-thunder":
        assert sorted(overlap.argmax(axis=1).tolist()) == [0, 1, 2, 3], persons.scores
    # keypoints of each person lie in (or at the edge of) that person's tile
    for person_box, index in zip(people, overlap.argmax(axis=1), strict=True):
        confident = persons.keypoints[index][persons.keypoints[index, :, 2] >= 0.3, :2]
        assert len(confident) >= 5
        assert (confident >= person_box[:2] - 20).all() and (confident <= person_box[2:] + 20).all()
