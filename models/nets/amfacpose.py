"""AMFACPose: attentive multi-scale features with adaptive context PoseResNet (SimCC head).

Paper: "AMFACPose" (full text in ``shared/papers/amfacpose.txt``): a ResNet18/34 layout with
depthwise-separable basic blocks, a CoordConv2d stem, SE and SCRM attention, an adaptive feature
pyramid (AFPN) with dual-gate context blocks (DGCB), and per-joint MLP heads that classify x and y
coordinates into ``W * k`` and ``H * k`` bins (SimCC, Li et al. 2022, ``k = 2``).

Network (input ``(N, 3, H, W)``; outputs ``x_logits (N, K, W*k)``, ``y_logits (N, K, H*k)``):

* stem (Sec. 3.1.1): three 3x3 CoordConv2d + BN + Mish (32, 32, 64 channels, first stride 2).
  CoordConv2d concatenates x / y grids in [-1, 1], scaled and shifted by four learnable scalars;
* four stages of depthwise-separable basic blocks (Sec. 3.1.2; 64/128/256/512 channels, depths
  2-2-2-2 for R18, 3-4-6-3 for R34), each stage followed by SCRM (Sec. 3.4.2) then SE (Sec. 3.4.1);
* AFPN (Sec. 3.2): 1x1 conv per stage output to a common width ``P_i``; ``D_i = DGCB(P_i)``
  (Sec. 3.3: ``x * ReLU(W_c GAP x) * sigmoid(W_g GAP x)``); ``P_i`` and ``D_i`` bilinearly
  upsampled to the finest scale; ``F_i = P_i * D_i`` (Eq. 8); concat; 1x1 fuse to ``K * d``;
* head (Sec. 3.5): channels reshaped to ``(K, d)``; per joint an x-MLP and a y-MLP with Mish.

Choices the text leaves open, made to match the paper's figures (fields of ``AMFACPoseConfig``):

* The stem strides 2 and there is no max-pool, so the stages run at 1/2, 1/4, 1/8, 1/16. This is
  what reproduces the ablation baseline (4.70 G) and the 5.2 G / 1.9 G of the two variants.
* Stem widths 32-32-64 (the ResNet-C deep stem); Mish after every conv in the backbone.
* Downsampling shortcuts are avg-pool + 1x1 conv + BN (the "lightweight residual path").
* SE reduction 4 (the SE ablation step adds 0.2 M); SCRM after every stage with a 7x7 depthwise
  spatial branch and an ECA-sized 1D kernel (its +0.2 G step); BN over the channel vector.
* AFPN width 32, ``d = 4`` channels per joint.
* The joint maps are at 1/2 resolution, too large to flatten into an MLP as SimCC does at 1/32,
  so each axis MLP reads the joint's ``d`` maps averaged over the other axis (``d * W/2`` inputs
  for x), hidden width 320.
* Without the AFPN (ablation baseline) a plain neck maps stage 4 to ``K * d`` channels with a 1x1
  conv and upsamples it bilinearly, so the head is the same in every ablation row.

Figures (``models.profile``, MACs / 1e9; paper in brackets): R34 384x288 3.78 M / 5.21 G
[3.8 M / 5.2 G]; R18 256x256 2.40 M / 1.96 G [2.4 M / 1.9 G]. Ablation rows (R34 384x288,
``amfacpose_ablation_configs``): baseline 3.54 M / 4.65 G [3.3 / 4.70], +AFPN 3.54 / 4.99
[3.5 / 5.0], +DGCB 3.55 / 4.99 [3.6 / 5.0], +SCRM 3.60 / 5.15 [3.6 / 5.2], +SE 3.78 / 5.15
[3.8 / 5.2], +CoordConv 3.78 / 5.21 [3.8 / 5.2]. The AFPN and DGCB steps add fewer parameters
than the paper's +0.2 M / +0.1 M because a 32-wide pyramid is what fits its +0.3 G at 1/2
resolution, so the baseline carries 0.2 M more (the head) to land on the full model's 3.8 M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AFPN",
    "DGCB",
    "SCRM",
    "AMFACPose",
    "AMFACPoseConfig",
    "CoordConv2d",
    "DSBasicBlock",
    "SimCCMLPHead",
    "SqueezeExcite",
    "amfacpose_ablation_configs",
    "amfacpose_r18",
    "amfacpose_r34",
]


@dataclass(frozen=True)
class AMFACPoseConfig:
    """Hyper-parameters of AMFACPose; the defaults are the full R34 384x288 model."""

    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_widths: tuple[int, ...] = (32, 32, 64)
    input_hw: tuple[int, int] = (384, 288)
    num_joints: int = 17
    split_ratio: float = 2.0
    joint_dim: int = 4
    head_hidden: int = 320
    afpn_width: int = 32
    se_reduction: int = 4
    scrm_kernel: int = 7
    afpn: bool = True
    dgcb: bool = True
    scrm: bool = True
    se: bool = True
    coordconv: bool = True

    def __post_init__(self) -> None:
        if any(s % 16 for s in self.input_hw):
            raise ValueError(f"input_hw must be multiples of 16, got {self.input_hw}")
        if self.dgcb and not self.afpn:
            raise ValueError("dgcb refines AFPN levels and needs afpn=True")

    @property
    def bins_wh(self) -> tuple[int, int]:
        """SimCC bins ``(W * k, H * k)``."""
        h, w = self.input_hw
        return round(w * self.split_ratio), round(h * self.split_ratio)


class CoordConv2d(nn.Module):
    """Conv over ``[x, a_x * X + b_x, a_y * Y + b_y]`` with X, Y grids in [-1, 1] (no bias)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.coord_affine = nn.Parameter(torch.tensor([1.0, 0.0, 1.0, 0.0]))  # a_x, b_x, a_y, b_y
        self.conv = nn.Conv2d(cin + 2, cout, kernel, stride, kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        a = self.coord_affine  # a_x, b_x, a_y, b_y
        gx = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype) * a[0] + a[1]
        gy = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype) * a[2] + a[3]
        grid = torch.stack([gx.expand(h, w), gy[:, None].expand(h, w)])  # (2, H, W)
        grid = grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        return self.conv(torch.cat([x, grid], dim=1))


