"""LE-HRNet / HRNet-W32: heatmap output contract, Leanblock arithmetic and the paper's figures."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models.export import build
from models.nets.lehrnet import (
    EMA,
    LeanBlock,
    LEHRNet,
    LEHRNetConfig,
    hrnet_w32,
    lehrnet_w32,
    lehrnet_w32_lean,
)
from models.profile import GIBI, count_macs, count_params
from models.registry import MODELS

pytestmark = [pytest.mark.unit, pytest.mark.train]

HW = (256, 192)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


def test_catalogue_entry_builds_the_lean_ema_network() -> None:
    assert MODELS["lehrnet-w32"].input_hw == HW
    model = build("lehrnet-w32")
    assert isinstance(model, LEHRNet) and model.cfg.block == "lean_ema" and model.cfg.input_hw == HW


@pytest.mark.parametrize("factory", [hrnet_w32, lehrnet_w32_lean, lehrnet_w32])
def test_forward_returns_quarter_resolution_heatmaps(factory: Callable[[tuple[int, int]], LEHRNet]) -> None:
    model = factory((64, 64)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 17, 16, 16) and torch.isfinite(out).all()


def test_hrnet_w32_matches_calibration_point() -> None:
    """28.5 M params / 7.1 G; HRNet's counter divides MACs by 1024**3 (see models.profile)."""
    model = hrnet_w32(HW)
    assert count_params(model) / 1e6 == pytest.approx(28.5, rel=0.01)
    assert count_macs(model, (1, 3, *HW)) / GIBI == pytest.approx(7.1, rel=0.02)


def test_leanblock_parameters_follow_the_papers_formula() -> None:
    """Two LConv units: 2 * (9/16 + 1) * C**2 conv weights (+ 2 BN affine pairs)."""
    for c in (32, 64, 128, 256):
        block = LeanBlock(c)
        assert count_params(block) == int(2 * (9 / 16 + 1) * c * c) + 4 * c
    ema = EMA(64, groups=32)
    x = torch.randn(2, 64, 8, 6)
    assert ema(x).shape == x.shape


def test_lean_and_lehrnet_figures_pinned() -> None:
    """The paper's 4.1 M / 1.3 G and 4.2 M / 1.5 G cannot be met from its own description.

    Summing the paper's Leanblock cost (3.125 C**2 per block) over HRNet-W32's 104 branch blocks
    alone gives 4.40 M > 4.1 M, before the stem, stage 1, transitions, fusions and head (3.2 M in
    HRNet). Its MACs do not scale with input size either (COCO 256x192 1.3 G vs MPII 256x256
    1.4 G, where any conv net scales by 4/3). Today's figures are pinned instead (see the module
    docstring); the EMA step is tested to be small.
    """
    lean, full = lehrnet_w32_lean(HW), lehrnet_w32(HW)
    blocks_only = sum(count_params(m) for m in lean.modules() if isinstance(m, LeanBlock))
    assert blocks_only / 1e6 > 4.2
    assert count_params(lean) / 1e6 == pytest.approx(7.58, rel=0.02)
    assert count_params(full) / 1e6 == pytest.approx(7.59, rel=0.02)
    lean_macs = count_macs(lean, (1, 3, *HW)) / GIBI
    full_macs = count_macs(full, (1, 3, *HW)) / GIBI
    assert lean_macs == pytest.approx(2.59, rel=0.03)
    assert full_macs == pytest.approx(2.68, rel=0.03)
    assert 0 < count_params(full) - count_params(lean) < 0.05e6  # EMA is cheap, as in the paper
    hrnet_macs = count_macs(hrnet_w32(HW), (1, 3, *HW)) / GIBI
    assert full_macs < 0.4 * hrnet_macs and count_params(full) < 0.3 * 28.5e6


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        LEHRNetConfig(input_hw=(250, 192))
    with pytest.raises(ValueError, match="ema_groups"):
        LEHRNetConfig(widths=(48, 96, 192, 384), ema_groups=32)
