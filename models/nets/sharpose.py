"""SHaRPose: sparse high-resolution representation for top-down pose (coarse-to-fine ViT, quality gate).

Paper: An, Zhao, Gong, Wang, Wang, Yang, "SHaRPose: Sparse High-Resolution Representation for
Human Pose Estimation", AAAI 2024 (full text in ``shared/papers/sharpose.md``).

Network (input ``(N, 3, H, W)`` normalised RGB crop):

* coarse stage: the crop resampled by ``s_c = 0.5`` (2x2 average, what bilinear resampling by 1/2
  computes) is cut into 16x16 patches (``N_c = H/32 * W/32``), each linearly projected (a 16x16
  stride-16 conv) plus a learned position embedding; ``M = 17`` learned keypoint tokens and one
  quality token are appended and a ``K = 12`` layer pre-norm ViT runs over all of them (Eq. 1-2);
* keypoint decoder (shared by both stages, Eq. 3): ``LN -> Linear(D, h*w/2) -> LN -> Linear(h*w/2,
  h*w)`` on each keypoint token -> heatmaps at 1/4 of the input;
* quality predictor (Eq. 4): ``Q = sigmoid(MLP(q_K))`` in (0, 1);
* patch relevance (Eq. 5-7): in each layer the attention of every keypoint token to every coarse
  visual token, accumulated with an EMA over the layers (beta = 0.99, from zero) and averaged over
  heads and keypoints -> one score per coarse patch (``patch_scores``);
* fine stage: the top ``floor(alpha * N_c)`` patches by score are split into ``(s_f / s_c)^2 = 4``
  fine 16x16 patches of the full-resolution crop; each fine token is the fine patch embedding (the
  same projection, its own position embedding) plus ``MLP(v_K^j)`` of its coarse output token; the
  other coarse output tokens are passed on unchanged (Eq. 8). The same ViT (shared weights) and the
  same decoder run on them and the keypoint tokens (no quality token).

Serving splits the network into two graphs (``CoarseGraph``, ``FineGraph``) so the fine stage can
run as a batch of its own on only the crops whose ``Q < Q_thres`` (``service.backends.gated``).
The visual tokens are permutation-equivariant, so the fine stage orders them refined-first.

Choices the text leaves open: the decoder's hidden width (half the heatmap size, as TokenPose's
``mlp_head``; it reproduces the parameter growth from 256x192 to 384x288), one patch projection for
both scales with separate position embeddings, the reuse MLP ``LN -> Linear -> GELU -> Linear`` of
width D, the last decoder layer initialised near zero (heatmaps start flat).

Figures (``models.profile``; MACs / 1e9 with both stages run, paper in brackets): Small 256x192
27.45 M / 4.78 G [28.4 M / 4.9 G], Small 384x288 47.48 M / 10.71 G [48.3 / 11.0], Base 256x192
93.53 M / 16.69 G [93.9 / 17.1], Base 384x288 114.41 M / 31.92 G [118.1 / 32.9]; the coarse stage
alone, Base 256x192: 5.82 G [5.7, "Coarse-None"]. Pinned in ``tests/unit/test_sharpose.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CoarseGraph",
    "FineGraph",
    "SHaRPose",
    "SHaRPoseConfig",
    "coarse_only",
    "sharpose_b",
    "sharpose_b_384",
    "sharpose_s",
    "sharpose_s_384",
]

COARSE_OUTPUTS = ("heatmaps", "quality", "tokens", "patch_scores")
FINE_INPUTS = ("input", "tokens", "patch_scores")


@dataclass(frozen=True)
class SHaRPoseConfig:
    """Hyper-parameters (Table 2); the defaults are SHaRPose-Small at 256x192."""

    dim: int = 384
    alpha: float = 0.5
    input_hw: tuple[int, int] = (256, 192)
    depth: int = 12
    head_dim: int = 64
    patch: int = 16
    coarse_scale: float = 0.5
    fine_scale: float = 1.0
    num_joints: int = 17
    mlp_ratio: float = 4.0
    beta: float = 0.99
    decoder_hidden_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.fine_scale != 1.0:
            raise ValueError("the fine stage runs on the crop itself (s_f = 1.0)")
        ratio = self.fine_scale / self.coarse_scale
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(f"s_f / s_c must be a whole number, got {ratio}")
        if any(s % (self.patch * self.split) for s in self.input_hw):
            raise ValueError(f"input_hw must be multiples of {self.patch * self.split}, got {self.input_hw}")
        if self.dim % self.head_dim:
            raise ValueError("dim must be a multiple of head_dim")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError("alpha must lie in [0, 1]")

    @property
    def split(self) -> int:
        """Fine patches per coarse patch side (s_f / s_c)."""
        return round(self.fine_scale / self.coarse_scale)

    @property
    def heads(self) -> int:
        return self.dim // self.head_dim

    @property
    def coarse_grid(self) -> tuple[int, int]:
        h, w = self.input_hw
        step = self.patch * self.split
        return h // step, w // step

    @property
    def fine_grid(self) -> tuple[int, int]:
        h, w = self.input_hw
        return h // self.patch, w // self.patch

    @property
    def num_coarse(self) -> int:
        """N_c."""
        gh, gw = self.coarse_grid
        return gh * gw

    @property
    def num_refined(self) -> int:
        """N_h = floor(alpha * N_c): coarse patches split into fine ones."""
        return math.floor(self.alpha * self.num_coarse + 1e-9)

    @property
    def num_fine_visual(self) -> int:
        """Visual tokens of the fine stage: split^2 * N_h + (N_c - N_h)."""
        return self.split**2 * self.num_refined + self.num_coarse - self.num_refined

    @property
    def heatmap_hw(self) -> tuple[int, int]:
        h, w = self.input_hw
        return h // 4, w // 4


class Attention(nn.Module):
    """Multi-head self-attention that also returns its attention probabilities ``(N, heads, T, T)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out), attn


