"""Top-down glue: person boxes -> crop rows for the pose model -> persons in image pixels.

numpy + OpenCV only (serving path). The cascade is:

    row, geometry = detector.preprocess(image_rgb)              # (one detector run per image)
    boxes, det_scores = detector.postprocess(outputs, geometry)   # image pixels
    rows, crops = make_crops(image_rgb, boxes, pose, ...)         # one pose run over all rows
    keypoints_crop = [pose.postprocess_crop(o) for o in per_row_outputs]   # crop pixels
    persons = assemble(keypoints_crop, crops, det_scores, flip_test=..., crop_w=pose.crop_wh[0])

Choices (measured on ``pose_samples``, see tests/integration/test_topdown_models.py):
- person score = detector score x mean keypoint score: ranks a confident box holding a
  confidently posed person first, and a box the pose model cannot read last. Keypoint AP with
  Thunder crops: nanodet boxes 0.346 (mean keypoint score alone 0.341, detector score alone
  0.306), multipose boxes 0.318 (0.258, 0.323) -- the product is the robust choice for both;
- person bbox = the detector box, carried to ``assemble`` by each row's ``PersonCrop`` (a
  ``CropBox`` that remembers the box it was cut from). Detector boxes matched ground-truth boxes
  with IoU 0.87-0.97 on a 4-person test image, keypoint extents only 0.37-0.68 (they miss the head
  top, hands and feet). A plain ``CropBox`` falls back to the extent of the keypoints scoring at
  least ``BBOX_MIN_KPT_SCORE``;
- flip test averages x, y and score of the original and the un-flipped mirrored crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.codecs.base import keypoint_extent
from models.persons import NUM_KEYPOINTS, Persons
from models.pipelines.base import CropPose, Detector
from models.runtime import Session
from models.transforms import CropBox, crop_box, flip_keypoints, warp_crops

__all__ = [
    "BBOX_MIN_KPT_SCORE",
    "KEYPOINT_BOX_EXPANSION",
    "PersonCrop",
    "assemble",
    "boxes_from_keypoints",
    "make_crops",
    "run_topdown",
]


BBOX_MIN_KPT_SCORE = 0.2
"""Keypoints scoring at least this span a person's bbox when its crop carries no detector box."""


KEYPOINT_BOX_EXPANSION = 1.25
"""Person box from keypoints = their extent grown by this about its centre. The NanoDet box of a
Thunder-posed person on ``pose_samples`` is 1.28x (median; quartiles 1.12-1.40) the width and 1.16x
(1.10-1.37) the height of the extent of its keypoints scoring >= ``BBOX_MIN_KPT_SCORE``."""


@dataclass(frozen=True)
class PersonCrop(CropBox):
    """A ``CropBox`` cut around a detector box: ``box_xyxy`` (x1, y1, x2, y2 image pixels)."""

    box_xyxy: tuple[float, float, float, float]


def _check_outputs(model: str, expected: Sequence[str], session: Session) -> None:
    if list(session.output_names) != list(expected):
        raise ValueError(f"{model}: session outputs {session.output_names}, expected {list(expected)}")


def make_crops(
    image_rgb: np.ndarray,
    boxes_xyxy: np.ndarray,
    pose: CropPose,
    *,
    padding: float = 1.25,
    flip_test: bool = False,
) -> tuple[list[np.ndarray], list[CropBox]]:
    """Pose-model input rows for every box of one image, and the crop geometry of each row.

    ``image_rgb`` (H, W, 3) uint8; ``boxes_xyxy`` (B, 4) image pixels. Each box is grown to the
    crop's aspect ratio and then by ``padding`` (``crop_box``), cut out with an affine warp (zeros
    outside the image) and preprocessed. With ``flip_test`` every box gives two rows, the crop and
    its horizontal mirror, in that order. Returns ``rows`` (B or 2B rows) and ``crops`` aligned
    with them: one ``PersonCrop`` per row (a flipped row repeats its box's).
    """
    boxes: list[CropBox] = []
    for b in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4):
        region = crop_box(b, pose.crop_wh, padding=padding)
        x1, y1, x2, y2 = (float(v) for v in b)
        boxes.append(PersonCrop(region.center_xy, region.size_wh, region.out_wh, box_xyxy=(x1, y1, x2, y2)))
    rows: list[np.ndarray] = []
    crops: list[CropBox] = []
    for box, crop in zip(boxes, warp_crops(image_rgb, boxes), strict=True):
        rows.append(pose.preprocess_crop(crop))
        crops.append(box)
        if flip_test:
            rows.append(pose.preprocess_crop(np.ascontiguousarray(crop[:, ::-1])))
            crops.append(box)
    return rows, crops


