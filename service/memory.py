"""Keep the server's resident memory flat under load: few glibc malloc arenas, a fixed mmap threshold.

glibc gives threads that allocate concurrently their own malloc arenas (up to 8 per core). The
server allocates large, short-lived buffers on many threads (Pillow decodes, numpy letterboxes,
ONNX Runtime outputs), and memory freed into one arena is not reused by another, so RSS creeps up
with traffic. Measured on the CPU with 500 requests in process: default arenas +7 MiB (631 ->
638 MiB, still rising; a 30-minute soak climbed ~15 MiB a minute), two arenas flat (609 MiB after
100 and after 600 requests). `mallopt(M_ARENA_MAX)` must run before the worker threads start.

With cameras the main heap still grew (~11 MiB a minute, all of it in `[heap]`): glibc raises its
mmap threshold each time a large mmapped block is freed, up to 32 MiB, after which blocks of any
size up to that come from the heap, fragment it and are never returned. A fixed threshold keeps
every block above it in its own mapping, returned to the system when freed.

The threshold is fixed at 4 MiB, above every per-image buffer of a model-sized image (a 640x480
photo decoded, 0.9 MiB; MultiPose's outputs at 384, 0.6 and 0.9 MiB; its input cast, 1.8 MiB), so
those come from the arenas and are reused, while a full-size decode of a large photo still gets a
mapping of its own. At 256 KiB each of them was a fresh mapping: about 1,000 page faults per
request at 8 clients, and each unmapping interrupts the other core's inference threads (TLB
shootdown); OpenVINO ran a lone 384x384 image 2 ms slower in the server than alone.

The trim threshold goes with it, at twice the mmap threshold (glibc's own rule when it moves the
threshold itself; a fixed one leaves trimming at 128 KiB): else the free memory at the top of a
heap is handed back after nearly every request and faults in again on the next. A 640x480 JPEG
decoded in a loop: 2.2 ms with the trim at 128 KiB, 1.25 ms at 8 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "keep_image_blocks", "limit_malloc_arenas"]

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def limit_malloc_arenas(count: int, mmap_threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Cap glibc's malloc arenas at `count` and fix its mmap threshold at `mmap_threshold` bytes
    (its trim threshold at twice that); False (nothing changed) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    applied = all(
        mallopt(option, value)
        for option, value in (
            (M_ARENA_MAX, count),
            (M_MMAP_THRESHOLD, mmap_threshold),
            (M_TRIM_THRESHOLD, 2 * mmap_threshold),
        )
    )
    if not applied:
        logger.warning("mallopt refused arenas=%d / mmap threshold=%d: memory may creep up", count, mmap_threshold)
    return applied


def keep_image_blocks(count: int) -> None:
    """Let Pillow keep `count` freed image blocks for its next decodes (it keeps none by default).

    Every decoded image is a new block (1.2 MB for a 640x480 RGB photo: Pillow stores 4 bytes a
    pixel), and one above the mmap threshold a new mapping whose pages fault in one by one; a kept
    block is reused as it is. What is kept is at most `count` blocks of Pillow's block size (16 MiB).
    """
    from PIL import Image

    Image.core.set_blocks_max(count)
