"""A per-stream multi-person tracker: stable integer track ids across frames.

Each `update` takes one frame's persons and matches them to the live tracks in two rounds of
Hungarian assignment (scipy `linear_sum_assignment`): first by OKS of the keypoints against each
track's predicted pose, then the tracks and persons left over by IoU of the boxes (the fallback for
persons with too few confident keypoints, or moving faster than OKS tolerates). A track's pose is
predicted by shifting its last pose by its velocity (image pixels per update, smoothed).

Life cycle (SORT-like): a person no track takes starts a *tentative* track; after `min_hits`
consecutive matches it is *confirmed*, gets the next integer id and a `born` event. A tentative
track that misses one update ends silently. A confirmed track survives up to `max_age_frames`
updates without a match, then ends with a `lost` event; a person who reappears later gets a new id.
Ages count updates (processed frames), not camera frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.tracking.oks import iou_matrix, oks_matrix

__all__ = ["Track", "TrackEvent", "Tracker", "TrackerConfig", "TrackerUpdate"]

_VELOCITY_SMOOTHING = 0.5
"""weight of the newest displacement in a track's velocity (exponential average)"""


@dataclass(frozen=True)
class TrackerConfig:
    max_age_frames: int = 30
    """updates a confirmed track survives unmatched before it is lost"""
    min_hits: int = 3
    """consecutive matches that confirm a track (1 = confirmed on its first frame)"""
    min_oks: float = 0.3
    """the least OKS that matches a person to a track"""
    min_iou: float = 0.3
    """the least box IoU that matches in the fallback round"""
    min_keypoint_score: float = 0.3
    """keypoints scored below this take no part in OKS"""


@dataclass(frozen=True)
class TrackEvent:
    change: Literal["born", "lost"]
    track_id: int


@dataclass
class Track:
    key: int
    """internal, unique per tracker (also for tentative tracks, which have no `track_id`)"""
    keypoints: np.ndarray
    """(17, 3) the last matched pose, image pixels"""
    box_xyxy: np.ndarray
    """(4,) the last matched box"""
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    """(2,) image pixels per update"""
    track_id: int | None = None
    hits: int = 1
    misses: int = 0
    """updates since the last match"""

    @property
    def confirmed(self) -> bool:
        return self.track_id is not None

    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        """(17, 3) pose and (4,) box shifted by the velocity over the updates since the last match."""
        shift = self.velocity * (self.misses + 1)
        keypoints = self.keypoints.copy()
        keypoints[:, :2] += shift
        return keypoints, self.box_xyxy + np.tile(shift, 2)


@dataclass(frozen=True)
class TrackerUpdate:
    track_ids: list[int | None]
    """per input person: its track's id, None while the track is tentative"""
    track_keys: list[int]
    """per input person: its track's internal key (every person has a track)"""
    events: list[TrackEvent]
    """born (confirmed this update) and lost tracks, lost first"""
    ended_keys: list[int]
    """internal keys of the tracks that ended this update (lost or tentative)"""


class Tracker:
    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracks: list[Track] = []
        self._next_key = 0
        self._next_id = 1

    def update(self, keypoints: np.ndarray, boxes_xyxy: np.ndarray) -> TrackerUpdate:
        """Match one frame's persons, (P, 17, 3) keypoints and (P, 4) boxes in image pixels."""
        cfg = self.config
        n = len(keypoints)
        match = self._associate(keypoints, boxes_xyxy)  # detection index -> track index
        events: list[TrackEvent] = []
        ended: list[int] = []
        matched_tracks = set(match.values())
        survivors: list[Track] = []
        for index, track in enumerate(self.tracks):
            if index in matched_tracks:
                survivors.append(track)
                continue
            track.misses += 1
            if not track.confirmed:
                ended.append(track.key)
            elif track.misses > cfg.max_age_frames:
                ended.append(track.key)
                events.append(TrackEvent("lost", track.track_id))  # type: ignore[arg-type]
            else:
                survivors.append(track)
        track_of: list[Track] = []
        for det in range(n):
            if det in match:
                track = self.tracks[match[det]]
                self._absorb(track, keypoints[det], boxes_xyxy[det])
            else:
                track = Track(self._next_key, keypoints[det].astype(np.float64), boxes_xyxy[det].astype(np.float64))
                self._next_key += 1
                survivors.append(track)
            if not track.confirmed and track.hits >= cfg.min_hits:
                track.track_id = self._next_id
                self._next_id += 1
                events.append(TrackEvent("born", track.track_id))
            track_of.append(track)
        self.tracks = survivors
        return TrackerUpdate(
            track_ids=[t.track_id for t in track_of],
            track_keys=[t.key for t in track_of],
            events=events,
            ended_keys=ended,
        )

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _absorb(track: Track, keypoints: np.ndarray, box_xyxy: np.ndarray) -> None:
        box = box_xyxy.astype(np.float64)
        step = ((box[:2] + box[2:]) - (track.box_xyxy[:2] + track.box_xyxy[2:])) / 2.0 / (track.misses + 1)
        track.velocity = (1 - _VELOCITY_SMOOTHING) * track.velocity + _VELOCITY_SMOOTHING * step
        track.keypoints = keypoints.astype(np.float64)
        track.box_xyxy = box
        track.hits = track.hits + 1 if track.misses == 0 else 1
        track.misses = 0

    def _associate(self, keypoints: np.ndarray, boxes_xyxy: np.ndarray) -> dict[int, int]:
        """detection index -> track index: OKS round, then IoU round on what is left."""
        cfg = self.config
        if not self.tracks or len(keypoints) == 0:
            return {}
        predicted = [t.predicted() for t in self.tracks]
        pred_kpts = np.stack([p[0] for p in predicted])
        pred_boxes = np.stack([p[1] for p in predicted])
        oks = oks_matrix(pred_kpts, pred_boxes, keypoints, min_keypoint_score=cfg.min_keypoint_score)
        match = _hungarian(np.nan_to_num(oks, nan=0.0), cfg.min_oks)  # track -> detection
        tracks_left = [t for t in range(len(self.tracks)) if t not in match]
        dets_left = [d for d in range(len(keypoints)) if d not in match.values()]
        if tracks_left and dets_left:
            iou = iou_matrix(pred_boxes[tracks_left], boxes_xyxy[dets_left])
            for t, d in _hungarian(iou, cfg.min_iou).items():
                match[tracks_left[t]] = dets_left[d]
        return {d: t for t, d in match.items()}


def _hungarian(similarity: np.ndarray, minimum: float) -> dict[int, int]:
    """Row -> column of the assignment maximising total similarity; pairs under `minimum` are dropped."""
    gated = np.where(similarity >= minimum, similarity, 0.0)
    rows, cols = linear_sum_assignment(gated, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if similarity[r, c] >= minimum}
