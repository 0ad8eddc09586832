"""The tracker on hand-made sequences: crossing people, a missed detection, re-entry, min_hits;
OKS against pycocotools; the tracking session's smoothing and jitter samples."""

from __future__ import annotations

import numpy as np
import pytest

from service.tracking.oks import COCO_SIGMAS, iou_matrix, oks_matrix
from service.tracking.one_euro import OneEuroConfig
from service.tracking.session import TrackingSession
from service.tracking.tracker import Tracker, TrackerConfig, TrackEvent

pytestmark = pytest.mark.unit

# a standing skeleton, 100 px wide x 200 px tall, its box's top-left corner at the origin
_SKELETON = np.array(
    [
        [50, 15], [45, 10], [55, 10], [40, 15], [60, 15], [30, 50], [70, 50], [25, 85], [75, 85],
        [22, 115], [78, 115], [38, 115], [62, 115], [37, 155], [63, 155], [36, 195], [64, 195],
    ],
    dtype=np.float64,
)  # fmt: skip


def person(x: float, y: float = 0.0, score: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(17, 3) keypoints and (4,) box of the skeleton placed at (x, y)."""
    keypoints = np.concatenate([_SKELETON + np.array([x, y]), np.full((17, 1), score)], axis=1)
    return keypoints, np.array([x, y, x + 100, y + 200], np.float64)


def frame(*people: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not people:
        return np.zeros((0, 17, 3)), np.zeros((0, 4))
    return np.stack([p[0] for p in people]), np.stack([p[1] for p in people])


def test_oks_matches_pycocotools() -> None:
    params = pytest.importorskip("pycocotools.cocoeval").Params(iouType="keypoints")
    np.testing.assert_allclose(COCO_SIGMAS, params.kpt_oks_sigmas)
    ref_kpts, ref_box = person(0.0)
    cand = ref_kpts.copy()
    cand[:, :2] += np.random.default_rng(0).normal(0, 4, (17, 2))
    area = 100 * 200
    d2 = np.sum((cand[:, :2] - ref_kpts[:, :2]) ** 2, axis=1)
    expected = np.mean(np.exp(-d2 / ((2 * params.kpt_oks_sigmas) ** 2 * area * 2)))  # computeOks' formula
    got = oks_matrix(ref_kpts[None], ref_box[None], cand[None], min_keypoint_score=0.3)
    assert got.shape == (1, 1) and got[0, 0] == pytest.approx(expected)
    hidden = cand.copy()
    hidden[:, 2] = 0.1
    assert np.isnan(oks_matrix(ref_kpts[None], ref_box[None], hidden[None], min_keypoint_score=0.3)[0, 0])
    assert iou_matrix(ref_box[None], (ref_box + np.array([50, 0, 50, 0]))[None])[0, 0] == pytest.approx(1 / 3)


def test_min_hits_confirms_a_track_and_gives_it_an_id_once() -> None:
    tracker = Tracker(TrackerConfig(min_hits=3))
    updates = [tracker.update(*frame(person(10.0 * i))) for i in range(5)]
    assert [u.track_ids for u in updates] == [[None], [None], [1], [1], [1]]
    assert [u.events for u in updates] == [[], [], [TrackEvent("born", 1)], [], []]
    assert len({u.track_keys[0] for u in updates}) == 1


def test_two_people_crossing_keep_their_ids() -> None:
    """A walks right, B walks left; their skeletons coincide mid-way. Velocity carries each through."""
    tracker = Tracker(TrackerConfig(min_hits=1))
    ids = []
    for i in range(21):
        a, b = person(20.0 * i), person(400.0 - 20.0 * i, 4.0)
        ids.append(tracker.update(*frame(a, b)).track_ids)
    assert ids[0] == [1, 2]
    assert all(pair == [1, 2] for pair in ids), ids


def test_a_missed_detection_keeps_the_id_and_events_stay_quiet() -> None:
    tracker = Tracker(TrackerConfig(min_hits=1, max_age_frames=5))
    seen = []
    for i in range(8):
        people = [person(300.0)] if i in (3, 4) else [person(15.0 * i), person(300.0)]
        update = tracker.update(*frame(*people))
        seen.append((update.track_ids, update.events))
    assert seen[0] == ([1, 2], [TrackEvent("born", 1), TrackEvent("born", 2)])
    assert seen[3] == ([2], []) and seen[4] == ([2], [])
    assert seen[5] == ([1, 2], [])  # back where its velocity put it: the same id


def test_re_entry_after_max_age_gets_a_new_id() -> None:
    tracker = Tracker(TrackerConfig(min_hits=2, max_age_frames=3))
    events: list[TrackEvent] = []
    ids: list[list[int | None]] = []
    sequence = [[person(0.0)]] * 3 + [[]] * 4 + [[person(0.0)]] * 3
    for people in sequence:
        update = tracker.update(*frame(*people))
        events += update.events
        ids.append(update.track_ids)
    assert events == [TrackEvent("born", 1), TrackEvent("lost", 1), TrackEvent("born", 2)]
    assert ids[-3:] == [[None], [2], [2]]
    assert ids[6] == []  # the fourth empty frame (misses 4 > max_age 3) ends track 1


def test_a_tentative_track_that_misses_ends_silently() -> None:
    tracker = Tracker(TrackerConfig(min_hits=3))
    updates = [tracker.update(*frame(*people)) for people in ([person(0.0)], [], [person(0.0)])]
    assert all(u.events == [] for u in updates)
    assert updates[1].ended_keys == updates[0].track_keys
    assert updates[2].track_keys != updates[0].track_keys


def test_iou_fallback_matches_persons_without_confident_keypoints() -> None:
    tracker = Tracker(TrackerConfig(min_hits=1))
    first = tracker.update(*frame(person(0.0)))
    second = tracker.update(*frame(person(5.0, score=0.05)))
    assert first.track_ids == second.track_ids == [1]


def test_session_smooths_keypoints_and_measures_jitter() -> None:
    rng = np.random.default_rng(1)
    noisy = [person(100.0) for _ in range(60)]
    for kpts, _ in noisy:
        kpts[:, :2] += rng.normal(0, 2.0, (17, 2))
    jitter = {}
    for name, smoothing in (("raw", None), ("smoothed", OneEuroConfig(min_cutoff=0.5, beta=0.0))):
        session = TrackingSession(TrackerConfig(min_hits=2), smoothing)
        samples: list[float] = []
        for i, p in enumerate(noisy):
            out = session.update(*frame(p), t_s=i / 10.0)
            samples += out.jitter_px
            np.testing.assert_array_equal(out.keypoints[..., 2], p[0][None, :, 2])  # scores untouched
        assert len(samples) == len(noisy) - 1  # from the frame that confirms the track on
        jitter[name] = float(np.mean(samples))
    assert jitter["raw"] == pytest.approx(2.0 * np.sqrt(np.pi), rel=0.15)  # E|N(0, 2^2 I_2) - N(0, 2^2 I_2)|
    assert jitter["smoothed"] < 0.5 * jitter["raw"]


def test_session_takes_no_jitter_from_a_moving_person() -> None:
    session = TrackingSession(TrackerConfig(min_hits=1), None)
    samples = [s for i in range(10) for s in session.update(*frame(person(30.0 * i)), t_s=i / 10).jitter_px]
    assert samples == []
