"""AMFACPose: output contract, ablation switches and the paper's parameter / MAC figures."""

from __future__ import annotations

import pytest
import torch

from models.export import build
from models.nets.amfacpose import (
    AMFACPose,
    AMFACPoseConfig,
    CoordConv2d,
    amfacpose_ablation_configs,
    amfacpose_r18,
    amfacpose_r34,
)
from models.profile import GIGA, count_macs, count_params
from models.registry import MODELS, Trained

pytestmark = [pytest.mark.unit, pytest.mark.train]

# (factory, input (H, W), paper params M, paper GFLOPs as 1e9 MACs)
PAPER = {
    "amfacpose-r34": (amfacpose_r34, (384, 288), 3.8, 5.2),
    "amfacpose-r18": (amfacpose_r18, (256, 256), 2.4, 1.9),
}
# Table 6 (R34, 384x288): params M, GFLOPs.
PAPER_ABLATION = {
    "baseline": (3.3, 4.70),
    "+AFPN": (3.5, 5.0),
    "+DGCB": (3.6, 5.0),
    "+SCRM": (3.6, 5.2),
    "+SE": (3.8, 5.2),
    "+CoordConv": (3.8, 5.2),
}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


def test_catalogue_entries_build_networks_of_their_input_size() -> None:
    for name, hw in (("amfacpose-r18", (256, 256)), ("amfacpose-r34", (384, 288))):
        entry = MODELS[name]
        assert isinstance(entry.source, Trained) and entry.source.input.size_hw == entry.input_hw == hw
        model = build(name)
        assert isinstance(model, AMFACPose) and model.cfg.input_hw == hw


def test_forward_returns_simcc_logits() -> None:
    model = amfacpose_r18(input_hw=(64, 48)).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        feats = model.forward_features(x)
        x_logits, y_logits = model(x)
    assert feats.shape == (2, 17 * 4, 32, 24)
    assert x_logits.shape == (2, 17, 48 * 2) and y_logits.shape == (2, 17, 64 * 2)
    assert torch.isfinite(x_logits).all() and torch.isfinite(y_logits).all()


def test_every_ablation_row_builds_and_trains() -> None:
    x = torch.randn(2, 3, 32, 32)
    configs = amfacpose_ablation_configs(input_hw=(32, 32))
    assert list(configs) == list(PAPER_ABLATION)
    for cfg in configs.values():
        model = AMFACPose(cfg).train()
        x_logits, y_logits = model(x)
        (x_logits.mean() + y_logits.mean()).backward()
        assert all(p.grad is not None for p in model.head.parameters())


def test_dgcb_requires_afpn() -> None:
    with pytest.raises(ValueError, match="afpn"):
        AMFACPoseConfig(afpn=False, dgcb=True)
    with pytest.raises(ValueError, match="multiples of 16"):
        AMFACPoseConfig(input_hw=(250, 192))


def test_coordconv_has_four_learnable_coordinate_parameters() -> None:
    conv = CoordConv2d(3, 8)
    assert conv.coord_affine.numel() == 4 and conv.conv.in_channels == 5
    out = conv(torch.zeros(2, 3, 10, 6))
    assert out.shape == (2, 8, 10, 6)
    # With zero input, the output varies with position: the coordinates alone reach the conv.
    assert out[0, :, 0, 0].ne(out[0, :, -1, -1]).any()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_match_paper(name: str) -> None:
    factory, hw, paper_params_m, paper_gmacs = PAPER[name]
    model = factory(hw)
    params_m = count_params(model) / 1e6
    gmacs = count_macs(model, (1, 3, *hw)) / GIGA
    assert params_m == pytest.approx(paper_params_m, rel=0.10), params_m
    assert gmacs == pytest.approx(paper_gmacs, rel=0.20), gmacs


def test_ablation_rows_match_table6() -> None:
    previous_params = 0
    configs = amfacpose_ablation_configs()
    assert list(configs) == list(PAPER_ABLATION)  # every row of Table 6, in its order
    for row, cfg in configs.items():
        model = AMFACPose(cfg)
        params = count_params(model)
        gmacs = count_macs(model, (1, 3, *cfg.input_hw)) / GIGA
        paper_params_m, paper_gmacs = PAPER_ABLATION[row]
        assert params / 1e6 == pytest.approx(paper_params_m, rel=0.10), (row, params)
        assert gmacs == pytest.approx(paper_gmacs, rel=0.20), (row, gmacs)
        assert params >= previous_params  # each row only adds components
        previous_params = params