class Block(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, attn = self.attn(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


def _children(cfg: SHaRPoseConfig) -> torch.Tensor:
    """(N_c, split^2) fine-patch indices (row-major fine grid) of every coarse patch."""
    gh, gw = cfg.coarse_grid
    s = cfg.split
    fine_w = gw * s
    rows = []
    for j in range(gh * gw):
        r, c = divmod(j, gw)
        rows.append([(r * s + a) * fine_w + (c * s + b) for a in range(s) for b in range(s)])
    return torch.tensor(rows, dtype=torch.int64)


def _take(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens (N, T, D)`` at ``index (N, k)`` -> ``(N, k, D)``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class SHaRPose(nn.Module):
    """``forward(x)`` runs both stages: ``(coarse heatmaps, fine heatmaps, quality (N,))``."""

    children_index: torch.Tensor

    def __init__(self, cfg: SHaRPoseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embed = nn.Conv2d(3, d, cfg.patch, cfg.patch)
        self.pos_coarse = nn.Parameter(torch.zeros(1, cfg.num_coarse, d))
        self.pos_fine = nn.Parameter(torch.zeros(1, cfg.fine_grid[0] * cfg.fine_grid[1], d))
        self.keypoint_tokens = nn.Parameter(torch.zeros(1, cfg.num_joints, d))
        self.quality_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        hm_h, hm_w = cfg.heatmap_hw
        hidden = int(hm_h * hm_w * cfg.decoder_hidden_ratio)
        self.decoder = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, hm_h * hm_w)
        )
        self.quality_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.reuse = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.register_buffer("children_index", _children(cfg), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.pos_coarse, self.pos_fine, self.keypoint_tokens, self.quality_token):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = self.decoder[-1]
        assert isinstance(last, nn.Linear)
        nn.init.normal_(last.weight, std=1e-3)

    # -- pieces ----------------------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor, num_visual: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The shared ViT; with ``num_visual``, also the EMA keypoint-to-patch score ``(N, num_visual)``."""
        acc: torch.Tensor | None = None
        m = self.cfg.num_joints
        beta = self.cfg.beta
        for block in self.blocks:
            tokens, attn = block(tokens)
            if num_visual is not None:
                a = attn[:, :, num_visual : num_visual + m, :num_visual]  # (N, heads, M, N_c), Eq. 5
                acc = (1 - beta) * a if acc is None else beta * acc + (1 - beta) * a  # Eq. 6
        scores = acc.mean(dim=(1, 2)) if acc is not None else None  # Eq. 7
        return tokens, scores

    def decode(self, keypoint_tokens: torch.Tensor) -> torch.Tensor:
        """``(N, M, D)`` -> heatmaps ``(N, M, H/4, W/4)``."""
        n = keypoint_tokens.shape[0]
        return self.decoder(keypoint_tokens).reshape(n, self.cfg.num_joints, *self.cfg.heatmap_hw)

    def coarse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coarse stage: ``(heatmaps, quality (N,), visual tokens v_K (N, N_c, D), patch scores (N, N_c))``."""
        cfg = self.cfg
        n = x.shape[0]
        xc = F.avg_pool2d(x, cfg.split) if cfg.split > 1 else x
        visual = self.patch_embed(xc).flatten(2).transpose(1, 2) + self.pos_coarse
        tokens = torch.cat(
            [visual, self.keypoint_tokens.expand(n, -1, -1), self.quality_token.expand(n, -1, -1)], dim=1
        )
        out, scores = self.encode(tokens, cfg.num_coarse)
        assert scores is not None
        nc, m = cfg.num_coarse, cfg.num_joints
        heatmaps = self.decode(out[:, nc : nc + m])
        quality = torch.sigmoid(self.quality_head(out[:, -1])).squeeze(-1)
        return heatmaps, quality, out[:, :nc], scores

    def fine_tokens(self, x: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The fine stage's visual tokens (Eq. 8): ``split^2 * N_h`` refined ones (highest-scoring
        coarse patches first), then the other ``N_c - N_h`` coarse tokens unchanged."""
        cfg = self.cfg
        n, d = x.shape[0], cfg.dim
        nh, rr = cfg.num_refined, cfg.split**2
        order = torch.topk(scores, cfg.num_coarse, dim=1).indices
        selected, rest = order[:, :nh], order[:, nh:]
        fine_all = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_fine  # (N, N_f, D)
        fine = _take(fine_all, self.children_index[selected].reshape(n, nh * rr))
        reuse = self.reuse(_take(tokens, selected))  # (N, N_h, D)
        refined = fine + reuse.unsqueeze(2).expand(n, nh, rr, d).reshape(n, nh * rr, d)
        return torch.cat([refined, _take(tokens, rest)], dim=1)

    def fine(self, x: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Fine stage: heatmaps ``(N, M, H/4, W/4)`` from the crop and the coarse stage's tokens and scores."""
        n = x.shape[0]
        visual = self.fine_tokens(x, tokens, scores)
        out, _ = self.encode(torch.cat([visual, self.keypoint_tokens.expand(n, -1, -1)], dim=1))
        return self.decode(out[:, -self.cfg.num_joints :])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heatmaps, quality, tokens, scores = self.coarse(x)
        return heatmaps, self.fine(x, tokens, scores), quality


class CoarseGraph(nn.Module):
    """Served graph 1: ``input -> (heatmaps, quality, tokens, patch_scores)``."""

    def __init__(self, model: SHaRPose) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.coarse(x)


class FineGraph(nn.Module):
    """Served graph 2: ``(input, tokens, patch_scores) -> heatmaps``."""

    def __init__(self, model: SHaRPose) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.model.fine(x, tokens, scores)


def sharpose_s(input_hw: tuple[int, int] = (256, 192)) -> SHaRPose:
    """SHaRPose-Small: dim 384, alpha 0.5."""
    return SHaRPose(SHaRPoseConfig(dim=384, alpha=0.5, input_hw=input_hw))


def sharpose_s_384() -> SHaRPose:
    return sharpose_s((384, 288))


def sharpose_b(input_hw: tuple[int, int] = (256, 192), alpha: float = 0.4) -> SHaRPose:
    """SHaRPose-Base: dim 768, alpha 0.4 at 256x192 (0.3 at 384x288)."""
    return SHaRPose(SHaRPoseConfig(dim=768, alpha=alpha, input_hw=input_hw))


def sharpose_b_384() -> SHaRPose:
    return sharpose_b((384, 288), alpha=0.3)


def coarse_only(factory_name: str) -> nn.Module:
    """The coarse stage of a catalogue factory alone (the paper's "Coarse-None" row)."""
    factories = {"sharpose-s": sharpose_s, "sharpose-b": sharpose_b, "sharpose-s-384": sharpose_s_384}
    factories["sharpose-b-384"] = sharpose_b_384
    return CoarseGraph(factories[factory_name]())
