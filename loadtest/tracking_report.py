"""ID switches and keypoint jitter of the stream tracker on real clips (../shared/data/videos).

    python -m loadtest.tracking_report [--max-frames 300] [--max-side 640]

The default backend (movenet-multipose, from the weights store) runs on every frame of each clip
(downscaled so the longer side is at most `--max-side`); the persons then go through the same
`service.tracking.TrackingSession` the streams use, with the subscription defaults.

ID switches (no ground truth exists for these clips, so switches are counted on *unambiguous*
frame-to-frame links): a person in frame t and one in frame t+1 are linked when each is the
other's best OKS match, that OKS is >= 0.5 and the runner-up is at most half of it. A switch is a
link whose two persons carry different labels. Labels: the tracker's `track_id` (links where either
is still tentative are not counted), or frame-by-frame matching by index (a person's label is its
rank in the frame's score order, which is what a client gets without tracking).

Jitter: the session's jitter samples (mean frame-to-frame keypoint displacement, image pixels, of
persons whose box barely moves), with smoothing off and on (One-Euro at the defaults), timestamps
from the clip's frame rate.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from models import registry
from models.persons import Persons
from models.pipelines import build
from models.pipelines.base import PipelineOptions
from models.runtime import OrtModel
from models.weights import DEFAULT_MODEL_DIR, WeightsStore
from service.schemas import SmoothingOptions, TrackingOptions
from service.tracking.oks import oks_matrix
from service.tracking.one_euro import OneEuroConfig
from service.tracking.session import TrackingSession
from service.tracking.tracker import TrackerConfig

__all__ = ["CLIPS", "ClipFigures", "clip_figures", "detect", "id_switches"]

CLIPS = (
    "mmaction2_basketball.mp4",  # 2-3 people moving in a gym, 426x240, 10 s
    "mmaction2_two_people_room.mp4",  # 2 people standing, handing an object over
    "pose2sim_multi/cam01.mp4",  # one person balancing, one walking around (60 fps)
    "pose2sim_multi/cam02.mp4",
    "pose2sim_multi/cam03.mp4",
    "pose2sim_multi/cam04.mp4",
)
MIN_PERSON_SCORE = 0.2  # the server's default min_person_score
LINK_MIN_OKS = 0.5
LINK_MAX_RUNNER_UP = 0.5


@dataclass(frozen=True)
class ClipFigures:
    clip: str
    frames: int
    seconds: float
    persons_per_frame: float
    links: int
    """unambiguous frame-to-frame links"""
    switches_by_index: int
    switches_tracker: int
    switches_per_min_by_index: float
    switches_per_min_tracker: float
    track_ids: int
    """distinct confirmed track ids the tracker gave"""
    jitter_samples: int
    jitter_raw_px: float | None
    jitter_smoothed_px: float | None


def read_frames(path: Path, max_frames: int, max_side: int) -> tuple[list[np.ndarray], float]:
    """Up to `max_frames` (H, W, 3) uint8 RGB frames, longer side <= `max_side`, and the clip's fps."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames: list[np.ndarray] = []
    try:
        while len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            scale = max_side / max(bgr.shape[:2])
            if scale < 1:
                bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return frames, float(fps)


def detect(model_dir: Path, frames: Sequence[np.ndarray], threads: int = 2) -> list[Persons]:
    """movenet-multipose on each frame (batch 1), persons over the server's default min score."""
    store = WeightsStore(model_dir)
    stored = store.require("movenet-multipose")
    entry = registry.MODELS["movenet-multipose"]
    pipeline = build.single_stage(entry, stored.card, PipelineOptions())
    model = OrtModel(stored.path, providers=("cuda", "cpu"), intra_op_threads=threads)
    out = []
    for rgb in frames:
        tensor, geometry = pipeline.preprocess(rgb)
        outputs = model.run(tensor[None])
        out.append(pipeline.postprocess([o[0] for o in outputs], geometry).above(MIN_PERSON_SCORE))
    return out


