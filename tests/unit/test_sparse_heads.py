"""Separable heads at chosen cells against the same heads computed densely, and the MultiPose
decode from a feature map against the decode of the dense heads made from it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.codecs import movenet
from models.sparse_heads import SeparableHead, SparseHeads

pytestmark = pytest.mark.unit


def random_head(rng: np.random.Generator, channels: int, hidden: int, out: int) -> SeparableHead:
    return SeparableHead(
        depthwise=rng.normal(0, 0.5, (channels, 3, 3)).astype(np.float32),
        pointwise=rng.normal(0, 0.5, (hidden, channels)).astype(np.float32),
        pointwise_bias=rng.normal(0, 0.5, hidden).astype(np.float32),
        out=rng.normal(0, 0.5, (out, hidden)).astype(np.float32),
        out_bias=rng.normal(0, 0.5, out).astype(np.float32),
    )


def dense(head: SeparableHead, feature: np.ndarray) -> np.ndarray:
    """The head on every cell, written plainly: (O, h, w)."""
    c, h, w = feature.shape
    padded = np.zeros((c, h + 2, w + 2), np.float64)
    padded[:, 1:-1, 1:-1] = feature
    depthwise = np.zeros((c, h, w), np.float64)
    for i in range(3):
        for j in range(3):
            depthwise += head.depthwise[:, i, j, None, None] * padded[:, i : i + h, j : j + w]
    hidden = np.einsum("mc,chw->mhw", head.pointwise.astype(np.float64), depthwise)
    hidden = np.maximum(hidden + head.pointwise_bias[:, None, None], 0.0)
    return (np.einsum("om,mhw->ohw", head.out.astype(np.float64), hidden) + head.out_bias[:, None, None]).astype(
        np.float32
    )


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    cells=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=1, max_size=12),
)
def test_at_equals_the_dense_head_at_those_cells_edges_included(
    h: int, w: int, seed: int, cells: list[tuple[int, int]]
) -> None:
    rng = np.random.default_rng(seed)
    feature = rng.normal(0, 1, (5, h, w)).astype(np.float32)
    head = random_head(rng, 5, 7, 3)
    ys = np.array([y % h for y, _ in cells])
    xs = np.array([x % w for _, x in cells])
    got = head.at(feature, ys, xs)
    assert got.shape == (len(cells), 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, dense(head, feature)[:, ys, xs].T, rtol=1e-4, atol=1e-4)


def test_at_takes_cells_in_any_array_shape_row_major() -> None:
    rng = np.random.default_rng(1)
    feature = rng.normal(0, 1, (4, 6, 6)).astype(np.float32)
    head = random_head(rng, 4, 8, 2)
    ys, xs = rng.integers(0, 6, (3, 5)), rng.integers(0, 6, (3, 5))
    np.testing.assert_array_equal(head.at(feature, ys, xs), head.at(feature, ys.ravel(), xs.ravel()))


@pytest.mark.parametrize("seed", range(6))
def test_decode_from_the_feature_map_equals_the_decode_of_the_dense_heads(seed: int) -> None:
    """Heads made densely from one random feature map decode as the sparse decode of that map;
    the centre and keypoint heatmap logits are given sharp peaks so that persons come out."""
    rng = np.random.default_rng(seed)
    h, w, channels = 24, 20, 6
    feature = np.maximum(rng.normal(0, 1, (channels, h, w)), 0).astype(np.float32)
    heads = {
        "kpt_offsets": random_head(rng, channels, 12, 34),
        "kpt_regress": random_head(rng, channels, 12, 34),
        "box_scale": random_head(rng, channels, 12, 2),
        "box_offset": random_head(rng, channels, 12, 2),
    }
    heads["box_scale"] = SeparableHead(  # boxes of several cells, so keypoints have room
        heads["box_scale"].depthwise,
        heads["box_scale"].pointwise,
        heads["box_scale"].pointwise_bias,
        heads["box_scale"].out * 0.1,
        np.full(2, 10.0, np.float32),
    )
    centre = rng.normal(-6, 1, (1, h, w)).astype(np.float32)
    centre[0, rng.integers(0, h, 4), rng.integers(0, w, 4)] = 3.0
    heatmap = rng.normal(-3, 2, (17, h, w)).astype(np.float32)
    full = {name: dense(head, feature) for name, head in heads.items()}
    expected = movenet.decode_candidates([centre, heatmap, *(full[n] for n in movenet.HEAD_NAMES[2:])])
    got = movenet.decode_sparse([centre, heatmap, feature], SparseHeads("feature", heads))
    assert (expected.scores > 0).sum() >= 1
    np.testing.assert_allclose(got.keypoints, expected.keypoints, atol=1e-3)
    np.testing.assert_allclose(got.boxes_xyxy, expected.boxes_xyxy, atol=1e-3)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)


def test_sparse_codec_names_the_cut_graph_outputs_and_refuses_others() -> None:
    codec = movenet.MultiPoseCodec(min_score=0.1)
    assert codec.output_names == movenet.HEAD_NAMES
    sparse = codec.with_sparse(SparseHeads("feat:0", {}))
    assert sparse.output_names == ("centre_logits", "kpt_heatmap_logits", "feat:0")
    assert sparse.min_score == 0.1
    with pytest.raises(ValueError, match="expected centre, heatmap and feature"):
        sparse.decode([np.zeros((1, 4, 4), np.float32)] * 6)
    with pytest.raises(ValueError, match="mismatched shapes"):
        sparse.decode([np.zeros((1, 4, 4)), np.zeros((17, 4, 4)), np.zeros((8, 5, 4))])
