"""Inference threads run below the event loop's CPU priority (Linux nice, which is per thread).

When inference saturates every core, the event loop still gets the CPU first, so refusals
(`503`, `429`), health checks and WebSocket fan-out answer in milliseconds instead of queueing
behind the model. Threads inherit the nice value of the thread that starts them, so sessions are
created in a lowered thread: the ONNX Runtime pool threads they start are lowered too. Raising a
nice value needs no privilege; where it is not supported nothing changes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["lower_this_thread", "run_lowered"]

T = TypeVar("T")
MAX_NICE = 19


def lower_this_thread(increment: int) -> None:
    """Lower the calling thread's priority by `increment` nice levels (at most to 19)."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + increment))


def run_lowered(function: Callable[[], T], increment: int, timeout_s: float = 600.0) -> T:
    """`function()` in a new thread lowered by `increment`: what it starts inherits the priority.

    Its exception is raised here; TimeoutError when it takes longer than `timeout_s`.
    """
    if increment <= 0:
        return function()
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        lower_this_thread(increment)
        try:
            result.append(function())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="lowered-start", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"not done within {timeout_s:g} s")
    if error:
        raise error[0]
    return result[0]
