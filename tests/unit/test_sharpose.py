"""SHaRPose: catalogue configurations, the paper's figures, patch selection and the loss."""

from __future__ import annotations

import math

import pytest
import torch

from models.export import build
from models.losses.sharpose import QualityWeight, SHaRPoseLoss, heatmap_oks
from models.nets.sharpose import CoarseGraph, SHaRPose, SHaRPoseConfig, sharpose_b
from models.profile import GIGA, count_macs, count_params
from models.registry import MODELS, Trained, resolve

pytestmark = [pytest.mark.unit, pytest.mark.train]

TINY = SHaRPoseConfig(dim=64, alpha=0.5, input_hw=(128, 96), depth=2, head_dim=32)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("name", "dim", "alpha", "hw", "n_c", "n_h"),
    [
        ("sharpose-s", 384, 0.5, (256, 192), 48, 24),
        ("sharpose-s-384", 384, 0.5, (384, 288), 108, 54),
        ("sharpose-b", 768, 0.4, (256, 192), 48, 19),
        ("sharpose-b-384", 768, 0.3, (384, 288), 108, 32),
    ],
)
def test_catalogue_configurations(name: str, dim: int, alpha: float, hw: tuple[int, int], n_c: int, n_h: int) -> None:
    entry = MODELS[name]
    assert entry.kind == "top-down" and entry.quality_gate and entry.input_hw == hw
    assert isinstance(entry.source, Trained) and entry.source.export == "models.export_gated:export_to_store"
    with torch.device("meta"):
        model = resolve(entry.source.net)()
    cfg = model.cfg
    assert (cfg.dim, cfg.alpha, cfg.input_hw, cfg.depth, cfg.patch) == (dim, alpha, hw, 12, 16)
    assert (cfg.coarse_scale, cfg.fine_scale, cfg.beta) == (0.5, 1.0, 0.99)
    # s_c = 0.5 with 16x16 patches: every coarse patch covers 32x32 crop pixels = 4 fine patches
    assert cfg.num_coarse == n_c == (hw[0] // 32) * (hw[1] // 32)
    assert cfg.num_refined == n_h == math.floor(alpha * n_c)
    assert cfg.num_fine_visual == 4 * n_h + n_c - n_h


@pytest.mark.parametrize("name", ["sharpose-s", "sharpose-s-384", "sharpose-b", "sharpose-b-384"])
def test_params_and_gmacs_match_the_paper(name: str) -> None:
    """Table 2, both stages counted (fvcore-style MACs / 1e9, see models.profile)."""
    entry = MODELS[name]
    assert isinstance(entry.source, Trained)
    paper_params, paper_gmacs = entry.source.paper
    assert paper_params is not None and paper_gmacs is not None
    with torch.device("meta"):
        model = resolve(entry.source.net)()
    assert count_params(model) / 1e6 == pytest.approx(paper_params, rel=0.10)
    assert count_macs(model, (1, 3, *entry.input_hw)) / GIGA == pytest.approx(paper_gmacs, rel=0.20)


def test_coarse_stage_alone_matches_coarse_none() -> None:
    """Table 8 "Coarse-None": the coarse stage of SHaRPose-Base at 256x192 is 5.7 G."""
    with torch.device("meta"):
        model = sharpose_b()
    assert count_macs(CoarseGraph(model), (1, 3, 256, 192)) / GIGA == pytest.approx(5.7, rel=0.20)


def test_stages_return_quarter_resolution_heatmaps_and_a_quality() -> None:
    model = SHaRPose(TINY).eval()
    with torch.no_grad():
        coarse, fine, quality = model(torch.randn(2, 3, 128, 96))
        _, _, tokens, scores = model.coarse(torch.randn(2, 3, 128, 96))
    assert coarse.shape == fine.shape == (2, 17, 32, 24)
    assert quality.shape == (2,) and bool(((quality > 0) & (quality < 1)).all())
    assert tokens.shape == (2, 12, 64) and scores.shape == (2, 12)
    # EMA of attention probabilities from zero: sum over patches of the score is (1 - beta^K) * (mass on patches)
    assert bool((scores > 0).all()) and float(scores.sum(1).max()) <= 1 - 0.99**TINY.depth + 1e-6


def test_fine_stage_refines_exactly_the_top_alpha_patches() -> None:
    model = SHaRPose(TINY).eval()
    n, n_c, n_h, d = 3, TINY.num_coarse, TINY.num_refined, TINY.dim
    x = torch.randn(n, 3, 128, 96)
    tokens = torch.randn(n, n_c, d)
    scores = torch.rand(n, n_c)
    with torch.no_grad():
        visual = model.fine_tokens(x, tokens, scores)
        fine_all = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_fine
    assert visual.shape == (n, 4 * n_h + (n_c - n_h), d)
    for i in range(n):
        order = torch.argsort(scores[i], descending=True)
        selected, rest = order[:n_h], order[n_h:]
        # the unselected coarse tokens pass through unchanged (bit-exact), after the refined ones
        assert torch.equal(visual[i, 4 * n_h :], tokens[i, rest])
        # each selected patch became its 4 fine patches + MLP(its coarse token)
        with torch.no_grad():
            reuse = model.reuse(tokens[i, selected])
        for j, patch in enumerate(selected.tolist()):
            r, c = divmod(patch, TINY.coarse_grid[1])
            fine_w = TINY.fine_grid[1]
            children = [(2 * r + a) * fine_w + 2 * c + b for a in (0, 1) for b in (0, 1)]
            expected = fine_all[i, children] + reuse[j]
            assert torch.allclose(visual[i, 4 * j : 4 * j + 4], expected, atol=1e-6)


def test_unselected_patches_do_not_change_the_refined_tokens() -> None:
    """Changing a token the fine stage keeps coarse changes only that token of its input."""
    model = SHaRPose(TINY).eval()
    x = torch.randn(1, 3, 128, 96)
    tokens = torch.randn(1, TINY.num_coarse, TINY.dim)
    scores = torch.arange(TINY.num_coarse, dtype=torch.float32)[None]  # the last N_h patches win
    changed = tokens.clone()
    changed[0, 0] += 1.0  # patch 0 has the lowest score: kept coarse
    with torch.no_grad():
        a, b = model.fine_tokens(x, tokens, scores), model.fine_tokens(x, changed, scores)
    differs = (a - b).abs().amax(-1)[0] > 0
    assert differs.sum() == 1 and bool(differs[-1])


def test_catalogue_build_is_a_sharpose() -> None:
    with torch.device("meta"):
        model = build("sharpose-s")
    assert isinstance(model, SHaRPose) and model.cfg.num_refined == 24


def test_quality_weight_schedule_and_loss() -> None:
    schedule = QualityWeight()
    assert [schedule(e) for e in (0, 179, 180, 209)] == [0.0, 0.0, 0.03, 0.03]
    hm = torch.zeros(2, 17, 8, 6)
    kps = torch.zeros(2, 17, 2)
    for k in range(17):
        y, x = divmod(k, 6)
        hm[:, k, y, x] = 1.0
        kps[:, k] = torch.tensor([x * 4.0, y * 4.0])
    visible = torch.ones(2, 17)
    oks = heatmap_oks(hm, kps, visible, torch.full((2,), 100.0))
    assert torch.allclose(oks, torch.ones(2))
    assert float(heatmap_oks(hm, kps + 20.0, visible, torch.full((2,), 100.0)).max()) < 0.5
    loss = SHaRPoseLoss(QualityWeight(value=0.5, start_epoch=1))
    quality = torch.tensor([0.2, 0.6])
    target, weights = hm, visible
    off = (hm, hm, quality)
    assert float(loss(off, target, weights, oks, epoch=0)) == 0.0
    assert float(loss(off, target, weights, oks, epoch=1)) == pytest.approx(0.5 * (0.8 + 0.4) / 2)
    both = float(loss((hm * 0, hm, quality), target, weights, oks))
    assert both == pytest.approx(float((hm**2).mean()))
