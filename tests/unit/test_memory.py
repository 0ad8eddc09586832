"""The server caps glibc's malloc arenas (its resident memory stays flat under load)."""

from __future__ import annotations

import platform

import pytest

from service.memory import limit_malloc_arenas

pytestmark = pytest.mark.unit


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's")
def test_glibc_accepts_the_arena_cap() -> None:
    assert limit_malloc_arenas(8) is True  # a cap of 8 changes nothing that matters in the test process
