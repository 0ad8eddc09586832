"""Heatmap codec: Gaussian targets at 1/4 resolution and DARK decoding to under half a pixel."""

from __future__ import annotations

import numpy as np
import pytest

from models.codecs.heatmap import HeatmapCodec

pytestmark = pytest.mark.unit

INPUT_WH = (192, 256)
HEATMAP_WH = (48, 64)


def _random_keypoints(rng: np.random.Generator, shape: tuple[int, ...], margin: float = 16.0) -> np.ndarray:
    w, h = INPUT_WH
    x = rng.uniform(margin, w - margin, shape)
    y = rng.uniform(margin, h - margin, shape)
    return np.stack([x, y], axis=-1)


def test_encode_shapes_peak_and_weights() -> None:
    codec = HeatmapCodec(INPUT_WH, HEATMAP_WH, sigma=2.0)
    kps = np.array([[40.0, 80.0], [100.0, 120.0], [-80.0, 10.0]])
    heatmaps, w = codec.encode(kps, np.array([2, 0, 1]))
    assert heatmaps.shape == (3, 64, 48) and heatmaps.dtype == np.float32
    np.testing.assert_array_equal(w, [1, 0, 0])
    assert heatmaps[0].max() == pytest.approx(1.0, abs=1e-6)  # 40/4, 80/4 lands on a pixel
    assert heatmaps[0, 20, 10] == heatmaps[0].max()
    assert not heatmaps[1].any() and not heatmaps[2].any()


def test_round_trip_with_dark_below_half_pixel() -> None:
    codec = HeatmapCodec(INPUT_WH, HEATMAP_WH, sigma=2.0, refine=True)
    kps = _random_keypoints(np.random.default_rng(0), (3, 17))
    heatmaps = np.stack([codec.encode(k, np.ones(17))[0] for k in kps])
    decoded, scores = codec.decode_batch(heatmaps)
    assert decoded.shape == (3, 17, 2) and scores.shape == (3, 17)
    err = np.abs(decoded - kps).max()
    assert err < 0.5, err
    assert np.all(scores > 0.85)


def test_refinement_beats_argmax() -> None:
    kps = _random_keypoints(np.random.default_rng(1), (2, 17))
    plain = HeatmapCodec(INPUT_WH, HEATMAP_WH, refine=False)
    dark = HeatmapCodec(INPUT_WH, HEATMAP_WH, refine=True)
    heatmaps = np.stack([plain.encode(k, np.ones(17))[0] for k in kps])
    err_plain = np.abs(plain.decode_batch(heatmaps)[0] - kps).mean()
    err_dark = np.abs(dark.decode_batch(heatmaps)[0] - kps).mean()
    assert err_dark < 0.25 * err_plain


def test_noisy_heatmaps_stay_close() -> None:
    codec = HeatmapCodec(INPUT_WH, HEATMAP_WH, sigma=2.0)
    rng = np.random.default_rng(2)
    kps = _random_keypoints(rng, (1, 17))
    heatmaps = np.stack([codec.encode(k, np.ones(17))[0] for k in kps])
    noisy = heatmaps + rng.normal(0.0, 0.02, heatmaps.shape)
    decoded, _ = codec.decode_batch(noisy)
    assert np.abs(decoded - kps).max() < 2.0


def test_empty_heatmap_scores_zero() -> None:
    codec = HeatmapCodec(INPUT_WH, HEATMAP_WH)
    _, scores = codec.decode_batch(np.zeros((1, 17, 64, 48)))
    assert np.all(scores == 0)
