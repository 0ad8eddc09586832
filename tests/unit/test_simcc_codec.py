"""SimCC codec: targets are distributions and decode inverts encode to well under a quarter pixel."""

from __future__ import annotations

import numpy as np
import pytest

from models.codecs.simcc import SimCCCodec

pytestmark = pytest.mark.unit

INPUT_WH = (192, 256)


def _random_keypoints(rng: np.random.Generator, n: int, margin: float = 8.0) -> np.ndarray:
    w, h = INPUT_WH
    return np.stack([rng.uniform(margin, w - margin, n), rng.uniform(margin, h - margin, n)], axis=1)


def test_encode_shapes_and_normalisation() -> None:
    codec = SimCCCodec(INPUT_WH, split_ratio=2.0, sigma=6.0)
    kps = _random_keypoints(np.random.default_rng(0), 17)
    visible = np.ones(17)
    visible[3] = 0
    tx, ty, w = codec.encode(kps, visible)
    assert tx.shape == (17, 384) and ty.shape == (17, 512) and w.shape == (17,)
    assert tx.dtype == np.float32
    np.testing.assert_allclose(tx[w > 0].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ty[w > 0].sum(axis=1), 1.0, atol=1e-5)
    assert w[3] == 0 and not tx[3].any() and not ty[3].any()
    assert w.sum() == 16


def test_keypoint_far_outside_gets_zero_weight() -> None:
    codec = SimCCCodec(INPUT_WH)
    _, _, w = codec.encode(np.array([[-100.0, 10.0], [10.0, 900.0], [50.0, 60.0]]), np.ones(3))
    np.testing.assert_array_equal(w, [0, 0, 1])


@pytest.mark.parametrize("sigma", [3.0, 6.0, (4.9, 5.66)])
def test_round_trip_below_quarter_pixel(sigma: float | tuple[float, float]) -> None:
    codec = SimCCCodec(INPUT_WH, split_ratio=2.0, sigma=sigma)
    rng = np.random.default_rng(1)
    kps = _random_keypoints(rng, 4 * 17).reshape(4, 17, 2)
    targets = [codec.encode(k, np.ones(17)) for k in kps]
    tx = np.stack([t[0] for t in targets])
    ty = np.stack([t[1] for t in targets])
    # A perfectly trained network: softmax(logits / T) equals the target.
    decoded, scores = codec.decode_batch(codec.temperature * np.log(tx + 1e-12), codec.temperature * np.log(ty + 1e-12))
    assert decoded.shape == (4, 17, 2) and scores.shape == (4, 17)
    err = np.abs(decoded - kps).max()
    assert err < 0.25, err
    assert np.all(scores > 0.95)


def test_argmax_only_error_is_bounded_by_half_a_bin() -> None:
    codec = SimCCCodec(INPUT_WH, split_ratio=2.0)
    kps = _random_keypoints(np.random.default_rng(2), 17)
    tx, ty, _ = codec.encode(kps, np.ones(17))
    # Peaky one-hot logits defeat the parabola (flat neighbours): only the bin quantisation remains.
    onehot_x = np.where(tx == tx.max(axis=1, keepdims=True), 10.0, 0.0)[None]
    onehot_y = np.where(ty == ty.max(axis=1, keepdims=True), 10.0, 0.0)[None]
    decoded, _ = codec.decode_batch(onehot_x, onehot_y)
    assert np.abs(decoded[0] - kps).max() <= 0.25 + 1e-6


def test_flat_logits_score_low() -> None:
    codec = SimCCCodec(INPUT_WH)
    _, scores = codec.decode_batch(np.zeros((2, 17, 384)), np.zeros((2, 17, 512)))
    assert np.all(scores < 0.1)
