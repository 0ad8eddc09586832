"""Letterbox geometry: forward and inverse mappings agree with what cv2.resize does to pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.transforms import crop_box, flip_keypoints, letterbox, warp_crops

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
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((480, 640, 3), np.uint8), ((640, 480, 3), np.uint8), ((37, 91), np.float32), ((50, 20, 4), np.uint8)],
)
def test_canvas_is_the_resized_image_on_padding(shape: tuple[int, ...], dtype: type, center: bool) -> None:
    """The resize lands in the canvas in place: the same pixels as resizing then pasting."""
    image = np.random.default_rng(1).integers(0, 255, shape).astype(dtype)
    canvas, lb = letterbox(image, 96, center=center, pad_value=7)
    new_w, new_h = round(lb.scale_x * shape[1]), round(lb.scale_y * shape[0])
    expected = np.full((96, 96, *shape[2:]), 7, dtype)
    x0, y0 = int(lb.pad_x), int(lb.pad_y)
    expected[y0 : y0 + new_h, x0 : x0 + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(canvas, expected)


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


@pytest.mark.parametrize("box", [(10, 20, 110, 320), (300, 50, 500, 120), (0, 0, 5, 5)])
@pytest.mark.parametrize("out_wh", [(256, 256), (192, 256), (288, 384)])
def test_crop_round_trip_within_half_pixel(box: tuple[int, int, int, int], out_wh: tuple[int, int]) -> None:
    cb = crop_box(np.array(box, np.float32), out_wh)
    w, h = cb.size_wh
    assert w / h == pytest.approx(out_wh[0] / out_wh[1])
    assert w >= (box[2] - box[0]) * 1.25 - 1e-3 and h >= (box[3] - box[1]) * 1.25 - 1e-3
    pts = np.random.default_rng(3).uniform([box[0], box[1]], [box[2], box[3]], (40, 2)).astype(np.float32)
    assert np.abs(cb.to_image(cb.to_crop(pts)) - pts).max() < 0.5


def test_crop_pixels_match_mapping() -> None:
    img = np.zeros((480, 640, 1), np.float32)
    img[240:244, 400:404, 0] = 1.0  # blob centred at (401.5, 241.5)
    cb = crop_box(np.array([350, 150, 450, 350], np.float32), (192, 256))
    crop = warp_crops(img, [cb])[0, :, :, 0]
    ys, xs = np.nonzero(crop > 0.2)
    wts = crop[ys, xs]
    centroid = np.array([(xs * wts).sum() / wts.sum(), (ys * wts).sum() / wts.sum()])
    assert np.abs(centroid - cb.to_crop(np.array([401.5, 241.5], np.float32))).max() < 0.3
    # and back: the blob's crop position maps to its image position
    assert np.abs(cb.to_image(centroid.astype(np.float32)) - [401.5, 241.5]).max() < 0.5


def test_flip_swaps_left_and_right() -> None:
    kps = np.zeros((1, 17, 3), np.float32)
    kps[0, :, 0] = np.arange(17) * 10  # x
    kps[0, :, 2] = np.arange(17) / 17  # score tags the joint
    flipped = flip_keypoints(kps, width=256)
    # left shoulder (5) now holds what was the right shoulder (6), mirrored
    assert flipped[0, 5, 0] == 255 - 60 and flipped[0, 5, 2] == pytest.approx(6 / 17)
    assert flipped[0, 0, 0] == 255  # nose stays the nose
    assert np.allclose(flip_keypoints(flipped, 256), kps)


def test_box_edges_scale_about_the_corner() -> None:
    _, lb = letterbox(np.zeros((100, 200, 3), np.uint8), 64, center=True)
    # the whole image, as edges in input pixels, maps back onto the whole image
    full = np.array([[0.0, 16.0, 64.0, 48.0]], np.float32)
    assert np.allclose(lb.boxes_to_image(full), [[0, 0, 200, 100]], atol=1e-4)
    assert np.allclose(lb.boxes_to_image(np.array([[-5.0, 0.0, 80.0, 70.0]], np.float32)), [[0, 0, 200, 100]])
