"""The One-Euro filter (Casiez, Roussel & Vogel, CHI 2012), vectorised over any array of values.

A first-order low-pass filter whose cutoff rises with speed: slow motion (jitter) is smoothed
hard, fast motion keeps little lag. Per update, with `dt` the time since the previous sample:

    alpha(fc) = 1 / (1 + tau / dt),   tau = 1 / (2 pi fc)
    dx_hat    = lowpass((x - x_prev) / dt, alpha(d_cutoff))   (the speed from the raw samples, smoothed)
    fc        = min_cutoff + beta * |dx_hat|               (Hz; speed in units per second)
    x_hat     = lowpass(x, alpha(fc))

With `beta = 0` it is the fixed first-order low-pass at `min_cutoff` (amplitude gain
`1 / sqrt(1 + (f / fc)^2)` for f well under the sample rate; lag `v * tau` behind a ramp of speed v).
Every element is filtered on its own (the paper filters each coordinate separately).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["OneEuroConfig", "OneEuroFilter"]


@dataclass(frozen=True)
class OneEuroConfig:
    min_cutoff: float = 1.0
    """Hz: the cutoff at rest (lower = smoother, more lag when slow)"""
    beta: float = 0.01
    """Hz per (unit/s): how fast the cutoff rises with speed (higher = less lag when fast)"""
    d_cutoff: float = 1.0
    """Hz: the cutoff of the speed estimate"""


def _alpha(cutoff_hz: np.ndarray | float, dt_s: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class OneEuroFilter:
    """Filters a sequence of same-shaped arrays, one per timestamp (seconds, increasing)."""

    def __init__(self, config: OneEuroConfig) -> None:
        self.config = config
        self._x: np.ndarray | None = None
        """the last filtered value"""
        self._raw: np.ndarray | None = None
        """the last sample (the speed is estimated from raw samples, as in the authors' code)"""
        self._dx: np.ndarray | None = None
        self._t_s = 0.0

    def __call__(self, x: np.ndarray, t_s: float) -> np.ndarray:
        """The filtered value of `x` sampled at `t_s`; the first sample passes unchanged."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._raw is None or self._dx is None or self._x.shape != x.shape:
            self._x, self._raw, self._dx, self._t_s = x.copy(), x.copy(), np.zeros_like(x), t_s
            return x.copy()
        dt_s = t_s - self._t_s
        if dt_s <= 0:  # a repeated (or older) timestamp: nothing new to learn
            return self._x.copy()
        cfg = self.config
        dx = (x - self._raw) / dt_s
        a_d = _alpha(cfg.d_cutoff, dt_s)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = cfg.min_cutoff + cfg.beta * np.abs(self._dx)
        a = _alpha(cutoff, dt_s)
        self._x = a * x + (1 - a) * self._x
        self._raw, self._t_s = x.copy(), t_s
        return self._x.copy()
