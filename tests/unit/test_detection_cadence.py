"""Top-down cameras between detector runs: person boxes from keypoints, and the detector schedule."""

from __future__ import annotations

import numpy as np
import pytest

from models.persons import NUM_KEYPOINTS, Persons
from models.pipelines.topdown import KEYPOINT_BOX_EXPANSION, assemble, boxes_from_keypoints, make_crops
from models.transforms import CropBox
from service.backends.topdown import DetectionCadence
from tests.unit.test_topdown_glue import FakePose, random_image

pytestmark = pytest.mark.unit


def person(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> np.ndarray:
    """(17, 3) keypoints spanning exactly (x1, y1)-(x2, y2), all scored `score`."""
    xs = np.linspace(x1, x2, NUM_KEYPOINTS)
    ys = np.linspace(y1, y2, NUM_KEYPOINTS)[::-1]
    return np.stack([xs, ys, np.full(NUM_KEYPOINTS, score)], axis=-1).astype(np.float32)


def test_box_is_the_confident_keypoints_extent_grown_about_its_centre() -> None:
    kps = person(100, 200, 180, 400)
    kps[3] = (10.0, 10.0, 0.1)  # a weak keypoint far away does not stretch the box
    boxes, kept = boxes_from_keypoints(kps[None])
    assert kept.tolist() == [0]
    half_w, half_h = 40 * KEYPOINT_BOX_EXPANSION, 100 * KEYPOINT_BOX_EXPANSION
    np.testing.assert_allclose(boxes[0], [140 - half_w, 300 - half_h, 140 + half_w, 300 + half_h], rtol=1e-6)


def test_persons_with_too_few_confident_keypoints_give_no_box() -> None:
    faint = person(0, 0, 50, 50, score=0.05)
    faint[:2, 2] = 0.8  # two confident keypoints: fewer than min_keypoints=3
    nan = person(0, 0, 50, 50)
    nan[5, 0] = np.nan
    boxes, kept = boxes_from_keypoints(np.stack([faint, person(300, 100, 360, 300), nan]))
    assert kept.tolist() == [1] and boxes.shape == (1, 4)
    empty, none_kept = boxes_from_keypoints(np.zeros((0, NUM_KEYPOINTS, 3), np.float32))
    assert empty.shape == (0, 4) and none_kept.shape == (0,)


def test_crops_from_keypoint_boxes_map_back_to_the_same_person() -> None:
    """A frame cropped from the previous keypoints' boxes finds the keypoints where they were."""
    image = random_image()
    kps = np.stack([person(100, 80, 200, 400), person(400, 150, 470, 330)])
    boxes, _ = boxes_from_keypoints(kps)
    pose = FakePose()
    rows, crops = make_crops(image, boxes, pose)
    in_crop = [np.concatenate([crop.to_crop(k[:, :2]), k[:, 2:]], axis=-1) for crop, k in zip(crops, kps, strict=True)]
    assert all(isinstance(c, CropBox) for c in crops) and len(rows) == 2
    persons = assemble(in_crop, crops, np.ones(2, np.float32), flip_test=False, crop_w=pose.crop_wh[0])
    found = sorted(persons.keypoints.tolist(), key=lambda k: k[0][0])
    np.testing.assert_allclose(np.array(found), kps, atol=1e-3)


def persons_of(*people: np.ndarray, det: float = 0.8) -> Persons:
    kps = np.stack(people)
    scores = det * kps[:, :, 2].mean(axis=1)
    boxes = np.array([[k[:, 0].min(), k[:, 1].min(), k[:, 0].max(), k[:, 1].max()] for k in kps], np.float32)
    return Persons(kps, boxes, scores.astype(np.float32))


def test_cadence_runs_the_detector_every_n_frames_while_persons_are_carried() -> None:
    cadence = DetectionCadence(every_n=3, min_score=0.1)
    found = persons_of(person(100, 80, 200, 400), person(400, 150, 470, 330))
    schedule = []
    for _ in range(9):
        detect = cadence.due()
        schedule.append(detect)
        cadence.record(found, detected=detect)
    assert schedule == [True, False, False] * 3
    assert (cadence.detected_frames, cadence.carried_frames) == (3, 6)
    assert len(cadence.boxes) == 2
    np.testing.assert_allclose(cadence.det_scores, [0.8, 0.8], rtol=1e-5)  # the detector's share of the score


def test_cadence_detects_again_when_nobody_is_carried() -> None:
    cadence = DetectionCadence(every_n=5, min_score=0.3)
    assert cadence.due()  # nothing seen yet
    cadence.record(persons_of(person(100, 80, 200, 400)), detected=True)
    assert not cadence.due()
    weak = persons_of(person(100, 80, 200, 400, score=0.3), det=0.5)  # person score 0.15 < min_score
    cadence.record(weak, detected=False)
    assert cadence.due() and len(cadence.boxes) == 0
    cadence.record(Persons.empty(), detected=True)
    assert cadence.due()


def test_every_n_1_always_detects() -> None:
    cadence = DetectionCadence(every_n=1)
    cadence.record(persons_of(person(100, 80, 200, 400)), detected=True)
    assert cadence.due()