def stem_conv(cin: int, cout: int, stride: int, coord: bool) -> nn.Sequential:
    """3x3 (Coord)Conv2d + BN + Mish."""
    conv: nn.Module = CoordConv2d(cin, cout, 3, stride) if coord else nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.Mish(inplace=True))


class DSConv(nn.Sequential):
    """Depthwise 3x3 (stride) + BN, then pointwise 1x1 + BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class DSBasicBlock(nn.Module):
    """ResNet basic block with both 3x3 convs depthwise-separable; Mish activations."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = DSConv(cin, cout, stride)
        self.conv2 = DSConv(cout, cout)
        self.act = nn.Mish(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool: nn.Module = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + self.shortcut(x))


class SqueezeExcite(nn.Module):
    """SE: GAP -> 1x1 (C/r) -> ReLU -> 1x1 (C) -> sigmoid channel weights."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3), keepdim=True))


class SCRM(nn.Module):
    """Spatial-channel refinement: ``x * sigmoid(BN(Conv1D(GAP x))) * sigmoid(BN(DWConv x))``."""

    def __init__(self, channels: int, spatial_kernel: int = 7) -> None:
        super().__init__()
        k = int(abs(math.log2(channels) + 1) / 2)  # ECA kernel size (gamma 2, b 1), made odd
        k = k if k % 2 else k + 1
        self.channel_conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.channel_bn = nn.BatchNorm1d(channels)
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, channels, spatial_kernel, 1, spatial_kernel // 2, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        v = self.channel_conv(x.mean(dim=(2, 3)).unsqueeze(1)).reshape(-1, c)  # (N, C)
        m_c = torch.sigmoid(self.channel_bn(v)).reshape(-1, c, 1, 1)
        return x * m_c * torch.sigmoid(self.spatial(x))


class DGCB(nn.Module):
    """Dual-gate context block (Eq. 9-11): ``x * ReLU(W_c GAP x) * sigmoid(W_g GAP x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.context = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))
        self.gate = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        return x * self.context(g) * self.gate(g)


def conv1x1_bn_mish(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Mish(inplace=True))


