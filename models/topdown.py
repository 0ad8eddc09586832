"""Top-down cascade pieces: person detector -> affine person crops -> pose model per crop.

numpy + OpenCV only (serving path; no torch, no service imports). Every piece is pure and
stateless so the engine can batch twice: detector rows from many frames (stage "detect") and
crop rows from many frames (stage "pose").

Flow for one image (``run_topdown`` is the plain sequential reference of it)::

    row, geometry = detector.preprocess(image_rgb)          # one detector input row
    boxes_xyxy, det_scores = detector.postprocess(outputs, geometry)   # image pixels
    rows, crops = make_crops(image_rgb, boxes_xyxy, pose)   # one row per box (two with flip test)
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.codecs import blazepose, movenet, nanodet
from models.pipelines import MoveNetMultiPose, Persons
from models.transforms import CropBox, Letterbox, crop_box, flip_keypoints, letterbox, warp_crops

__all__ = [
    "BBOX_MIN_KPT_SCORE",
    "CROP_POSES",
    "DETECTORS",
    "BlazePoseHeavy",
    "CropPose",
    "Detector",
    "MoveNetBoxes",
    "MoveNetThunder",
    "NanoDetPersons",
    "PersonCrop",
    "SessionRunner",
    "assemble",
    "make_crops",
    "run_topdown",
]


BBOX_MIN_KPT_SCORE = 0.2
"""Keypoints scoring at least this span a person's bbox when its crop carries no detector box."""


@dataclass(frozen=True)
class PersonCrop(CropBox):
    """A ``CropBox`` cut around a detector box: ``box_xyxy`` (x1, y1, x2, y2 image pixels)."""

    box_xyxy: tuple[float, float, float, float]


class Detector(Protocol):
    """Person detector stage: one image -> person boxes in image pixels."""

    name: str
    input_size: int

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> one input row (no batch dim) and its geometry."""
        ...

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        """One image's outputs (batch dim removed, session output order) -> boxes_xyxy (B, 4) image
        pixels and scores (B,) in [0, 1], best first, at most ``max_persons``."""
        ...


class CropPose(Protocol):
    """Single-person pose stage: one person crop of ``crop_wh`` pixels -> 17 keypoints."""

    name: str
    crop_wh: tuple[int, int]

    def preprocess_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 RGB crop -> one input row (no batch dim)."""
        ...

    def postprocess_crop(self, outputs: list[np.ndarray]) -> np.ndarray:
        """One crop's outputs (batch dim removed, session output order) -> (17, 3) x, y in crop
        pixels and a score in [0, 1], COCO order."""
        ...


class SessionRunner(Protocol):
    """What ``run_topdown`` needs of a session (``models.runtime.OrtModel`` is one)."""

    output_names: list[str]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """One batch (N, ...) -> every output, in ``output_names`` order."""
        ...


def _check_outputs(model: str, expected: Sequence[str], session: SessionRunner) -> None:
    if list(session.output_names) != list(expected):
        raise ValueError(f"{model}: session outputs {session.output_names}, expected {list(expected)}")


# ---- detectors ------------------------------------------------------------------------------------


class NanoDetPersons:
    """NanoDet (COCO-80, 416 x 416) person boxes: centred letterbox, BGR float (p - mean) / std, NCHW.

    A centred letterbox scored person bbox AP 0.293 on ``pose_samples`` (threshold 0.05, no
    person cap) against 0.280 for a stretched resize (the reference script's) and 0.280 for a
    top-left letterbox; RGB instead of BGR input 0.281.
    """

    name = "nanodet"
    output_names = tuple(f"{kind}_stride{s}" for kind in ("cls", "reg") for s in nanodet.STRIDES)
    MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
    STD_BGR = np.array([57.375, 57.12, 58.395], np.float32)

    def __init__(
        self,
        score_threshold: float = 0.35,
        iou_threshold: float = 0.6,
        max_persons: int = 20,
        input_size: int = 416,
    ) -> None:
        if input_size % max(nanodet.STRIDES):
            raise ValueError(f"NanoDet input size must be a multiple of 32, got {input_size}")
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_persons = max_persons
        self.input_size = input_size

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> (3, S, S) float32 normalised BGR and its geometry."""
        canvas, geometry = letterbox(image_rgb, self.input_size, center=True)
        bgr = canvas[..., ::-1].astype(np.float32)
        # padding is black in pixel space, as the model saw it in training
        row = ((bgr - self.MEAN_BGR) / self.STD_BGR).transpose(2, 0, 1)
        return np.ascontiguousarray(row, dtype=np.float32), geometry

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        """Six heads (``cls_stride8..32, reg_stride8..32``) -> boxes_xyxy (B, 4) image px, scores (B,)."""
        boxes, scores = nanodet.decode_persons(
            outputs,
            input_wh=(self.input_size, self.input_size),
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
        )
        boxes, scores = boxes[: self.max_persons], scores[: self.max_persons]
        return geometry.boxes_to_image(boxes), scores


class MoveNetBoxes:
    """Person boxes from MoveNet MultiPose (its box heads), top-left letterbox, int32 RGB NHWC.

    Scores are MoveNet's person scores (centre x mean confident keypoint score); persons at or
    below ``min_score`` are dropped (the model finds at most 6).
    """

    name = "movenet-multipose"
    output_names = movenet.HEAD_NAMES

    def __init__(self, input_size: int = 384, min_score: float = 0.05) -> None:
        self._pipeline = MoveNetMultiPose(input_size)
        self.input_size = input_size
        self.min_score = min_score
        self.max_persons = movenet.MAX_PERSONS

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> (S, S, 3) int32 and its geometry."""
        return self._pipeline.preprocess(image_rgb)

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        """Six MoveNet heads (``movenet.HEAD_NAMES``) -> boxes_xyxy (B, 4) image px, scores (B,)."""
        decoded = movenet.decode(outputs, min_score=self.min_score)
        boxes = geometry.boxes_to_image(decoded.boxes_xyxy)
        return boxes, decoded.scores.astype(np.float32)


