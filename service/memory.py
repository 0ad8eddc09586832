"""Keep the server's resident memory flat under load: few glibc malloc arenas, a fixed mmap threshold.

glibc gives threads that allocate concurrently their own malloc arenas (up to 8 per core). The
server allocates large, short-lived buffers on many threads (Pillow decodes, numpy letterboxes,
ONNX Runtime outputs), and memory freed into one arena is not reused by another, so RSS creeps up
with traffic. Measured on the CPU with 500 requests in process: default arenas +7 MiB (631 ->
638 MiB, still rising; a 30-minute soak climbed ~15 MiB a minute), two arenas flat (609 MiB after
100 and after 600 requests). `mallopt(M_ARENA_MAX)` must run before the worker threads start.

With cameras the main heap still grew (~11 MiB a minute, all of it in `[heap]`): glibc raises its
mmap threshold each time a large mmapped block is freed (camera frames are 0.9 MiB), after which
such blocks come from the heap, fragment it and are never returned. A fixed threshold keeps every
block above it in its own mapping, returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "keep_image_blocks", "limit_malloc_arenas"]

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at `count` and fix its mmap threshold at `MMAP_THRESHOLD_BYTES`;
    False (nothing changed) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    applied = bool(mallopt(M_ARENA_MAX, count)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not applied:
        logger.warning(
            "mallopt refused arenas=%d / mmap threshold=%d: memory may creep up", count, MMAP_THRESHOLD_BYTES
        )
    return applied


def keep_image_blocks(count: int) -> None:
    """Let Pillow keep `count` freed image blocks for its next decodes (it keeps none by default).

    Above `MMAP_THRESHOLD_BYTES` every decoded image (1.2 MB for a 640x480 RGB photo: Pillow stores
    4 bytes a pixel) is a new mapping whose pages fault in one by one; a kept block is reused as it
    is. What is kept is at most `count` blocks of Pillow's block size (16 MiB).
    """
    from PIL import Image

    Image.core.set_blocks_max(count)
