"""ER-Pose: keypoint-driven, NMS-free single-stage multi-person pose estimation.

Paper: ER-Pose, "Efficient-Regression Pose" (the title is lost in the extracted text
``shared/papers/er-pose.txt``; section and table numbers below refer to it).

The network is a YOLOv8 body (CSPDarknet backbone of Conv-BN-SiLU, C2f and SPPF blocks; PAN neck
producing P3/P4/P5 at strides 8/16/32) whose box branch is removed (Sec. III-A). Each grid cell of
a head level predicts one person: a confidence logit, 17 keypoint offsets (x, y) and 17 visibility
logits. Two heads of identical structure sit on the same levels (Sec. III-A, III-D, YOLOv10-style
dual assignment): the one-to-many head (MAH, top-10 cells per person) for dense supervision and the
one-to-one head (SAH, one cell per person) that alone runs at inference, so no NMS is needed.

Head levels follow Table V: n uses {P4, P5}; s, m, l use {P3, P4, P5}. The neck stays the full
YOLOv8 PAN for every scale (n still computes P3, which feeds the bottom-up path to P4).

Output layout (eval / ONNX): one float32 tensor ``(N, A, 1 + 2K + K)`` with K = 17, i.e. 52
channels per anchor::

    [:, :, 0]          person confidence logit
    [:, :, 1 : 1+2K]   keypoint offsets, interleaved (dx_0, dy_0, dx_1, dy_1, ...), grid units
    [:, :, 1+2K :]     keypoint visibility logits (K)

Anchors are ordered by head level (finest first), then row-major (y, x) inside a level, so
A = sum_l (S / stride_l)^2 (n at 640: 40^2 + 20^2 = 2000; s/m/l at 640: 8400). All values are
raw (no sigmoid). The codec ``models.codecs.erpose`` owns the decode: keypoint in input pixels =
(cell centre in grid units + offset) * stride, cell centre = (x + 0.5, y + 0.5).

Choices where the text is silent or garbled (all config fields):

* Head blocks. Fig. 3's caption survives only as "... while keypoint regression employs standard
  convolution to preserve sufficient representational capacity"; we read it as the YOLOv10
  recipe: the confidence branch uses depthwise-separable 3x3 blocks (YOLOv10 ``v10Detect`` cls
  branch, width ``max(C_first, 1)`` = C of the finest head level), the keypoint branch is the
  YOLOv8-Pose ``cv4`` branch (two standard 3x3 Conv-BN-SiLU of width ``max(C_first // 4, 3K)``
  then a 1x1 conv) emitting offsets and visibility together.
* YOLOv10 feeds the one-to-one head detached features during training
  (``detach_one_to_one=True``): the backbone learns from the one-to-many head only.
* Initialisation: confidence biases start at the prior ``conf_prior`` = 0.01 (RetinaNet rule) and
  the keypoint output conv near zero, so every cell first predicts its keypoints at its centre.
* Parameter counts. With these choices the deploy model (backbone + neck + one-to-one head, the
  model YOLOv10 and ONNX report) has 2.58 / 9.69 / 23.04 / 39.46 M parameters for n / s / m / l
  against the paper's 2.53 / 9.69 / 23.36 / 39.95 M (+1.9 / 0.0 / -1.4 / -1.2 %). The training
  model also holds the one-to-many head (+0.32 / 0.67 / 0.96 / 1.41 M). Multiply-accumulates at
  640 (deploy): 2.83 / 11.38 / 33.34 / 72.58 G (the paper gives none).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "INPUT_SIZE",
    "C2f",
    "Conv",
    "ERPose",
    "ERPoseConfig",
    "ERPoseHead",
    "erpose_l",
    "erpose_m",
    "erpose_n",
    "erpose_s",
]

INPUT_SIZE = 640
LEVEL_STRIDES: dict[int, int] = {3: 8, 4: 16, 5: 32}


@dataclass(frozen=True)
class ERPoseConfig:
    """One ER-Pose family member.

    ``depth_multiple`` scales the number of bottlenecks per C2f, ``width_multiple`` the channels
    (capped at ``max_channels`` before scaling), as in YOLOv8's n/s/m/l table.
    """

    depth_multiple: float = 0.33
    width_multiple: float = 0.25
    max_channels: int = 1024
    head_levels: tuple[int, ...] = (4, 5)
    num_keypoints: int = 17
    input_size: int = INPUT_SIZE
    detach_one_to_one: bool = True
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    conf_prior: float = 0.01

    def __post_init__(self) -> None:
        if not self.head_levels or any(level not in LEVEL_STRIDES for level in self.head_levels):
            raise ValueError(f"head_levels must be a non-empty subset of (3, 4, 5): {self.head_levels}")
        if tuple(sorted(set(self.head_levels))) != self.head_levels:
            raise ValueError(f"head_levels must be sorted and unique: {self.head_levels}")
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32: {self.input_size}")

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride in input pixels of each head level, finest first."""
        return tuple(LEVEL_STRIDES[level] for level in self.head_levels)

    @property
    def channels_per_anchor(self) -> int:
        """1 confidence + 2K offsets + K visibility logits."""
        return 1 + 3 * self.num_keypoints

    def channels(self, c: int) -> int:
        """YOLOv8 width rule: ``ceil(min(c, max_channels) * width / 8) * 8``."""
        return int(math.ceil(min(c, self.max_channels) * self.width_multiple / 8) * 8)

    def depth(self, n: int) -> int:
        """YOLOv8 depth rule: ``max(round(n * depth), 1)``."""
        return max(round(n * self.depth_multiple), 1)