# ---- pose models on crops -------------------------------------------------------------------------


class MoveNetThunder:
    """MoveNet SinglePose Thunder: a 256 x 256 int32 RGB crop -> 17 keypoints (``decode_singlepose``)."""

    name = "movenet-thunder"
    crop_wh = (256, 256)
    output_names = movenet.SINGLEPOSE_HEAD_NAMES

    def preprocess_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        """(256, 256, 3) uint8 RGB -> (256, 256, 3) int32."""
        return crop_rgb.astype(np.int32)

    def postprocess_crop(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Heads in ``movenet.SINGLEPOSE_HEAD_NAMES`` order -> (17, 3) crop px + heatmap score."""
        return movenet.decode_singlepose(outputs)


class BlazePoseHeavy:
    """BlazePose GHUM heavy landmarks: a 256 x 256 RGB crop as float32 in [0, 1] -> COCO-17.

    Input range checked on real crops: with ground-truth boxes of ``pose_samples`` (padding 1.25),
    [0, 1] scores keypoint AP 0.209 and [-1, 1] 0.167; on crops where both models are confident,
    its keypoints agree with MoveNet Thunder's within 2-6 crop pixels (median). BlazePose expects
    an upright person (MediaPipe rotates its ROI); upside-down people come out head-down wrong.
    """

    name = "blazepose-heavy"
    crop_wh = (256, 256)
    output_names = ("output_poseflag", "activation_heatmap", "world_3d", "ld_3d", "activation_segmentation")

    def preprocess_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        """(256, 256, 3) uint8 RGB -> (256, 256, 3) float32 in [0, 1]."""
        return crop_rgb.astype(np.float32) * np.float32(1.0 / 255.0)

    def postprocess_crop(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Outputs in ``output_names`` order -> (17, 3) crop px, score = visibility x pose flag."""
        flag = outputs[self.output_names.index("output_poseflag")]
        ld_3d = outputs[self.output_names.index("ld_3d")]
        return blazepose.decode_coco17(ld_3d, flag)


DETECTORS: dict[str, Callable[[], Detector]] = {
    NanoDetPersons.name: NanoDetPersons,
    MoveNetBoxes.name: MoveNetBoxes,
}
CROP_POSES: dict[str, Callable[[], CropPose]] = {
    MoveNetThunder.name: MoveNetThunder,
    BlazePoseHeavy.name: BlazePoseHeavy,
}


# ---- glue -----------------------------------------------------------------------------------------


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
    keypoints = np.empty((len(det_scores), movenet.NUM_KEYPOINTS, 3), np.float32)
    for i in range(len(det_scores)):
        kps = np.asarray(keypoints_crop[step * i], dtype=np.float32)
        if flip_test:
            kps = (kps + flip_keypoints(np.asarray(keypoints_crop[step * i + 1], np.float32), crop_w)) / 2
        keypoints[i, :, :2] = crops[step * i].to_image(kps[:, :2])
        keypoints[i, :, 2] = kps[:, 2]
    scores = np.asarray(det_scores, np.float32) * keypoints[:, :, 2].mean(axis=1)
    boxes = np.array(
        [
            c.box_xyxy if isinstance(c, PersonCrop) else _keypoint_extent(k)
            for c, k in zip(crops[::step], keypoints, strict=True)
        ],
        np.float32,
    ).reshape(-1, 4)
    order = np.argsort(-scores, kind="stable")
    return Persons(keypoints=keypoints[order], boxes_xyxy=boxes[order], scores=scores[order])


def _keypoint_extent(keypoints: np.ndarray) -> np.ndarray:
    """(17, 3) image-px keypoints -> (4,) x1, y1, x2, y2 around those scoring >= BBOX_MIN_KPT_SCORE
    (all 17 when fewer than 2 do)."""
    confident = keypoints[keypoints[:, 2] >= BBOX_MIN_KPT_SCORE]
    points = confident[:, :2] if len(confident) >= 2 else keypoints[:, :2]
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def run_topdown(
    detector: Detector,
    det_session: SessionRunner,
    pose: CropPose,
    pose_session: SessionRunner,
    image_rgb: np.ndarray,
    *,
    flip_test: bool = False,
    padding: float = 1.25,
) -> Persons:
    """Persons in one (H, W, 3) uint8 RGB image: one detector run, one batched pose run over all crops.

    The sequential reference of the cascade (tests, evaluation, benchmarks); the service batches
    the same pieces across frames instead. The sessions' output names must be the models' own
    ``output_names`` in order (ValueError otherwise).
    """
    _check_outputs(detector.name, getattr(detector, "output_names", det_session.output_names), det_session)
    _check_outputs(pose.name, getattr(pose, "output_names", pose_session.output_names), pose_session)
    row, geometry = detector.preprocess(image_rgb)
    det_outputs = [o[0] for o in det_session.run(row[None])]
    boxes_xyxy, det_scores = detector.postprocess(det_outputs, geometry)
    if len(det_scores) == 0:
        return Persons.empty()
    rows, crops = make_crops(image_rgb, boxes_xyxy, pose, padding=padding, flip_test=flip_test)
    pose_outputs = pose_session.run(np.stack(rows))
    keypoints_crop = [pose.postprocess_crop([o[i] for o in pose_outputs]) for i in range(len(rows))]
    return assemble(keypoints_crop, crops, det_scores, flip_test=flip_test, crop_w=pose.crop_wh[0])