def boxes_from_keypoints(
    keypoints: np.ndarray,
    *,
    min_score: float = BBOX_MIN_KPT_SCORE,
    min_keypoints: int = 3,
    expansion: float = KEYPOINT_BOX_EXPANSION,
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes for the next frame's crops from this frame's (P, 17, 3) keypoints (image pixels).

    The box of a person is the extent of its keypoints scoring >= ``min_score``, grown by
    ``expansion`` about its centre, so that it stands in for the detector box ``make_crops`` expects
    (``crop_box`` then fits the crop's aspect ratio and adds the crop padding). Persons with fewer
    than ``min_keypoints`` such keypoints give no box. Returns ``boxes`` (B, 4) x1, y1, x2, y2 and
    ``kept`` (B,) the index of each box's person.
    """
    kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)
    boxes: list[np.ndarray] = []
    kept: list[int] = []
    for i, person in enumerate(kps):
        confident = person[person[:, 2] >= min_score, :2]
        if len(confident) < max(min_keypoints, 1) or not np.isfinite(confident).all():
            continue
        lo, hi = confident.min(axis=0), confident.max(axis=0)
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * expansion
        boxes.append(np.concatenate([centre - half, centre + half]))
        kept.append(i)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(kept, np.int64)


def assemble(
    keypoints_crop: list[np.ndarray],
    crops: list[CropBox],
    det_scores: np.ndarray,
    *,
    flip_test: bool,
    crop_w: int,
) -> Persons:
    """Persons of one image from its crops' keypoints (rows as ``make_crops`` made them).

    ``keypoints_crop``: one (17, 3) array per row, x, y in crop pixels + score; ``crops``: the
    row-aligned ``CropBox`` list; ``det_scores`` (B,) one per box. With ``flip_test`` rows come in
    (original, mirrored) pairs: the mirrored one is un-flipped (``flip_keypoints`` with
    ``crop_w``) and x, y, score are averaged. Keypoints are mapped to image pixels (they may lie
    outside the image where the crop does). Person score = det score x mean keypoint score;
    bbox = the detector box of a ``PersonCrop`` (else the extent of the confident keypoints).
    Sorted by score, best first.
    """
    step = 2 if flip_test else 1
    if len(keypoints_crop) != len(crops) or len(crops) != step * len(det_scores):
        raise ValueError(
            f"{len(keypoints_crop)} keypoint rows and {len(crops)} crops for {len(det_scores)} boxes "
            f"(flip_test={flip_test})"
        )
    if not crops:
        return Persons.empty()
    keypoints = np.empty((len(det_scores), NUM_KEYPOINTS, 3), np.float32)
    for i in range(len(det_scores)):
        kps = np.asarray(keypoints_crop[step * i], dtype=np.float32)
        if flip_test:
            kps = (kps + flip_keypoints(np.asarray(keypoints_crop[step * i + 1], np.float32), crop_w)) / 2
        keypoints[i, :, :2] = crops[step * i].to_image(kps[:, :2])
        keypoints[i, :, 2] = kps[:, 2]
    scores = np.asarray(det_scores, np.float32) * keypoints[:, :, 2].mean(axis=1)
    boxes = np.array(
        [
            c.box_xyxy if isinstance(c, PersonCrop) else keypoint_extent(k, BBOX_MIN_KPT_SCORE)
            for c, k in zip(crops[::step], keypoints, strict=True)
        ],
        np.float32,
    ).reshape(-1, 4)
    order = np.argsort(-scores, kind="stable")
    return Persons(keypoints=keypoints[order], boxes_xyxy=boxes[order], scores=scores[order])


def run_topdown(
    detector: Detector,
    det_session: Session,
    pose: CropPose,
    pose_session: Session,
    image_rgb: np.ndarray,
    *,
    flip_test: bool = False,
    padding: float = 1.25,
) -> Persons:
    """Persons in one (H, W, 3) uint8 RGB image: one detector run, one batched pose run over all crops.

    The sequential reference of the cascade (tests, evaluation, benchmarks); the service batches
    the same pieces across frames instead. The sessions' output names must be the codecs' own
    ``output_names`` in order (ValueError otherwise).
    """
    _check_outputs(detector.name, detector.codec.output_names, det_session)
    _check_outputs(pose.name, pose.codec.output_names, pose_session)
    row, geometry = detector.preprocess(image_rgb)
    det_outputs = [o[0] for o in det_session.run(row[None])]
    boxes_xyxy, det_scores = detector.postprocess(det_outputs, geometry)
    if len(det_scores) == 0:
        return Persons.empty()
    rows, crops = make_crops(image_rgb, boxes_xyxy, pose, padding=padding, flip_test=flip_test)
    pose_outputs = pose_session.run(np.stack(rows))
    keypoints_crop = [pose.postprocess_crop([o[i] for o in pose_outputs]) for i in range(len(rows))]
    return assemble(keypoints_crop, crops, det_scores, flip_test=flip_test, crop_w=pose.crop_wh[0])
