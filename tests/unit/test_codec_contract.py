"""Every codec answers through the one contract: ``decode(outputs) -> Decoded`` in input pixels,
and each trained representation round-trips through it (encode -> decode gives the keypoints)."""

from __future__ import annotations

import numpy as np
import pytest

from models.codecs.base import Decoded
from models.codecs.blazepose import BlazePoseCodec
from models.codecs.erpose import ERPoseCodec, anchor_grid, encode_offsets
from models.codecs.heatmap import HeatmapCodec
from models.codecs.movenet import MultiPoseCodec, SinglePoseCodec
from models.codecs.nanodet import NanoDetCodec
from models.codecs.simcc import SimCCCodec

pytestmark = pytest.mark.unit

K = 17
RNG = np.random.default_rng(0)


def keypoints_inside(w: int, h: int, margin: float = 20.0) -> np.ndarray:
    return np.stack([RNG.uniform(margin, w - margin, K), RNG.uniform(margin, h - margin, K)], axis=1)


def check_shapes(decoded: Decoded, n: int, k: int) -> None:
    assert isinstance(decoded, Decoded) and len(decoded) == n
    assert decoded.keypoints.shape == (n, k, 3) and decoded.keypoints.dtype == np.float32
    assert decoded.boxes_xyxy.shape == (n, 4) and decoded.scores.shape == (n,)


def test_simcc_round_trip_through_the_contract() -> None:
    codec = SimCCCodec((192, 256), split_ratio=2.0, sigma=6.0)
    kps = keypoints_inside(192, 256)
    tx, ty, _ = codec.encode(kps, np.ones(K))
    decoded = codec.decode([codec.temperature * np.log(tx + 1e-12), codec.temperature * np.log(ty + 1e-12)])
    check_shapes(decoded, 1, K)
    np.testing.assert_allclose(decoded.keypoints[0, :, :2], kps, atol=0.05)
    assert (decoded.keypoints[0, :, 2] > 0.9).all()
    lo, hi = decoded.boxes_xyxy[0, :2], decoded.boxes_xyxy[0, 2:]
    np.testing.assert_allclose(lo, kps.min(axis=0), atol=0.05)
    np.testing.assert_allclose(hi, kps.max(axis=0), atol=0.05)


def test_heatmap_round_trip_through_the_contract() -> None:
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2.0)
    kps = keypoints_inside(192, 256)
    heatmaps, _ = codec.encode(kps, np.ones(K))
    decoded = codec.decode([heatmaps])
    check_shapes(decoded, 1, K)
    np.testing.assert_allclose(decoded.keypoints[0, :, :2], kps, atol=0.3)
    assert decoded.scores[0] == pytest.approx(decoded.keypoints[0, :, 2].mean())


def test_erpose_round_trip_through_the_contract() -> None:
    size, strides = 64, (16, 32)
    points, anchor_strides = anchor_grid(size, strides)
    raw = np.full((len(points), 1 + 3 * K), -8.0, np.float32)
    kps = keypoints_inside(size, size, margin=4.0).astype(np.float32)
    raw[3, 0], raw[3, 1 + 2 * K :] = 2.0, 6.0
    raw[3, 1 : 1 + 2 * K] = encode_offsets(kps[None], points[[3]], anchor_strides[[3]]).reshape(-1)
    decoded = ERPoseCodec(size, strides).decode([raw])
    check_shapes(decoded, 1, K)
    np.testing.assert_allclose(decoded.keypoints[0, :, :2], kps, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of 32"):
        ERPoseCodec(100, strides)


def test_box_and_single_person_codecs_share_the_shapes() -> None:
    # MoveNet heads with no centre peak: no person, but the contract's shapes
    h = w = 8
    heads = [np.full((c, h, w), -10.0, np.float32) for c in (1, K, 2 * K, 2 * K, 2, 2)]
    check_shapes(MultiPoseCodec(min_score=0.5).decode(heads), 0, K)
    single = [np.zeros((h, w, 1), np.float32), np.full((K, h, w), 0.5, np.float32)]
    single += [np.zeros((2 * K, h, w), np.float32)] * 2
    check_shapes(SinglePoseCodec().decode(single), 1, K)
    landmarks = np.zeros(39 * 5, np.float32)
    unused = np.zeros(0, np.float32)  # heatmap, world landmarks, segmentation: not decoded
    blaze = BlazePoseCodec().decode([np.array([0.8], np.float32), unused, unused, landmarks, unused])
    check_shapes(blaze, 1, K)
    np.testing.assert_allclose(blaze.keypoints[0, :, 2], 0.5 * 0.8, rtol=1e-5)  # sigmoid(0) x flag
    cells = [(416 // s) ** 2 for s in (8, 16, 32)]
    boxes = NanoDetCodec((416, 416), score_threshold=0.3, iou_threshold=0.6, max_persons=5).decode(
        [np.zeros((c, 80), np.float32) for c in cells] + [np.zeros((c, 44), np.float32) for c in cells]
    )
    check_shapes(boxes, 0, 0)
