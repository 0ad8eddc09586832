"""Model complexity as the pose papers report it: parameters and multiply-accumulates (MACs).

The seed papers quote "GFLOPs" that are really multiply-accumulate counts from mmcv / fvcore-style
counters (HRNet-W32 at 256x192 = 7.1 G, 28.5 M parameters). ``count_macs`` reproduces that
convention with ``torch.utils.flop_counter.FlopCounterMode``: it counts the FLOPs of convolutions
and matrix products (2 per multiply-accumulate) and halves them. Element-wise work (BN, activations,
pooling, interpolation) is not counted, as fvcore also leaves most of it out; on convolutional
pose networks that work is well under 2 % of the total.

Units: HRNet's own ``get_model_summary`` (which LE-HRNet and most HRNet derivatives inherit)
divides by 1024**3, so its "7.1 G" for HRNet-W32 256x192 is 7.645e9 MACs / 2**30 = 7.12.
mmcv / fvcore / thop / ptflops divide by 1e9. Compare against a paper with the unit its counter
used: ``count_macs(...) / GIBI`` for HRNet-family papers, ``/ GIGA`` otherwise.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["GIBI", "GIGA", "count_macs", "count_params"]

GIGA = 10**9
GIBI = 2**30


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...], *, on_meta: bool = True) -> int:
    """Multiply-accumulates of one forward pass on an input of ``input_shape``.

    Args:
        model: any module taking one image tensor.
        input_shape: full input shape including batch, e.g. ``(1, 3, 256, 192)``.
        on_meta: count on a weightless copy on the ``meta`` device (shapes only, no arithmetic,
            the model itself is untouched); False runs a real forward on a zero tensor.

    Returns:
        MACs (FLOPs of conv / matmul ops divided by 2) for the whole batch.
    """
    if on_meta:
        target = copy.deepcopy(model).to(torch.device("meta"))
        device = torch.device("meta")
    else:
        target = model
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = target.training
    target.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            target(torch.zeros(input_shape, device=device))
    finally:
        target.train(was_training)
    return int(counter.get_total_flops()) // 2