def unambiguous_links(before: Persons, after: Persons) -> list[tuple[int, int]]:
    """(i, j): person i of `before` and j of `after` are mutual best OKS matches, clearly (see module doc)."""
    if len(before) == 0 or len(after) == 0:
        return []
    oks = np.nan_to_num(oks_matrix(before.keypoints, before.boxes_xyxy, after.keypoints, min_keypoint_score=0.3))
    links = []
    for i in range(len(before)):
        j = int(np.argmax(oks[i]))
        if int(np.argmax(oks[:, j])) != i or oks[i, j] < LINK_MIN_OKS:
            continue
        rivals = np.r_[np.delete(oks[i], j), np.delete(oks[:, j], i)]
        if rivals.size == 0 or rivals.max() <= LINK_MAX_RUNNER_UP * oks[i, j]:
            links.append((i, j))
    return links


def id_switches(persons: Sequence[Persons], labels: Sequence[Sequence[int | None]]) -> tuple[int, int]:
    """(links counted, switches): links whose two persons both have labels, and those labels differ."""
    counted = switches = 0
    for t in range(len(persons) - 1):
        for i, j in unambiguous_links(persons[t], persons[t + 1]):
            a, b = labels[t][i], labels[t + 1][j]
            if a is None or b is None:
                continue
            counted += 1
            switches += a != b
    return counted, switches


def _session(smoothing: bool) -> TrackingSession:
    tracking, sm = TrackingOptions(), SmoothingOptions()
    config = TrackerConfig(max_age_frames=tracking.max_age_frames, min_hits=tracking.min_hits)
    one_euro = OneEuroConfig(min_cutoff=sm.min_cutoff, beta=sm.beta, d_cutoff=sm.d_cutoff) if smoothing else None
    return TrackingSession(config, one_euro)


def clip_figures(clip: str, persons: Sequence[Persons], fps: float) -> ClipFigures:
    raw, smoothed = _session(False), _session(True)
    track_labels: list[list[int | None]] = []
    jitter: dict[str, list[float]] = {"raw": [], "smoothed": []}
    for t, p in enumerate(persons):
        update = raw.update(p.keypoints, p.boxes_xyxy, t / fps)
        track_labels.append(update.track_ids)
        jitter["raw"] += update.jitter_px
        jitter["smoothed"] += smoothed.update(p.keypoints, p.boxes_xyxy, t / fps).jitter_px
    index_labels: list[list[int | None]] = [list(range(len(p))) for p in persons]
    _, by_index = id_switches(persons, index_labels)
    links, by_tracker = id_switches(persons, track_labels)
    minutes = len(persons) / fps / 60.0
    return ClipFigures(
        clip=clip,
        frames=len(persons),
        seconds=round(len(persons) / fps, 2),
        persons_per_frame=round(float(np.mean([len(p) for p in persons])), 2) if persons else 0.0,
        links=links,
        switches_by_index=by_index,
        switches_tracker=by_tracker,
        switches_per_min_by_index=round(by_index / minutes, 1),
        switches_per_min_tracker=round(by_tracker / minutes, 1),
        track_ids=len({i for labels in track_labels for i in labels if i is not None}),
        jitter_samples=len(jitter["raw"]),
        jitter_raw_px=round(float(np.mean(jitter["raw"])), 3) if jitter["raw"] else None,
        jitter_smoothed_px=round(float(np.mean(jitter["smoothed"])), 3) if jitter["smoothed"] else None,
    )


def report(
    videos: Path, model_dir: Path, *, clips: Sequence[str] = CLIPS, max_frames: int = 300, max_side: int = 640
) -> list[ClipFigures]:
    out = []
    for clip in clips:
        frames, fps = read_frames(videos / clip, max_frames, max_side)
        out.append(clip_figures(clip, detect(model_dir, frames), fps))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="tracker ID switches and smoothing jitter on real clips")
    shared = Path(os.environ.get("POSESERVE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--videos", type=Path, default=shared / "data" / "videos")
    model_dir = Path(os.environ.get("POSESERVE_MODEL_DIR", DEFAULT_MODEL_DIR))
    parser.add_argument("--model-dir", type=Path, default=model_dir)
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--clips", default=",".join(CLIPS))
    args = parser.parse_args()
    figures = report(
        args.videos, args.model_dir, clips=args.clips.split(","), max_frames=args.max_frames, max_side=args.max_side
    )
    print(json.dumps([asdict(f) for f in figures], indent=1))


if __name__ == "__main__":
    main()