class Conv(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm (``cfg.bn_eps``, ``cfg.bn_momentum``) -> SiLU, 'same' padding."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, *, cfg: ERPoseConfig) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=cfg.bn_eps, momentum=cfg.bn_momentum),
            nn.SiLU(inplace=True),
        )


class Bottleneck(nn.Module):
    """Two 3x3 Convs with an optional residual (YOLOv8 ``Bottleneck``, expansion 1.0)."""

    def __init__(self, c: int, shortcut: bool, cfg: ERPoseConfig) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3, cfg=cfg)
        self.cv2 = Conv(c, c, 3, cfg=cfg)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convs (YOLOv8): split, n bottlenecks, concat every stage, 1x1 fuse."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool, cfg: ERPoseConfig) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.c, 1, cfg=cfg)
        self.cv2 = Conv((2 + n) * self.c, c_out, 1, cfg=cfg)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut, cfg) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        ys = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: 1x1 halve, three chained 5x5 max-pools, concat, 1x1."""

    def __init__(self, c_in: int, c_out: int, cfg: ERPoseConfig, k: int = 5) -> None:
        super().__init__()
        c_mid = c_in // 2
        self.cv1 = Conv(c_in, c_mid, 1, cfg=cfg)
        self.cv2 = Conv(4 * c_mid, c_out, 1, cfg=cfg)
        self.pool = nn.MaxPool2d(k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        y0 = self.cv1(x)
        y1 = self.pool(y0)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((y0, y1, y2, self.pool(y2)), dim=1))


class Backbone(nn.Module):
    """CSPDarknet (YOLOv8): returns P3, P4, P5 (strides 8, 16, 32)."""

    def __init__(self, cfg: ERPoseConfig) -> None:
        super().__init__()
        ch, d = cfg.channels, cfg.depth
        self.stem = nn.Sequential(
            Conv(3, ch(64), 3, 2, cfg=cfg),
            Conv(ch(64), ch(128), 3, 2, cfg=cfg),
            C2f(ch(128), ch(128), d(3), True, cfg),
        )
        self.stage3 = nn.Sequential(Conv(ch(128), ch(256), 3, 2, cfg=cfg), C2f(ch(256), ch(256), d(6), True, cfg))
        self.stage4 = nn.Sequential(Conv(ch(256), ch(512), 3, 2, cfg=cfg), C2f(ch(512), ch(512), d(6), True, cfg))
        self.stage5 = nn.Sequential(
            Conv(ch(512), ch(1024), 3, 2, cfg=cfg),
            C2f(ch(1024), ch(1024), d(3), True, cfg),
            SPPF(ch(1024), ch(1024), cfg),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p3 = self.stage3(self.stem(x))
        p4 = self.stage4(p3)
        return p3, p4, self.stage5(p4)


class PAN(nn.Module):
    """YOLOv8 PAN neck: top-down (upsample + concat + C2f), then bottom-up (stride-2 Conv + C2f)."""

    def __init__(self, cfg: ERPoseConfig) -> None:
        super().__init__()
        ch, n = cfg.channels, cfg.depth(3)
        c3, c4, c5 = ch(256), ch(512), ch(1024)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(c5 + c4, c4, n, False, cfg)
        self.td3 = C2f(c4 + c3, c3, n, False, cfg)
        self.down3 = Conv(c3, c3, 3, 2, cfg=cfg)
        self.bu4 = C2f(c3 + c4, c4, n, False, cfg)
        self.down4 = Conv(c4, c4, 3, 2, cfg=cfg)
        self.bu5 = C2f(c4 + c5, c5, n, False, cfg)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        p3, p4, p5 = feats
        t4 = self.td4(torch.cat((self.up(p5), p4), dim=1))
        n3 = self.td3(torch.cat((self.up(t4), p3), dim=1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), dim=1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), dim=1))
        return n3, n4, n5


class ERPoseHead(nn.Module):
    """Per-level confidence branch (depthwise-separable) and keypoint branch (standard convs).

    Input: the selected PAN levels, finest first. Output ``(N, A, 1 + 3K)`` raw values, anchors
    concatenated over levels in row-major order (see the module docstring for the channel layout).
    """

    def __init__(self, in_channels: tuple[int, ...], cfg: ERPoseConfig) -> None:
        super().__init__()
        k = cfg.num_keypoints
        c_conf = max(in_channels[0], 1)
        c_kpt = max(in_channels[0] // 4, 3 * k)
        self.num_keypoints = k
        self.conf = nn.ModuleList(
            nn.Sequential(
                Conv(c, c, 3, groups=c, cfg=cfg),
                Conv(c, c_conf, 1, cfg=cfg),
                Conv(c_conf, c_conf, 3, groups=c_conf, cfg=cfg),
                Conv(c_conf, c_conf, 1, cfg=cfg),
                nn.Conv2d(c_conf, 1, 1),
            )
            for c in in_channels
        )
        self.kpt = nn.ModuleList(
            nn.Sequential(Conv(c, c_kpt, 3, cfg=cfg), Conv(c_kpt, c_kpt, 3, cfg=cfg), nn.Conv2d(c_kpt, 3 * k, 1))
            for c in in_channels
        )
        self._init_bias(cfg.conf_prior)

    def _init_bias(self, prior: float) -> None:
        for branch in self.conf:
            last = list(branch.children())[-1]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            nn.init.constant_(last.bias, -math.log((1.0 - prior) / prior))
        for branch in self.kpt:
            last = list(branch.children())[-1]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            nn.init.zeros_(last.bias)
            nn.init.normal_(last.weight, std=1e-3)

    def forward(self, feats: list[Tensor]) -> Tensor:
        outs = []
        for x, conf, kpt in zip(feats, self.conf, self.kpt, strict=True):
            y = torch.cat((conf(x), kpt(x)), dim=1)  # (N, 1 + 3K, H, W); kpt: 2K offsets then K vis
            outs.append(y.flatten(2).transpose(1, 2))  # (N, H*W, 1 + 3K)
        return torch.cat(outs, dim=1)


class ERPose(nn.Module):
    """ER-Pose network: backbone -> PAN -> (one-to-many, one-to-one) heads.

    ``forward`` in training mode returns ``(one_to_many, one_to_one)``, each ``(N, A, 1 + 3K)``;
    in eval mode (and in ONNX export) it returns only the one-to-one tensor ``(N, A, 1 + 3K)``.
    Input: ``(N, 3, S, S)`` float RGB, values in [0, 1], S = ``config.input_size``.
    """

    def __init__(self, config: ERPoseConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.neck = PAN(config)
        pan_channels = {3: config.channels(256), 4: config.channels(512), 5: config.channels(1024)}
        head_in = tuple(pan_channels[level] for level in config.head_levels)
        self.one_to_many = ERPoseHead(head_in, config)
        self.one_to_one = copy.deepcopy(self.one_to_many)
        self._levels = [level - 3 for level in config.head_levels]

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride in input pixels of each head level, finest first."""
        return self.config.strides

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """PAN outputs at the head levels, finest first: ``(N, C_l, S / stride_l, S / stride_l)``."""
        pan = self.neck(self.backbone(x))
        return [pan[i] for i in self._levels]

    def forward_head(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Both heads' raw outputs ``(one_to_many, one_to_one)``, each ``(N, A, 1 + 3K)``."""
        o2o_in = [f.detach() for f in feats] if self.config.detach_one_to_one else feats
        return self.one_to_many(feats), self.one_to_one(o2o_in)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.forward_features(x)
        if self.training:
            return self.forward_head(feats)
        return self.one_to_one(feats)


def _build(depth: float, width: float, max_channels: int, levels: tuple[int, ...], input_size: int) -> ERPose:
    return ERPose(
        ERPoseConfig(
            depth_multiple=depth,
            width_multiple=width,
            max_channels=max_channels,
            head_levels=levels,
            input_size=input_size,
        )
    )


def erpose_n(input_size: int = INPUT_SIZE) -> ERPose:
    """ER-Pose-n: depth 0.33, width 0.25, heads on {P4, P5}."""
    return _build(0.33, 0.25, 1024, (4, 5), input_size)


def erpose_s(input_size: int = INPUT_SIZE) -> ERPose:
    """ER-Pose-s: depth 0.33, width 0.50, heads on {P3, P4, P5}."""
    return _build(0.33, 0.50, 1024, (3, 4, 5), input_size)


def erpose_m(input_size: int = INPUT_SIZE) -> ERPose:
    """ER-Pose-m: depth 0.67, width 0.75, max channels 768, heads on {P3, P4, P5}."""
    return _build(0.67, 0.75, 768, (3, 4, 5), input_size)


def erpose_l(input_size: int = INPUT_SIZE) -> ERPose:
    """ER-Pose-l: depth 1.0, width 1.0, max channels 512, heads on {P3, P4, P5}."""
    return _build(1.0, 1.0, 512, (3, 4, 5), input_size)
