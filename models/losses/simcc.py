"""KLDDiscretLoss: KL divergence between SimCC target distributions and predicted bins.

AMFACPose Sec. 3.6: for joint ``i`` with weight ``w_i``,
``L_i = w_i * (KL(t_x || softmax(x / T)) + KL(t_y || softmax(y / T)))`` and the loss is the mean
over joints (and over the batch). The targets are label-smoothed,
``t <- (1 - eps) * t + eps / num_bins``, before the divergence.

The paper's value of ``T`` was lost in extraction; the text says it "moderately sharpens" the
distribution (``T < 1``). The default ``T = 0.1`` is the closest public method's: RTMPose's
``KLDiscretLoss(beta=10)`` in mmpose multiplies the logits by ``beta = 1 / T = 10``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.codecs.simcc import DEFAULT_TEMPERATURE

__all__ = ["KLDDiscretLoss"]


class KLDDiscretLoss(nn.Module):
    """KL(target || softmax(logits / T)) per axis, summed over bins, weighted per joint.

    Args:
        temperature: softmax temperature ``T``.
        label_smoothing: uniform mass ``eps`` mixed into the targets.
        joint_weights: optional ``(K,)`` static per-joint weights (e.g. higher for wrists).
    """

    joint_weights: torch.Tensor | None

    def __init__(
        self,
        temperature: float = DEFAULT_TEMPERATURE,
        label_smoothing: float = 0.1,
        joint_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0 or not 0.0 <= label_smoothing < 1.0:
            raise ValueError("temperature must be > 0 and label_smoothing in [0, 1)")
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        jw = torch.as_tensor(joint_weights, dtype=torch.float32) if joint_weights is not None else None
        self.register_buffer("joint_weights", jw, persistent=False)

    def _axis_kl(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(N, K, B)`` logits and targets -> ``(N, K)`` KL in nats."""
        num_bins = logits.shape[-1]
        t = (1.0 - self.label_smoothing) * target + self.label_smoothing / num_bins
        log_p = F.log_softmax(logits.float() / self.temperature, dim=-1)
        return (t * (torch.log(t.clamp_min(1e-12)) - log_p)).sum(dim=-1)

    def forward(
        self,
        x_logits: torch.Tensor,
        y_logits: torch.Tensor,
        target_x: torch.Tensor,
        target_y: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            x_logits: ``(N, K, W*k)`` raw network output; ``y_logits``: ``(N, K, H*k)``.
            target_x: ``(N, K, W*k)`` codec targets (rows sum to 1); ``target_y``: ``(N, K, H*k)``.
            weights: ``(N, K)`` visibility weights from the codec (0 drops a joint).
        """
        per_joint = self._axis_kl(x_logits, target_x) + self._axis_kl(y_logits, target_y)
        w = weights.float()
        if self.joint_weights is not None:
            w = w * self.joint_weights
        return (per_joint * w).mean()
