"""Tracking on real clips with the real default model, and a real stream through the app.

- `test_tracker_beats_matching_by_index_on_real_clips`: a short `loadtest.tracking_report` run
  (movenet-multipose on 150 frames of the basketball clip and the 72 of the two-people room clip,
  at most 426 px wide): the tracker switches fewer ids than frame-by-frame matching by index, and
  smoothing (One-Euro at the subscription defaults) lowers the jitter of near-static persons.
- `test_a_real_stream_carries_track_ids_and_keeps_no_pixels`: a file:// camera through the app (real
  reader, batcher, workers and backend, single-stage and top-down) in skeleton-only mode: persons
  carry track ids after a `born` event, and weak references show that no frame's pixels, nor the
  model input made from them, survive the frame's result.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from loadtest import tracking_report
from service.api import create_app
from service.api.deps import Services
from service.backends import LoadedBackend, Prepared
from service.config import Settings, StreamSettings
from service.streams import manager as stream_manager
from service.streams.reader import Frame

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)


def test_tracker_beats_matching_by_index_on_real_clips(shared_root: Path, model_dir: Path) -> None:
    videos = shared_root / "data" / "videos"
    figures = []
    for clip, frames in (("mmaction2_basketball.mp4", 150), ("mmaction2_two_people_room.mp4", 72)):
        figures += tracking_report.report(videos, model_dir, clips=(clip,), max_frames=frames, max_side=426)
    for f in figures:
        logger.info("%s", f)
    assert sum(f.links for f in figures) > 100  # enough unambiguous links to judge by
    assert sum(f.switches_tracker for f in figures) < sum(f.switches_by_index for f in figures)
    assert sum(f.switches_tracker for f in figures) <= 0.02 * sum(f.links for f in figures)
    for f in figures:
        assert 1 <= f.track_ids <= 2 * max(f.persons_per_frame, 1) + 2, f  # no flood of new ids
        assert f.jitter_samples > 20 and f.jitter_raw_px is not None and f.jitter_smoothed_px is not None, f
        assert f.jitter_smoothed_px < 0.8 * f.jitter_raw_px, f


@pytest.mark.parametrize("backend", ["movenet-multipose", "topdown-movenet"])
def test_a_real_stream_carries_track_ids_and_keeps_no_pixels(
    backend: str, shared_root: Path, topdown_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = shared_root / "data" / "videos" / "mmaction2_two_people_room.mp4"
    refs: dict[int, list[weakref.ref[Any]]] = {}
    original = stream_manager._prepare_bgr

    def recording_prepare(loaded: LoadedBackend, frame: Frame) -> Prepared:
        # the pixels as prepare reads them: a stream deleted meanwhile releases the frame, and the
        # empty array it then holds is a module-wide constant that never dies
        image = frame.image_bgr
        prepared = original(loaded, frame)
        arrays = [image, prepared.tensor, prepared.image_rgb]
        refs[frame.seq] = [weakref.ref(a) for a in arrays if a is not None and a.size]
        return prepared

    monkeypatch.setattr(stream_manager, "_prepare_bgr", recording_prepare)
    settings = Settings(
        model_dir=topdown_models,
        streams=StreamSettings(allow_file=True, skeleton_only=True, frame_max_age_ms=5000),
    )

    async def scenario() -> tuple[list[dict[str, Any]], dict[int, bool], int]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            svc: Services = app.state.services
            stream = await svc.streams.create(
                f"file://{clip}", name="room", backend=backend, max_fps=8.0, skeleton_only=False
            )
            client = svc.streams.subscribe(stream.id)
            messages: list[dict[str, Any]] = []
            most_alive = 0  # earlier frames still referenced at a result (a worker thread not yet moved on)
            deadline = time.monotonic() + 120.0
            while sum("persons" in m for m in messages) < 12:
                text = await asyncio.wait_for(client.get(), max(deadline - time.monotonic(), 0.01))
                assert text is not None
                messages.append(json.loads(text))
                if "persons" in messages[-1]:
                    gc.collect()
                    seq = messages[-1]["seq"]
                    earlier = [s for s, rs in refs.items() if s < seq and any(r() is not None for r in rs)]
                    most_alive = max(most_alive, len(earlier))
            await svc.streams.delete(stream.id)  # `stream` stays referenced here, its reader too
            deadline = time.monotonic() + 10.0  # every frame, once the worker threads have moved on
            while time.monotonic() < deadline:
                gc.collect()
                alive = {s: any(r() is not None for r in rs) for s, rs in refs.items()}
                if not any(alive.values()):
                    break
                await asyncio.sleep(0.05)
            assert stream.skeleton_only  # forced by the server setting
            return messages, alive, most_alive

    messages, alive, most_alive = asyncio.run(scenario())
    frames = [m for m in messages if "persons" in m]
    born = [m for m in messages if m.get("event") == "track" and m["change"] == "born"]
    assert born, [m.get("event") for m in messages]
    first_id = messages.index(born[0])
    ids = {p["track_id"] for m in messages[first_id:] if "persons" in m for p in m["persons"]} - {None}
    assert ids and ids <= {e["track_id"] for e in born}
    assert all(p["track_id"] is None for m in messages[:first_id] if "persons" in m for p in m["persons"])
    assert len(alive) >= len(frames) and not any(alive.values()), alive
    assert most_alive <= 2  # nothing accumulates while the stream runs
