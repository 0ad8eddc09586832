"""Top-down glue and codecs without a model: crops round-trip, flip test, empty input, BlazePose
33 -> COCO-17 mapping, NanoDet decoding of hand-made heads."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from models.codecs import blazepose, nanodet
from models.pipelines import build, topdown
from models.pipelines.base import PipelineOptions
from models.registry import BACKENDS, DETECTORS, MODELS
from models.transforms import Letterbox, flip_keypoints, letterbox

pytestmark = pytest.mark.unit

RNG_SEED = 0


class OutputNames:
    """The part of a codec that `run_topdown` checks sessions against."""

    def __init__(self, *names: str) -> None:
        self.output_names = names


class FakePose:
    """A crop pose model whose rows are the crops themselves (uint8, untouched)."""

    name = "fake-pose"
    crop_wh = (192, 256)
    codec = OutputNames("keypoints")

    def preprocess_crop(self, crop_rgb: np.ndarray) -> np.ndarray:
        return crop_rgb

    def postprocess_crop(self, outputs: list[np.ndarray]) -> np.ndarray:
        return outputs[0]


def random_image(h: int = 480, w: int = 640) -> np.ndarray:
    return np.random.default_rng(RNG_SEED).integers(0, 255, (h, w, 3), dtype=np.uint8)


BOXES_XYXY = np.array([[100, 50, 260, 400], [400, 200, 520, 330], [-20, 300, 90, 470]], np.float32)
DET_SCORES = np.array([0.5, 0.9, 0.7], np.float32)


def keypoints_in_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(B, 17, 3) image-px keypoints spread inside each box, scores in (0, 1)."""
    rng = np.random.default_rng(RNG_SEED)
    lo, hi = boxes_xyxy[:, None, :2], boxes_xyxy[:, None, 2:]
    xy = lo + rng.uniform(0, 1, (len(boxes_xyxy), 17, 2)) * (hi - lo)
    scores = rng.uniform(0.2, 1.0, (len(boxes_xyxy), 17, 1))
    return np.concatenate([xy, scores], axis=-1).astype(np.float32)


def test_make_crops_and_assemble_round_trip() -> None:
    pose = FakePose()
    rows, crops = topdown.make_crops(random_image(), BOXES_XYXY, pose, padding=1.25)
    assert len(rows) == len(crops) == len(BOXES_XYXY)
    assert all(r.shape == (256, 192, 3) for r in rows)
    truth = keypoints_in_boxes(BOXES_XYXY)
    keypoints_crop = []
    for kps, crop in zip(truth, crops, strict=True):
        in_crop = kps.copy()
        in_crop[:, :2] = crop.to_crop(kps[:, :2])
        assert (in_crop[:, :2] >= -0.5).all() and (in_crop[:, 0] <= 191.5).all()  # boxes fit their crops
        keypoints_crop.append(in_crop)

    persons = topdown.assemble(keypoints_crop, crops, DET_SCORES, flip_test=False, crop_w=192)

    expected_scores = DET_SCORES * truth[:, :, 2].mean(axis=1)
    order = np.argsort(-expected_scores)
    assert np.abs(persons.keypoints[:, :, :2] - truth[order, :, :2]).max() < 0.5
    np.testing.assert_allclose(persons.scores, expected_scores[order], rtol=1e-5)
    np.testing.assert_allclose(persons.boxes_xyxy, BOXES_XYXY[order])  # the detector boxes


def test_crop_pixels_follow_the_crop_mapping() -> None:
    """A bright dot in the image shows up in the crop where ``to_crop`` puts it."""
    image = np.zeros((480, 640, 3), np.uint8)
    image[199:202, 299:302] = 255  # centred on (300, 200)
    rows, crops = topdown.make_crops(image, np.array([[250, 100, 350, 330]]), FakePose())
    crop = rows[0][..., 0].astype(np.float64)
    ys, xs = np.nonzero(crop > 20)
    w = crop[ys, xs]
    centroid = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    expected = crops[0].to_crop(np.array([300.0, 200.0], np.float32))
    assert np.abs(centroid - expected).max() < 0.5


