"""What one stream keeps between frames: its tracker, a One-Euro filter per track, jitter samples.

`TrackingSession.update(keypoints, boxes, t_s)` takes one frame's persons (image pixels, capture
time in seconds) and returns their track ids, their keypoints (smoothed when smoothing is on), the
born/lost events and the jitter samples of this frame.

Jitter: for each confirmed track matched in this update and the previous one whose box barely
moved (centre shift and height change both under `STATIC_BOX_SHIFT` of the box height), the mean
displacement (image pixels) of its keypoints scored `>= min_keypoint_score` in both frames, between
the keypoints sent for the previous frame and those sent now. It measures what clients see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.tracking.one_euro import OneEuroConfig, OneEuroFilter
from service.tracking.tracker import Tracker, TrackerConfig, TrackEvent

__all__ = ["STATIC_BOX_SHIFT", "FrameTracks", "TrackingSession"]

STATIC_BOX_SHIFT = 0.03
"""a box 'barely moves' when its centre moves and its height changes by less than this x its height"""


@dataclass(frozen=True)
class FrameTracks:
    track_ids: list[int | None]
    """per person; None while its track is tentative"""
    keypoints: np.ndarray
    """(P, 17, 3) the keypoints to send: smoothed x, y when smoothing is on; scores unchanged"""
    events: list[TrackEvent]
    jitter_px: list[float]
    """one sample per near-static confirmed person (see the module docstring)"""


@dataclass
class _Sent:
    keypoints: np.ndarray
    box_xyxy: np.ndarray


class TrackingSession:
    def __init__(self, tracker: TrackerConfig, smoothing: OneEuroConfig | None) -> None:
        self.tracker = Tracker(tracker)
        self.smoothing = smoothing
        self._filters: dict[int, OneEuroFilter] = {}
        self._sent: dict[int, _Sent] = {}

    def update(self, keypoints: np.ndarray, boxes_xyxy: np.ndarray, t_s: float) -> FrameTracks:
        """One frame: (P, 17, 3) keypoints and (P, 4) boxes in image pixels, captured at `t_s` seconds."""
        result = self.tracker.update(keypoints, boxes_xyxy)
        for key in result.ended_keys:
            self._filters.pop(key, None)
        out = np.array(keypoints, dtype=np.float64, copy=True)
        if self.smoothing is not None:
            for i, key in enumerate(result.track_keys):
                one_euro = self._filters.setdefault(key, OneEuroFilter(self.smoothing))
                out[i, :, :2] = one_euro(out[i, :, :2], t_s)
        jitter: list[float] = []
        min_score = self.tracker.config.min_keypoint_score
        sent: dict[int, _Sent] = {}
        for i, (key, track_id) in enumerate(zip(result.track_keys, result.track_ids, strict=True)):
            now = _Sent(out[i], np.asarray(boxes_xyxy[i], np.float64))
            before = self._sent.get(key)
            if track_id is not None and before is not None:
                sample = _jitter(before, now, min_score)
                if sample is not None:
                    jitter.append(sample)
            sent[key] = now
        self._sent = sent  # only tracks matched this update: the next sample needs consecutive frames
        return FrameTracks(result.track_ids, out, result.events, jitter)


def _jitter(before: _Sent, now: _Sent, min_score: float) -> float | None:
    """Mean keypoint displacement (pixels) of a person whose box barely moved, else None."""
    height = max(float(now.box_xyxy[3] - now.box_xyxy[1]), 1.0)
    centre_shift = np.linalg.norm((now.box_xyxy[:2] + now.box_xyxy[2:] - before.box_xyxy[:2] - before.box_xyxy[2:]) / 2)
    height_change = abs(height - float(before.box_xyxy[3] - before.box_xyxy[1]))
    if centre_shift >= STATIC_BOX_SHIFT * height or height_change >= STATIC_BOX_SHIFT * height:
        return None
    seen = (before.keypoints[:, 2] >= min_score) & (now.keypoints[:, 2] >= min_score)
    if not seen.any():
        return None
    return float(np.linalg.norm(now.keypoints[seen, :2] - before.keypoints[seen, :2], axis=-1).mean())
