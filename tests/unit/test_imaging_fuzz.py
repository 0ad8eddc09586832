"""Fuzz `decode_image` with seeded mutations of a real photo: it decodes, or raises a typed 4xx error.

The mutations (tests/support.py `image_mutants`) are deterministic: a fixed seed, the kinds in equal
turns (truncation, byte flips, random bodies behind valid magic bytes, lying dimensions and
lengths in PNG IHDR / JPEG SOF / BMP / WebP headers, spliced and filled spans), over JPEG, PNG,
WebP and BMP encodings of one photo from ../shared/data/pose_samples.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from service.imaging import decode_image
from tests.support import MUTATION_KINDS, Mutant, image_mutants, sample_images

# Pillow warns (and goes on) about the EXIF blocks the mutations broke; only exceptions matter here.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]

MAX_PIXELS = 40_000_000  # the service's default `max_image_pixels`
TYPED = (InvalidImageError, ImageTooLargeError, UnsupportedMediaTypeError)
ANSWERS = {"decoded", *(error.code for error in TYPED)}


def outcome(mutant: Mutant) -> str:
    """'decoded', the error code of a typed refusal, or 'UNTYPED ...' for anything else."""
    try:
        rgb = decode_image(mutant.body, max_pixels=MAX_PIXELS)
    except TYPED as exc:
        return exc.code
    except Exception as exc:  # what the fuzz is here to find
        return f"UNTYPED {type(exc).__name__}: {exc} ({mutant.kind} of {mutant.source})"
    h, w, c = rgb.shape
    if rgb.dtype != np.uint8 or c != 3 or not 0 < h * w <= MAX_PIXELS:
        return f"BAD ARRAY {rgb.dtype} {rgb.shape} ({mutant.kind} of {mutant.source})"
    return "decoded"


def test_seed_images_decode() -> None:
    decoded = {name: decode_image(body, max_pixels=MAX_PIXELS).shape for name, (_, body) in sample_images().items()}
    assert len(decoded) == 6
    upright = decoded.pop("jpeg-progressive-exif")  # EXIF orientation 6: shown rotated by 90 degrees
    assert set(decoded.values()) == {(upright[1], upright[0], 3)}


@pytest.mark.parametrize(
    ("count", "seed"),
    [pytest.param(2100, 1, id="2100"), pytest.param(30_000, 2, id="30000", marks=pytest.mark.slow)],
)
def test_mutated_images_decode_or_raise_typed_errors(count: int, seed: int) -> None:
    seeds = sample_images()
    mutants = image_mutants(count, seed, seeds)
    outcomes = Counter(outcome(m) for m in mutants)

    untyped = sorted(o for o in outcomes if o not in ANSWERS)
    assert untyped == [], f"{sum(outcomes[o] for o in untyped)} of {count}: {untyped[:20]}"
    assert sum(outcomes.values()) == count == len(mutants)
    # The generator reaches every kind, every encoding and every answer, or the fuzz is not testing
    # what it claims: good files must still decode and lying headers must be refused as too large.
    assert {m.kind for m in mutants} == set(MUTATION_KINDS)
    assert {m.source for m in mutants} == set(seeds)
    assert outcomes["decoded"] >= count // 10
    assert outcomes["invalid_image"] >= count // 4
    assert outcomes["too_large"] >= count // 50
