"""Inference threads run below the caller's CPU priority, and so do the threads they start."""

from __future__ import annotations

import os
import threading

import pytest

from service.priority import lower_this_thread, run_lowered

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice needs Linux"),
]


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_lowered_thread_and_the_threads_it_starts_run_below_the_caller() -> None:
    caller = nice_of_this_thread()

    def start_a_child() -> tuple[int, int]:
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(nice_of_this_thread()))
        child.start()
        child.join(5)
        return nice_of_this_thread(), seen[0]

    own, child = run_lowered(start_a_child, 3)
    assert own == child == min(19, caller + 3)
    assert nice_of_this_thread() == caller  # the caller itself is untouched


def test_errors_come_back_and_zero_changes_nothing() -> None:
    with pytest.raises(ValueError, match="boom"):
        run_lowered(lambda: (_ for _ in ()).throw(ValueError("boom")), 2)
    caller = nice_of_this_thread()
    assert run_lowered(nice_of_this_thread, 0) == caller
    seen: list[int] = []

    def lowered_twice() -> None:
        lower_this_thread(30)  # clamped at 19
        seen.append(nice_of_this_thread())

    worker = threading.Thread(target=lowered_twice)
    worker.start()
    worker.join(5)
    assert seen == [19]


def test_the_app_decodes_images_below_the_event_loop(tmp_path: object) -> None:
    from service.api import create_app
    from service.config import Settings

    app = create_app(Settings(model_dir=tmp_path, batching={"worker_nice": 4}))  # type: ignore[arg-type]
    pool = app.state.services.decode_pool
    try:
        assert pool.submit(nice_of_this_thread).result(5) == min(19, nice_of_this_thread() + 4)
    finally:
        pool.shutdown()
