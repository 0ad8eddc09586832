"""LE-HRNet: a lightweight and efficient human pose estimation network (and plain HRNet-W32).

Paper: Cui Lizhi, Jin Hongwei, "LE-HRNet: A Lightweight and Efficient Human Pose Estimation
Network" (full text in ``shared/papers/le-hrnet.md``). Topology: Sun et al., "Deep High-Resolution
Representation Learning for Human Pose Estimation", CVPR 2019 (HRNet-W32, top-down heatmaps).

Network (input ``(N, 3, H, W)``, output ``(N, 17, H/4, W/4)`` heatmaps):

* stem: two 3x3 stride-2 convs (64 channels) -> 1/4 resolution;
* stage 1: four Bottlenecks (64 -> 256);
* stages 2, 3, 4: 1, 4 and 3 exchange modules over 2, 3, 4 parallel branches of widths
  (32, 64, 128, 256); every module runs four residual blocks per branch, then fuses all branches
  (1x1 conv + nearest upsample from lower resolutions, strided 3x3 convs from higher ones);
  the last module only produces the highest-resolution branch;
* head: 1x1 conv to 17 heatmaps at 1/4 resolution.

``LEHRNetConfig.block`` picks the branch residual block (the paper's ablation rows):

* ``"basic"``: HRNet's BasicBlock, two 3x3 convs (plain HRNet-W32);
* ``"lean"``: Leanblock, Eq. (2)-(3): ``Y = ReLU(BN(LConv(ReLU(BN(LConv(X))))) + X)``, where
  LConv is a partial 3x3 conv over the first 1/4 of the channels (the rest pass through), concat,
  then a 1x1 pointwise conv over all channels;
* ``"lean_ema"``: LeEMA-Fusionblock, Eq. (4): ``Y = ReLU(EMA(Y1) + X)`` with EMA attention
  (Ouyang et al., ICASSP 2023): 32 channel groups, pooling along H and W, concat -> shared 1x1
  conv -> sigmoid gates -> GroupNorm; a parallel 3x3 conv; cross-branch matmul of softmaxed
  pooled descriptors with the other branch's features -> sigmoid weights on the grouped input.

Choices the text leaves open (fields of ``LEHRNetConfig``):

* Stage 1 keeps HRNet's Bottlenecks (the paper replaces BasicBlocks only); the transition and
  fusion layers keep HRNet's full 3x3 convs.
* EMA sits in every branch block of stages 2-4 (the paper says the LeEMA-Fusionblock is embedded
  "into the multi-resolution parallel branches").

Figures (``models.profile``; MACs / 2**30 at 256x192, the unit of HRNet's own counter, which
LE-HRNet builds on; paper in brackets):

* HRNet-W32: 28.54 M / 7.12 G [28.5 M / 7.1 G] -- the calibration point.
* Leanblock: 7.58 M / 2.59 G [4.1 M / 1.3 G]; LE-HRNet: 7.59 M / 2.68 G [4.2 M / 1.5 G].

The paper's LE-HRNet figures cannot be reached from its text. By its own count a Leanblock costs
3.125 C**2 parameters; HRNet-W32 has 104 branch blocks (4 x (32, 64) + 16 x (32..128) +
12 x (32..256)), so the Leanblocks alone hold 4.40 M > 4.1 M, before the stem, the stage-1
Bottlenecks, the transitions and the fusion convs (3.2 M that the text keeps). Its MACs do not
scale with input size either: 1.3 G at 256x192 vs 1.4 G at 256x256 (MPII), where any conv net
scales by 4/3 (HRNet-W32: 7.1 -> 9.5 G in the same table). The unstated cause is most likely a
counter that missed modules (e.g. the functional partial-conv path). Tests pin today's figures.
EMA adds 15 k parameters and 0.10 G (its grouped 3x3 conv and group sums) [+0.1 M / +0.2 G].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EMA",
    "BasicBlock",
    "Bottleneck",
    "LConv",
    "LEHRNet",
    "LEHRNetConfig",
    "LeanBlock",
    "hrnet_w32",
    "lehrnet_w32",
    "lehrnet_w32_lean",
]

BlockKind = Literal["basic", "lean", "lean_ema"]


@dataclass(frozen=True)
class LEHRNetConfig:
    """Hyper-parameters of HRNet / LE-HRNet; the defaults are LE-HRNet-W32 for COCO."""

    block: BlockKind = "lean_ema"
    input_hw: tuple[int, int] = (256, 192)
    num_joints: int = 17
    stem_width: int = 64
    stage1_blocks: int = 4
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    modules_per_stage: tuple[int, int, int] = (1, 4, 3)
    blocks_per_branch: int = 4
    partial_ratio: float = 0.25
    ema_groups: int = 32

    def __post_init__(self) -> None:
        if any(s % 32 for s in self.input_hw):
            raise ValueError(f"input_hw must be multiples of 32, got {self.input_hw}")
        if self.block == "lean_ema" and any(w % self.ema_groups for w in self.widths):
            raise ValueError("every branch width must be divisible by ema_groups")


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """``kernel x kernel`` conv (no bias) + BN (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) used by HRNet's stage 1."""

    expansion = 4

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3), conv_bn(width, cout, 1, relu=False))
        self.shortcut = nn.Identity() if cin == cout else conv_bn(cin, cout, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    """HRNet BasicBlock: two 3x3 convs with BN, ReLU and the identity residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels, 3), conv_bn(channels, channels, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class LConv(nn.Module):
    """Partial 3x3 conv on the first ``ratio`` of the channels, concat, 1x1 pointwise (no bias)."""

    def __init__(self, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        self.partial = max(1, int(channels * ratio))
        self.conv = nn.Conv2d(self.partial, self.partial, 3, 1, 1, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(torch.cat([self.conv(x[:, : self.partial]), x[:, self.partial :]], dim=1))


class EMA(nn.Module):
    """Efficient Multi-scale Attention over ``groups`` channel groups; shape-preserving.

    The reference implementation folds the groups into the batch (``(N*G, C/G, H, W)``) so that
    its 1x1 / 3x3 convs and GroupNorm are shared by all groups. Here the same shared weights run
    as grouped convs on ``(N, C, H, W)`` (weights tiled ``G`` times) and the per-group softmax and
    sums use fixed 0/1 grouped convs, which is numerically the same but needs no reshape: the ONNX
    graph then carries no batch-dependent shape arithmetic (14 k -> 4 k nodes for LE-HRNet).
    """

    group_sum: torch.Tensor
    group_copy: torch.Tensor

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.channels, self.groups = channels, groups
        cg = channels // groups
        self.conv1x1 = nn.Conv2d(cg, cg, 1)
        self.conv3x3 = nn.Conv2d(cg, cg, 3, 1, 1)
        self.gn = nn.GroupNorm(cg, cg)
        # 0/1 grouped-conv kernels: sum each group to one channel, copy a group value to its channels.
        self.register_buffer("group_sum", torch.ones(groups, cg, 1, 1), persistent=False)
        self.register_buffer("group_copy", torch.ones(channels, 1, 1, 1), persistent=False)

    def _tiled(self, p: torch.Tensor) -> torch.Tensor:
        return torch.cat([p] * self.groups)

    def _shared_conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        bias = self._tiled(conv.bias) if conv.bias is not None else None
        return F.conv2d(x, self._tiled(conv.weight), bias, padding=conv.padding, groups=self.groups)

    def _group_softmax(self, v: torch.Tensor) -> torch.Tensor:
        """Softmax of ``(N, C, 1, 1)`` over the channels of each group."""
        cg = self.channels // self.groups
        group_max = F.max_pool2d(v.transpose(1, 2), (cg, 1)).transpose(1, 2)  # (N, G, 1, 1)
        e = torch.exp(v - F.conv2d(group_max, self.group_copy, groups=self.groups))
        total = F.conv2d(F.conv2d(e, self.group_sum, groups=self.groups), self.group_copy, groups=self.groups)
        return e / total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Directional pooling; the shared 1x1 conv acts on each pooled map alone, so running it
        # on the two maps separately equals the reference's concat -> conv -> split.
        a_h = self._shared_conv(self.conv1x1, x.mean(dim=3, keepdim=True)).sigmoid()  # (N, C, H, 1)
        a_w = self._shared_conv(self.conv1x1, x.mean(dim=2, keepdim=True)).sigmoid()  # (N, C, 1, W)
        # GroupNorm(C/G, C/G) on each group == per-channel (instance) norm, affine tiled over groups
        gn_w, gn_b = self._tiled(self.gn.weight), self._tiled(self.gn.bias)
        x1 = F.instance_norm(x * a_h * a_w, weight=gn_w, bias=gn_b, eps=self.gn.eps)
        x2 = self._shared_conv(self.conv3x3, x)
        q1 = self._group_softmax(x1.mean(dim=(2, 3), keepdim=True))  # (N, C, 1, 1)
        q2 = self._group_softmax(x2.mean(dim=(2, 3), keepdim=True))
        # cross-branch: sum over each group's channels of q1 * x2 + q2 * x1 -> (N, G, H, W)
        weights = F.conv2d(q1 * x2 + q2 * x1, self.group_sum, groups=self.groups).sigmoid()
        return x * F.conv2d(weights, self.group_copy, groups=self.groups)


class LeanBlock(nn.Module):
    """Leanblock (Eq. 2-3), or LeEMA-Fusionblock (Eq. 4) when ``ema_groups`` is given."""

    def __init__(self, channels: int, ratio: float = 0.25, ema_groups: int | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            LConv(channels, ratio),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            LConv(channels, ratio),
            nn.BatchNorm2d(channels),
        )
        self.ema: nn.Module = EMA(channels, ema_groups) if ema_groups else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.ema(self.body(x)) + x)


def make_block(cfg: LEHRNetConfig, channels: int) -> nn.Module:
    """The branch residual block chosen by ``cfg.block`` (channels in = channels out)."""
    if cfg.block == "basic":
        return BasicBlock(channels)
    ema_groups = cfg.ema_groups if cfg.block == "lean_ema" else None
    return LeanBlock(channels, cfg.partial_ratio, ema_groups)


class ExchangeModule(nn.Module):
    """One HRNet multi-resolution module: residual blocks per branch, then cross-branch fusion."""

    def __init__(self, cfg: LEHRNetConfig, num_branches: int, num_outputs: int) -> None:
        super().__init__()
        widths = cfg.widths[:num_branches]
        self.branches = nn.ModuleList(
            nn.Sequential(*[make_block(cfg, w) for _ in range(cfg.blocks_per_branch)]) for w in widths
        )
        self.fuse = nn.ModuleList()
        for i in range(num_outputs):
            row = nn.ModuleList()
            for j in range(num_branches):
                row.append(self._fuse_layer(widths, j, i))
            self.fuse.append(row)

    @staticmethod
    def _fuse_layer(widths: tuple[int, ...], src: int, dst: int) -> nn.Module:
        if src == dst:
            return nn.Identity()
        if src > dst:  # lower resolution -> 1x1 conv, then nearest upsample in forward
            return conv_bn(widths[src], widths[dst], 1, relu=False)
        steps = [conv_bn(widths[src], widths[src], 3, 2) for _ in range(dst - src - 1)]
        steps.append(conv_bn(widths[src], widths[dst], 3, 2, relu=False))
        return nn.Sequential(*steps)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        out = []
        for i, row in enumerate(self.fuse):
            y = xs[i]
            for j, layer in enumerate(cast(nn.ModuleList, row)):
                if j == i:
                    continue
                z = layer(xs[j])
                if j > i:
                    z = F.interpolate(z, scale_factor=float(2 ** (j - i)), mode="nearest")
                y = y + z
            out.append(F.relu(y))
        return out


class Transition(nn.Module):
    """Adds the next lower-resolution branch (3x3 stride-2 conv from the lowest one)."""

    def __init__(self, cin: tuple[int, ...], cout: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, c in enumerate(cout):
            if i >= len(cin):
                layers.append(conv_bn(cin[-1], c, 3, stride=2))
            elif cin[i] != c:
                layers.append(conv_bn(cin[i], c, 3))
            else:
                layers.append(nn.Identity())
        self.layers = nn.ModuleList(layers)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(xs[min(i, len(xs) - 1)]) for i, layer in enumerate(self.layers)]


class LEHRNet(nn.Module):
    """HRNet-family top-down pose network: ``(N, 3, H, W)`` image -> ``(N, K, H/4, W/4)`` heatmaps."""

    def __init__(self, cfg: LEHRNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.stem_width
        self.stem = nn.Sequential(conv_bn(3, c, 3, 2), conv_bn(c, c, 3, 2))
        layer1 = [Bottleneck(c if i == 0 else c * 4, c) for i in range(cfg.stage1_blocks)]
        self.layer1 = nn.Sequential(*layer1)
        stages: list[nn.Module] = []
        prev: tuple[int, ...] = (c * Bottleneck.expansion,)
        for s, num_modules in enumerate(cfg.modules_per_stage):
            nb = s + 2
            stages.append(Transition(prev, cfg.widths[:nb]))
            for m in range(num_modules):
                last = s == len(cfg.modules_per_stage) - 1 and m == num_modules - 1
                stages.append(ExchangeModule(cfg, nb, 1 if last else nb))
            prev = cfg.widths[:nb]
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(cfg.widths[0], cfg.num_joints, 1)
        # HRNet / mmpose heatmap-head init: heatmaps start near zero instead of large noise.
        nn.init.normal_(self.head.weight, std=0.001)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised RGB -> ``(N, widths[0], H/4, W/4)`` high-resolution features."""
        xs = [self.layer1(self.stem(x))]
        for stage in self.stages:
            xs = stage(xs)
        return xs[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, widths[0], H/4, W/4)`` -> ``(N, K, H/4, W/4)`` heatmap logits (raw)."""
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def hrnet_w32(input_hw: tuple[int, int] = (256, 192)) -> LEHRNet:
    """Plain HRNet-W32 (BasicBlocks), the LE-HRNet ablation baseline."""
    return LEHRNet(LEHRNetConfig(block="basic", input_hw=input_hw))


def lehrnet_w32_lean(input_hw: tuple[int, int] = (256, 192)) -> LEHRNet:
    """HRNet-W32 with Leanblocks only (ablation row "+Leanblock")."""
    return LEHRNet(LEHRNetConfig(block="lean", input_hw=input_hw))


def lehrnet_w32(input_hw: tuple[int, int] = (256, 192)) -> LEHRNet:
    """LE-HRNet-W32: LeEMA-Fusionblocks in every branch (the paper's model)."""
    return LEHRNet(LEHRNetConfig(block="lean_ema", input_hw=input_hw))
