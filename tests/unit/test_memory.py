"""The server caps glibc's malloc arenas (its resident memory stays flat under load) and reuses its
largest per-image buffers (a fresh one is a new mapping whose pages fault in on every request)."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from models.runtime import CastBuffer
from service.memory import keep_image_blocks, limit_malloc_arenas

pytestmark = pytest.mark.unit


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's")
def test_glibc_accepts_the_arena_cap() -> None:
    assert limit_malloc_arenas(8) is True  # a cap of 8 changes nothing that matters in the test process


def test_pillow_keeps_the_blocks_it_is_told_to() -> None:
    from PIL import Image

    before = Image.core.get_blocks_max()
    try:
        keep_image_blocks(3)
        assert Image.core.get_blocks_max() == 3
    finally:
        Image.core.set_blocks_max(before)


def test_a_cast_buffer_reuses_one_array_per_shape_and_passes_its_own_dtype_through() -> None:
    cast = CastBuffer(np.int32)
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    first = cast(pixels)
    assert first.dtype == np.int32 and np.array_equal(first, pixels)
    again = cast(pixels[::-1] + 1)
    assert again is first and np.array_equal(again, pixels + 1)  # the same memory, new values
    assert cast(np.zeros((2, 2, 2, 3), np.uint8)).shape == (2, 2, 2, 3)  # a new shape: a new array
    own = np.zeros(3, np.int32)
    assert cast(own) is own
    assert CastBuffer(None)(pixels) is pixels  # a model of no known input type takes rows as they are
