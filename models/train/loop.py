"""A minimal, model-agnostic training step.

The caller owns the data, targets and loss: ``loss_fn`` receives the raw network output (a tensor
or a tuple of tensors) and returns a scalar. Nothing here knows about codecs or pose formats, so
top-down (heatmap / SimCC) and single-stage trainers share it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["LossFn", "train_step"]

LossFn = Callable[[Any], torch.Tensor]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    loss_fn: LossFn,
    *,
    max_grad_norm: float | None = None,
) -> float:
    """One optimisation step on a batch; returns the loss value before the update.

    Args:
        model: network, put in train mode here.
        optimizer: optimiser over ``model``'s parameters.
        images: ``(N, 3, H, W)`` normalised input batch.
        loss_fn: raw model output -> scalar loss.
        max_grad_norm: clip the global gradient L2 norm to this value when given.

    Raises:
        FloatingPointError: the loss is NaN or infinite (nothing is updated).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(images))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss: {loss.item()}")
    loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return float(loss.detach())
