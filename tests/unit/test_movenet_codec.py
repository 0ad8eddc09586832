"""MoveNet MultiPose codec on hand-made heads: peaks placed at known cells decode to known pixels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.codecs import movenet

pytestmark = pytest.mark.unit

BACKGROUND_LOGIT = -10.0
KPT_LOGIT = 4.0
STRIDE = movenet.STRIDE


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@dataclass
class FakePerson:
    """A person on the feature map: centre cell, 17 keypoint cells + sub-cell offsets, box size."""

    centre: tuple[int, int]
    centre_logit: float
    kpt_cells: np.ndarray  # (17, 2) int y, x
    kpt_offsets: np.ndarray = field(default_factory=lambda: np.zeros((17, 2), np.float32))  # (17, 2) y, x
    box_hw: tuple[float, float] = (12.0, 8.0)


def column_person(centre: tuple[int, int], logit: float, rng: np.random.Generator) -> FakePerson:
    """Keypoints in two columns inside the default 12 x 8 cell box around ``centre``."""
    cy, cx = centre
    cells = np.array([(cy - 4 + k % 9, cx - 2 + 3 * (k // 9)) for k in range(17)])
    return FakePerson(centre, logit, cells, rng.uniform(-0.5, 0.5, (17, 2)).astype(np.float32))


def make_heads(h: int, w: int, persons: list[FakePerson]) -> list[np.ndarray]:
    """Heads in ``HEAD_NAMES`` order, (C, h, w) each; regressions point exactly at the keypoints."""
    centre = np.full((1, h, w), BACKGROUND_LOGIT, np.float32)
    heat = np.full((17, h, w), BACKGROUND_LOGIT, np.float32)
    offsets = np.zeros((34, h, w), np.float32)
    regress = np.zeros((34, h, w), np.float32)
    box_scale = np.zeros((2, h, w), np.float32)
    box_offset = np.zeros((2, h, w), np.float32)
    for p in persons:
        cy, cx = p.centre
        centre[0, cy, cx] = p.centre_logit
        box_scale[:, cy, cx] = p.box_hw
        for k, (ky, kx) in enumerate(p.kpt_cells):
            heat[k, ky, kx] = KPT_LOGIT
            offsets[2 * k : 2 * k + 2, ky, kx] = p.kpt_offsets[k]
            regress[2 * k : 2 * k + 2, cy, cx] = (ky - cy, kx - cx)
    return [centre, heat, offsets, regress, box_scale, box_offset]


def expected_xy(p: FakePerson) -> np.ndarray:
    """(17, 2) x, y input pixels."""
    return ((p.kpt_cells + p.kpt_offsets) * STRIDE)[:, ::-1]


def test_two_people_decode_to_their_pixels_sorted_by_score() -> None:
    rng = np.random.default_rng(0)
    a = column_person((10, 7), 3.0, rng)
    b = column_person((12, 23), 1.0, rng)
    heads = make_heads(24, 32, [b, a])

    persons = movenet.decode(heads)

    assert len(persons) == 2
    assert persons.scores[0] > persons.scores[1]
    for got, person in zip(range(2), (a, b), strict=True):
        np.testing.assert_allclose(persons.keypoints[got, :, :2], expected_xy(person), atol=1e-4)
        np.testing.assert_allclose(persons.keypoints[got, :, 2], sigmoid(KPT_LOGIT), rtol=1e-5)
        cy, cx = person.centre
        box = np.array([cx - 4, cy - 6, cx + 4, cy + 6], np.float32) * STRIDE
        np.testing.assert_allclose(persons.boxes_xyxy[got], box, atol=1e-4)
        score = sigmoid(person.centre_logit) * sigmoid(KPT_LOGIT)
        np.testing.assert_allclose(persons.scores[got], score, rtol=1e-5)
    assert persons.keypoints.shape == (2, 17, 3) and persons.keypoints.dtype == np.float32


def test_centre_nms_keeps_only_the_local_maximum() -> None:
    rng = np.random.default_rng(1)
    a = column_person((10, 7), 3.0, rng)
    heads = make_heads(24, 32, [a])
    heads[0][0, 10, 8] = 2.5  # a weaker centre next to a's is not a peak of the 5x5 window

    assert len(movenet.decode(heads)) == 1


def test_keypoint_outside_the_box_is_ignored() -> None:
    rng = np.random.default_rng(2)
    a = column_person((10, 7), 3.0, rng)
    heads = make_heads(24, 32, [a])
    heads[1][0, 10, 14] = 8.0  # a stronger nose 7 cells right of the centre, outside the 8-wide box

    persons = movenet.decode(heads)

    np.testing.assert_allclose(persons.keypoints[0, 0, :2], expected_xy(a)[0], atol=1e-4)


def test_keypoint_nearer_the_regressed_location_wins() -> None:
    a = FakePerson((10, 10), 3.0, np.array([(10, 10)] * 17))
    heads = make_heads(24, 24, [a])
    heads[3][0:2, 10, 10] = (-3.0, 0.0)  # nose regressed 3 cells up ...
    heads[1][0, 8, 10] = KPT_LOGIT  # ... where an equally strong nose peak sits 1 cell away
    heads[1][0, 12, 10] = KPT_LOGIT  # this one is 5 cells away

    nose = movenet.decode(heads).keypoints[0, 0]

    assert tuple(nose[:2]) == (10 * STRIDE, 8 * STRIDE)
    weight = np.exp(-1.0 / (24 * 0.300048828125))
    np.testing.assert_allclose(nose[2], sigmoid(KPT_LOGIT) * weight, rtol=1e-5)


def test_empty_scene_gives_no_people_but_six_zero_candidates() -> None:
    heads = make_heads(16, 16, [])

    assert len(movenet.decode(heads)) == 0
    candidates = movenet.decode_candidates(heads)
    assert len(candidates) == movenet.MAX_PERSONS
    assert np.all(candidates.scores == 0)


def test_min_score_filters_and_non_square_maps_work() -> None:
    rng = np.random.default_rng(3)
    a = column_person((8, 6), 3.0, rng)
    b = column_person((8, 30), -1.0, rng)
    heads = make_heads(20, 40, [a, b])

    assert len(movenet.decode(heads)) == 2
    kept = movenet.decode(heads, min_score=0.5)
    assert len(kept) == 1
    np.testing.assert_allclose(kept.keypoints[0, :, :2], expected_xy(a), atol=1e-4)


def test_wrong_head_shapes_are_refused() -> None:
    heads = make_heads(16, 16, [])
    with pytest.raises(ValueError, match="kpt_offsets"):
        movenet.decode([heads[0], heads[1], heads[2][:17], *heads[3:]])
    with pytest.raises(ValueError, match="expected 6 heads"):
        movenet.decode(heads[:5])
    with pytest.raises(ValueError, match="centre_logits"):
        movenet.decode([h[None] for h in heads])


def test_singlepose_regresses_from_the_centre_and_adds_offsets() -> None:
    h = w = 16
    centre = np.zeros((h, w, 1), np.float32)
    centre[6, 9, 0] = 0.9
    heat = np.full((17, h, w), 0.01, np.float32)
    offsets = np.zeros((34, h, w), np.float32)
    regress = np.zeros((34, h, w), np.float32)
    cells = np.array([(2 + k % 12, 3 + k // 12 * 8) for k in range(17)])
    for k, (ky, kx) in enumerate(cells):
        heat[k, ky, kx] = 0.8
        heat[k, (ky + 3) % h, kx] = 0.85  # stronger but 3 cells from where the centre regresses
        offsets[2 * k : 2 * k + 2, ky, kx] = (0.25, -0.25)
        regress[2 * k : 2 * k + 2, 6, 9] = (ky - 6, kx - 9)

    kpts = movenet.decode_singlepose([centre, heat, offsets, regress])

    assert kpts.shape == (17, 3)
    np.testing.assert_allclose(kpts[:, 0], (cells[:, 1] - 0.25) * STRIDE, atol=1e-5)
    np.testing.assert_allclose(kpts[:, 1], (cells[:, 0] + 0.25) * STRIDE, atol=1e-5)
    np.testing.assert_allclose(kpts[:, 2], 0.8, atol=1e-6)


def _shifted_max_pool(x: np.ndarray, k: int) -> np.ndarray:
    """The graph's k x k max pool, stride 1, padding with -inf, written out."""
    r = k // 2
    padded = np.pad(x, r, constant_values=-np.inf)
    return np.max([padded[i : i + x.shape[0], j : j + x.shape[1]] for i in range(k) for j in range(k)], axis=0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda h: st.integers(1, 12).flatmap(
            lambda w: hnp.arrays(np.float32, (h, w), elements=st.floats(-50, 50, width=32))
        )
    )
)
def test_peak_max_pool_is_the_graphs_5x5_pool(x: np.ndarray) -> None:
    np.testing.assert_array_equal(movenet._max_pool_same(x), _shifted_max_pool(x, 5))


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.integers(1, 40),
        elements=st.one_of(st.just(0.0), st.sampled_from([0.25, 0.5]), st.floats(0, 1, width=32)),
    ),
    st.integers(1, 8),
)
def test_top_peaks_is_a_stable_descending_argsort(scores: np.ndarray, n: int) -> None:
    """Ties (repeated scores, many zeros) keep the lower index, as the graph's TopK does."""
    expected = np.argsort(-scores, kind="stable")[:n]
    np.testing.assert_array_equal(movenet._top_peaks(scores, n), expected)