def test_flip_test_pairs_average_back_to_the_original() -> None:
    """A model that sees the mirror image returns mirrored keypoints; un-flipped they agree."""
    image = random_image()
    pose = FakePose()
    rows, crops = topdown.make_crops(image, BOXES_XYXY, pose, flip_test=True)
    assert len(rows) == len(crops) == 2 * len(BOXES_XYXY)
    for i in range(len(BOXES_XYXY)):
        np.testing.assert_array_equal(rows[2 * i + 1], rows[2 * i][:, ::-1])
        assert crops[2 * i] == crops[2 * i + 1]

    truth = keypoints_in_boxes(BOXES_XYXY)
    keypoints_crop = []
    for kps, crop in zip(truth, crops[::2], strict=True):
        in_crop = kps.copy()
        in_crop[:, :2] = crop.to_crop(kps[:, :2])
        keypoints_crop += [in_crop, flip_keypoints(in_crop, 192)]  # what the mirrored row yields

    flipped = topdown.assemble(keypoints_crop, crops, DET_SCORES, flip_test=True, crop_w=192)
    plain = topdown.assemble(keypoints_crop[::2], crops[::2], DET_SCORES, flip_test=False, crop_w=192)
    np.testing.assert_allclose(flipped.keypoints, plain.keypoints, atol=1e-3)
    np.testing.assert_allclose(flipped.scores, plain.scores, rtol=1e-6)


def test_flip_test_averages_a_disagreeing_pair() -> None:
    _, crops = topdown.make_crops(random_image(), BOXES_XYXY[:1], FakePose(), flip_test=True)
    a = np.zeros((17, 3), np.float32)
    a[:, 0], a[:, 1], a[:, 2] = 100.0, 120.0, 0.8
    b = flip_keypoints(a, 192)
    b[:, 0] = 191 - 110.0  # the mirrored row puts every joint at x = 110 once un-flipped
    b[:, 2] = 0.4
    persons = topdown.assemble([a, b], crops, DET_SCORES[:1], flip_test=True, crop_w=192)
    expected = crops[0].to_image(np.array([105.0, 120.0], np.float32))
    np.testing.assert_allclose(persons.keypoints[0, :, :2], np.broadcast_to(expected, (17, 2)), atol=1e-3)
    np.testing.assert_allclose(persons.keypoints[0, :, 2], 0.6, atol=1e-6)


def test_zero_boxes_give_empty_persons() -> None:
    rows, crops = topdown.make_crops(random_image(), np.zeros((0, 4), np.float32), FakePose(), flip_test=True)
    assert rows == [] and crops == []
    persons = topdown.assemble([], [], np.zeros((0,), np.float32), flip_test=True, crop_w=192)
    assert len(persons) == 0
    assert persons.keypoints.shape == (0, 17, 3) and persons.boxes_xyxy.shape == (0, 4)


def test_assemble_rejects_misaligned_rows() -> None:
    _, crops = topdown.make_crops(random_image(), BOXES_XYXY, FakePose())
    with pytest.raises(ValueError, match="keypoint rows"):
        topdown.assemble([np.zeros((17, 3))] * 2, crops, DET_SCORES, flip_test=False, crop_w=192)


class FakeSession:
    """Returns canned outputs (a batch of them) and counts the rows it was given."""

    def __init__(self, output_names: list[str], make: Callable[[np.ndarray], list[np.ndarray]]) -> None:
        self.output_names = output_names
        self.make = make
        self.batches: list[int] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.batches.append(len(batch))
        return self.make(batch)


class FakeDetector:
    name = "fake-detector"
    input_size = 64
    codec = OutputNames("boxes", "scores")

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(image_rgb, self.input_size)

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        return outputs[0], outputs[1]


def test_run_topdown_one_detector_run_one_pose_batch() -> None:
    detector = FakeDetector()
    det_session = FakeSession(["boxes", "scores"], lambda b: [BOXES_XYXY[None], DET_SCORES[None]])
    centre = np.array([95.5, 127.5, 1.0], np.float32)  # every keypoint at the crop centre, score 1
    pose_session = FakeSession(["keypoints"], lambda b: [np.broadcast_to(centre, (len(b), 17, 3))])

    persons = topdown.run_topdown(detector, det_session, FakePose(), pose_session, random_image(), flip_test=True)

    assert det_session.batches == [1] and pose_session.batches == [2 * len(BOXES_XYXY)]
    order = np.argsort(-DET_SCORES)
    np.testing.assert_allclose(persons.scores, DET_SCORES[order])
    centres = (BOXES_XYXY[order, :2] + BOXES_XYXY[order, 2:]) / 2
    np.testing.assert_allclose(persons.keypoints[:, 0, :2], centres, atol=0.5)


