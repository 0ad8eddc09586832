"""JPEG decoding at a reduced DCT scale (`decode_image_reduced`) and the letterbox that maps a model
input of the reduced image straight to the full-size image's pixels (`Letterbox.of_full_size`)."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from models.transforms import letterbox
from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from service.imaging import decode_image, decode_image_reduced
from tests.support import image_mutants, sample_images, sample_jpeg

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]

MAX_PIXELS = 40_000_000


def photo_jpeg(width: int, height: int) -> bytes:
    bgr = cv2.imdecode(np.frombuffer(sample_jpeg(max(width, height)), np.uint8), cv2.IMREAD_COLOR)
    bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return bytes(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])[1])


@pytest.mark.parametrize(
    ("long_side", "decoded_wh"),
    [(None, (1920, 1080)), (1000, (1920, 1080)), (960, (960, 540)), (768, (960, 540)), (400, (480, 270))],
)
def test_a_large_jpeg_decodes_at_the_smallest_scale_keeping_the_long_side(
    long_side: int | None, decoded_wh: tuple[int, int]
) -> None:
    data = photo_jpeg(1920, 1080)
    rgb, full_wh = decode_image_reduced(data, max_pixels=MAX_PIXELS, long_side=long_side)
    assert full_wh == (1920, 1080) and (rgb.shape[1], rgb.shape[0]) == decoded_wh and rgb.dtype == np.uint8
    full = decode_image(data, max_pixels=MAX_PIXELS)
    same_size = cv2.resize(full, decoded_wh, interpolation=cv2.INTER_AREA)
    assert np.abs(rgb.astype(np.int16) - same_size).mean() < 3.0  # the same picture, averaged down


def test_other_formats_and_exif_rotation() -> None:
    images = sample_images(max_side=640)
    png, (png_wh) = decode_image_reduced(images["png"][1], max_pixels=MAX_PIXELS, long_side=64)
    assert (png.shape[1], png.shape[0]) == png_wh  # only JPEGs are decoded reduced
    upright, full_wh = decode_image_reduced(images["jpeg-progressive-exif"][1], max_pixels=MAX_PIXELS, long_side=100)
    full = decode_image(images["jpeg-progressive-exif"][1], max_pixels=MAX_PIXELS)
    assert full_wh == (full.shape[1], full.shape[0])  # EXIF orientation 6: the upright full size
    assert upright.shape[0] < full.shape[0] and upright.shape[0] > upright.shape[1] == full.shape[1] // 4


def test_mutated_images_still_decode_or_raise_typed_errors() -> None:
    typed = (InvalidImageError, ImageTooLargeError, UnsupportedMediaTypeError)
    outcomes: Counter[str] = Counter()
    for mutant in image_mutants(700, 3, sample_images(max_side=256)):
        try:
            rgb, (w, h) = decode_image_reduced(mutant.body, max_pixels=MAX_PIXELS, long_side=64)
        except typed as exc:
            outcomes[exc.code] += 1
            continue
        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and 0 < rgb.shape[0] <= max(w, h), mutant.kind
        outcomes["decoded"] += 1
    assert outcomes["decoded"] > 0 and sum(outcomes.values()) == 700


def test_letterbox_of_the_reduced_image_maps_to_full_size_pixels() -> None:
    full = np.zeros((1080, 1920, 3), np.uint8)
    reduced = np.zeros((270, 480, 3), np.uint8)  # 1/4
    _, direct = letterbox(full, 384)
    _, via_reduced = letterbox(reduced, 384)
    mapped = via_reduced.of_full_size((1920, 1080))
    assert mapped.image_wh == (1920, 1080)
    points = np.array([[0.0, 0.0], [100.5, 50.25], [383.0, 215.0]], np.float32)
    np.testing.assert_allclose(mapped.to_image(points), direct.to_image(points), atol=1e-3)
    boxes = np.array([[10.0, 20.0, 200.0, 210.0]], np.float32)
    np.testing.assert_allclose(mapped.boxes_to_image(boxes), direct.boxes_to_image(boxes), atol=1e-3)
