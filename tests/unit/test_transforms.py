"""Letterbox geometry: forward and inverse mappings agree with what cv2.resize does to pixels."""

from __future__ import annotations

import numpy as np
import pytest

from models.transforms import letterbox

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (333, 1000), (384, 384), (100, 50)])
def test_round_trip_is_exact(hw: tuple[int, int], center: bool) -> None:
    h, w = hw
    _, lb = letterbox(np.zeros((h, w, 3), np.uint8), 384, center=center)
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], [w - 1, h - 1], size=(50, 2)).astype(np.float32)
    back = lb.to_image(lb.to_input(pts))
    assert np.abs(back - pts).max() < 1e-3


@pytest.mark.parametrize("center", [False, True])
def test_bright_pixel_lands_where_mapping_says(center: bool) -> None:
    h, w = 480, 640
    img = np.zeros((h, w), np.float32)
    img[200:204, 300:304] = 1.0  # a 4x4 blob centred at (301.5, 201.5)
    canvas, lb = letterbox(img, 320, center=center)
    ys, xs = np.nonzero(canvas > 0.25)
    weights = canvas[ys, xs]
    centroid = np.array([(xs * weights).sum() / weights.sum(), (ys * weights).sum() / weights.sum()])
    expected = lb.to_input(np.array([301.5, 201.5], np.float32))
    assert np.abs(centroid - expected).max() < 0.3


def test_canvas_shape_padding_and_clipping() -> None:
    img = np.full((100, 200, 3), 255, np.uint8)
    canvas, lb = letterbox(img, 64, center=True)
    assert canvas.shape == (64, 64, 3)
    assert lb.pad_x == 0 and lb.pad_y == 16
    assert canvas[0].max() == 0 and canvas[63].max() == 0 and canvas[32].min() == 255
    # points in the padding map outside the image and are clipped to its border
    clipped = lb.to_image(np.array([[-10.0, 0.0], [100.0, 100.0]], np.float32))
    assert clipped.min() >= 0 and clipped[:, 0].max() <= 199 and clipped[:, 1].max() <= 99