class AFPN(nn.Module):
    """Adaptive FPN: per-level 1x1 + DGCB, bilinear upsample to the finest level, modulate, fuse."""

    def __init__(self, in_widths: tuple[int, ...], width: int, out_channels: int, dgcb: bool) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_widths)
        self.dgcbs = nn.ModuleList(DGCB(width) for _ in in_widths) if dgcb else None
        self.fuse = conv1x1_bn_mish(width * len(in_widths), out_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        levels = []
        for i, (lateral, f) in enumerate(zip(self.laterals, feats, strict=True)):
            p = lateral(f)
            up_p = p if i == 0 else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            if self.dgcbs is not None:
                d = self.dgcbs[i](p)
                up_d = d if i == 0 else F.interpolate(d, size=size, mode="bilinear", align_corners=False)
                up_p = up_p * up_d  # Eq. (8): F_i = up(P_i) * up(D_i)
            levels.append(up_p)
        return self.fuse(torch.cat(levels, dim=1))


class PlainNeck(nn.Module):
    """Ablation baseline neck: last stage -> 1x1 conv -> bilinear upsample to the finest level."""

    def __init__(self, cin: int, out_channels: int) -> None:
        super().__init__()
        self.proj = conv1x1_bn_mish(cin, out_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        return F.interpolate(self.proj(feats[-1]), size=size, mode="bilinear", align_corners=False)


class SimCCMLPHead(nn.Module):
    """Per-joint x / y MLPs with Mish over SimCC bins.

    Input ``(N, K*d, H', W')``; each joint's ``d`` maps are averaged over H' for the x-MLP
    (``d*W'`` inputs) and over W' for the y-MLP; outputs ``(N, K, W*k)`` and ``(N, K, H*k)``.
    """

    def __init__(
        self, num_joints: int, joint_dim: int, feat_hw: tuple[int, int], bins_wh: tuple[int, int], hidden: int
    ) -> None:
        super().__init__()
        self.num_joints, self.joint_dim = num_joints, joint_dim
        fh, fw = feat_hw
        self.mlp_x = nn.Sequential(nn.Linear(joint_dim * fw, hidden), nn.Mish(), nn.Linear(hidden, bins_wh[0]))
        self.mlp_y = nn.Sequential(nn.Linear(joint_dim * fh, hidden), nn.Mish(), nn.Linear(hidden, bins_wh[1]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        j = x.reshape(-1, self.num_joints, self.joint_dim, h, w)
        x_profile = j.mean(dim=3).flatten(2)  # (N, K, d*W')
        y_profile = j.mean(dim=4).flatten(2)  # (N, K, d*H')
        return self.mlp_x(x_profile), self.mlp_y(y_profile)


class AMFACPose(nn.Module):
    """AMFACPose top-down network: ``(N, 3, H, W)`` -> ``(x_logits (N, K, W*k), y_logits (N, K, H*k))``."""

    def __init__(self, cfg: AMFACPoseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stem: list[nn.Module] = []
        cin = 3
        for i, c in enumerate(cfg.stem_widths):
            stem.append(stem_conv(cin, c, 2 if i == 0 else 1, cfg.coordconv))
            cin = c
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        for s, (depth, width) in enumerate(zip(cfg.depths, cfg.widths, strict=True)):
            blocks: list[nn.Module] = [
                DSBasicBlock(cin if b == 0 else width, width, 2 if (b == 0 and s > 0) else 1) for b in range(depth)
            ]
            if cfg.scrm:
                blocks.append(SCRM(width, cfg.scrm_kernel))
            if cfg.se:
                blocks.append(SqueezeExcite(width, cfg.se_reduction))
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        out_channels = cfg.num_joints * cfg.joint_dim
        self.neck: nn.Module = (
            AFPN(cfg.widths, cfg.afpn_width, out_channels, cfg.dgcb) if cfg.afpn else PlainNeck(cin, out_channels)
        )
        h, w = cfg.input_hw
        self.head = SimCCMLPHead(cfg.num_joints, cfg.joint_dim, (h // 2, w // 2), cfg.bins_wh, cfg.head_hidden)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised RGB -> fused joint maps ``(N, K*d, H/2, W/2)``."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.neck(feats)

    def forward_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint maps -> raw SimCC logits ``(N, K, W*k)``, ``(N, K, H*k)``."""
        return self.head(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def amfacpose_r18(input_hw: tuple[int, int] = (256, 256)) -> AMFACPose:
    """AMFACPose with the ResNet18 layout (paper: 256x256, 2.4 M, 1.9 G, COCO AP 72.1)."""
    return AMFACPose(AMFACPoseConfig(depths=(2, 2, 2, 2), input_hw=input_hw))


def amfacpose_r34(input_hw: tuple[int, int] = (384, 288)) -> AMFACPose:
    """AMFACPose with the ResNet34 layout (paper: 384x288, 3.8 M, 5.2 G, COCO AP 76.6)."""
    return AMFACPose(AMFACPoseConfig(depths=(3, 4, 6, 3), input_hw=input_hw))


def amfacpose_ablation_configs(input_hw: tuple[int, int] = (384, 288)) -> dict[str, AMFACPoseConfig]:
    """Rows of the paper's ablation (Table 6, R34), each adding one component to the previous."""
    base = AMFACPoseConfig(input_hw=input_hw, afpn=False, dgcb=False, scrm=False, se=False, coordconv=False)
    rows = {"baseline": base}
    rows["+AFPN"] = replace(rows["baseline"], afpn=True)
    rows["+DGCB"] = replace(rows["+AFPN"], dgcb=True)
    rows["+SCRM"] = replace(rows["+DGCB"], scrm=True)
    rows["+SE"] = replace(rows["+SCRM"], se=True)
    rows["+CoordConv"] = replace(rows["+SE"], coordconv=True)
    return rows