def test_run_topdown_checks_output_order() -> None:
    det_session = FakeSession(["scores", "boxes"], lambda b: [])
    with pytest.raises(ValueError, match="session outputs"):
        topdown.run_topdown(FakeDetector(), det_session, FakePose(), det_session, random_image())


def test_run_topdown_without_people_is_empty() -> None:
    det_session = FakeSession(["boxes", "scores"], lambda b: [np.zeros((1, 0, 4)), np.zeros((1, 0))])
    pose_session = FakeSession(["keypoints"], lambda b: [])
    persons = topdown.run_topdown(FakeDetector(), det_session, FakePose(), pose_session, random_image())
    assert len(persons) == 0 and pose_session.batches == []


# ---- BlazePose ------------------------------------------------------------------------------------


def test_blazepose_33_to_coco17_mapping() -> None:
    marks = np.zeros((blazepose.NUM_LANDMARKS, 5), np.float32)
    marks[:, 0] = np.arange(blazepose.NUM_LANDMARKS) * 10.0  # x = 10 x landmark index
    marks[:, 1] = 1000.0 + np.arange(blazepose.NUM_LANDMARKS)  # y = 1000 + landmark index
    marks[:, 3] = np.linspace(-3, 3, blazepose.NUM_LANDMARKS)  # visibility logits
    marks[:, 4] = 5.0

    kps = blazepose.decode_coco17(marks.reshape(-1), np.array([0.5], np.float32))

    expected_index = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]
    assert kps.shape == (17, 3)
    np.testing.assert_allclose(kps[:, 0], np.array(expected_index) * 10.0)
    np.testing.assert_allclose(kps[:, 1], 1000.0 + np.array(expected_index))
    sigmoid = 1 / (1 + np.exp(-marks[expected_index, 3]))
    np.testing.assert_allclose(kps[:, 2], 0.5 * sigmoid, rtol=1e-5)


def test_blazepose_without_pose_flag_scores_visibility() -> None:
    marks = np.zeros((39, 5), np.float32)
    marks[:, 3] = 2.0
    kps = blazepose.decode_coco17(marks)
    np.testing.assert_allclose(kps[:, 2], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    with pytest.raises(ValueError, match="195"):
        blazepose.decode_coco17(np.zeros(33 * 5))


# ---- NanoDet --------------------------------------------------------------------------------------

INPUT = 416
BACKGROUND_SCORE = 0.01


def nanodet_heads(cells: dict[tuple[int, int, int], tuple[float, int, tuple[int, ...]]]) -> list[np.ndarray]:
    """Heads for one image: ``{(stride, gy, gx): (person score, class, bins l, t, r, b)}``."""
    cls_heads, reg_heads = [], []
    for stride in nanodet.STRIDES:
        g = INPUT // stride
        cls = np.full((g * g, nanodet.NUM_CLASSES), BACKGROUND_SCORE, np.float32)
        reg = np.zeros((g * g, 4, nanodet.REG_MAX + 1), np.float32)
        for (s, gy, gx), (score, klass, bins) in cells.items():
            if s != stride:
                continue
            cls[gy * g + gx, klass] = score
            for side, b in enumerate(bins):
                reg[gy * g + gx, side, b] = 40.0  # a one-hot distribution after the softmax
        cls_heads.append(cls)
        reg_heads.append(reg.reshape(g * g, -1))
    return cls_heads + reg_heads


def test_nanodet_box_lands_where_expected() -> None:
    heads = nanodet_heads(
        {
            (16, 5, 10): (0.9, 0, (3, 2, 4, 5)),  # centre (10.5, 5.5) x 16 = (168, 88)
            (16, 5, 11): (0.6, 0, (4, 2, 3, 5)),  # the same box from the next cell: suppressed
            (8, 40, 40): (0.95, 3, (1, 1, 1, 1)),  # not a person (class 3)
            (32, 1, 1): (0.5, 0, (1, 1, 1, 1)),  # a second person, centre (48, 48)
        }
    )
    boxes, scores = nanodet.decode_persons(heads, input_wh=(INPUT, INPUT), score_threshold=0.3, iou_threshold=0.6)
    np.testing.assert_allclose(scores, [0.9, 0.5])
    np.testing.assert_allclose(boxes[0], [168 - 48, 88 - 32, 168 + 64, 88 + 80], atol=1e-3)
    np.testing.assert_allclose(boxes[1], [16, 16, 80, 80], atol=1e-3)


def test_nanodet_expected_distance_between_bins() -> None:
    heads = nanodet_heads({(8, 10, 10): (0.8, 0, (2, 2, 2, 2))})
    reg = heads[3].reshape(-1, 4, nanodet.REG_MAX + 1)
    reg[10 * 52 + 10, 0, 3] = 40.0  # left side: bins 2 and 3 equally likely -> 2.5 strides
    boxes, _ = nanodet.decode_persons(heads, input_wh=(INPUT, INPUT), score_threshold=0.3, iou_threshold=0.6)
    np.testing.assert_allclose(boxes[0], [84 - 20, 84 - 16, 84 + 16, 84 + 16], atol=1e-3)


def test_nanodet_logit_scores_and_thresholds() -> None:
    heads = nanodet_heads({(32, 6, 6): (0.0, 0, (1, 1, 1, 1))})
    for h in heads[:3]:
        h[:] = -8.0  # logits
    heads[2][6 * 13 + 6, 0] = 0.0  # sigmoid 0.5
    boxes, scores = nanodet.decode_persons(
        heads, input_wh=(INPUT, INPUT), score_threshold=0.3, iou_threshold=0.6, scores_are_logits=True
    )
    np.testing.assert_allclose(scores, [0.5])
    np.testing.assert_allclose(boxes, [[176, 176, 240, 240]], atol=1e-3)  # centre (6.5, 6.5) x 32
    empty_boxes, empty_scores = nanodet.decode_persons(
        heads, input_wh=(INPUT, INPUT), score_threshold=0.6, iou_threshold=0.6, scores_are_logits=True
    )
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


def test_nanodet_persons_maps_boxes_to_the_image() -> None:
    """A centred letterbox of an 832 x 416 image: scale 0.5, 104 px of padding on top."""
    detector = build.detector(MODELS["nanodet"], None, PipelineOptions())
    row, geometry = detector.preprocess(np.zeros((416, 832, 3), np.uint8))
    assert row.shape == (3, 416, 416) and row.dtype == np.float32
    heads = nanodet_heads({(16, 12, 10): (0.9, 0, (3, 2, 4, 5))})  # centre (168, 200) in the input
    boxes, scores = detector.postprocess(heads, geometry)
    input_box = np.array([168 - 48, 200 - 32, 168 + 64, 200 + 80], np.float32)
    expected = (input_box - [0, 104, 0, 104]) / 0.5
    np.testing.assert_allclose(boxes[0], expected, atol=1e-3)
    np.testing.assert_allclose(scores, [0.9])


def test_catalogue_builds_every_pretrained_pipeline() -> None:
    assert set(DETECTORS) == {"nanodet", "movenet-multipose"}
    for name, entry in DETECTORS.items():
        assert build.detector(entry, None, PipelineOptions()).name == name
    crop_poses = {e.name: build.crop_pose(e, None) for e in BACKENDS.values() if e.kind == "top-down" and e.pretrained}
    assert set(crop_poses) == {"movenet-thunder", "blazepose-heavy"}
    white = np.full((256, 256, 3), 255, np.uint8)
    thunder_row = crop_poses["movenet-thunder"].preprocess_crop(white)
    blaze_row = crop_poses["blazepose-heavy"].preprocess_crop(white)
    assert thunder_row.dtype == np.int32 and thunder_row.max() == 255
    assert blaze_row.dtype == np.float32 and blaze_row.max() == pytest.approx(1.0)
    single = build.single_stage(MODELS["movenet-multipose"], None, PipelineOptions(input_size=256))
    assert single.input_size == 256 and single.preprocess(white)[0].shape == (256, 256, 3)
    with pytest.raises(ValueError, match="multiple of 32"):
        build.single_stage(MODELS["movenet-multipose"], None, PipelineOptions(input_size=250))
