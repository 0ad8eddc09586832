"""SimCC coordinate-classification codec (numpy only).

Li et al., "SimCC: a Simple Coordinate Classification Perspective for Human Pose Estimation",
ECCV 2022; used by AMFACPose with split ratio ``k = 2``. A keypoint at ``x`` input pixels maps to
bin ``x * k`` of ``W * k`` x-bins (bin ``i`` is centred on pixel ``i / k``), likewise for y.

* ``encode``: Gaussian label smoothing: a Gaussian of ``sigma`` bins centred on the exact
  (unrounded) ``x * k``, normalised to sum 1 so that it is a distribution for the KL loss.
* ``decode``: argmax over bins, refined by a parabola through the logits at the peak and its two
  neighbours (exact for a Gaussian target, whose log is quadratic), divided by ``k``.
  Scores: per axis, the peak of ``softmax(logits / temperature)`` over the peak of the ideal
  training target, clipped to [0, 1]; the keypoint score is the mean of the two axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from models.codecs.base import Decoded

__all__ = ["DEFAULT_TEMPERATURE", "SimCCCodec"]

FloatArray = npt.NDArray[np.float32]

# Temperature of the softmax over bins; the loss (models.losses.simcc) uses the same default.
DEFAULT_TEMPERATURE = 0.1


def _softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _refine_peak(logits: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-bin offset in [-0.5, 0.5] from a parabola through the peak and its neighbours.

    Args:
        logits: ``(M, B)`` scores over ``B`` bins.
        idx: ``(M,)`` argmax bins.
    """
    num_bins = logits.shape[-1]
    rows = np.arange(logits.shape[0])
    inner = (idx > 0) & (idx < num_bins - 1)
    left = logits[rows, np.clip(idx - 1, 0, num_bins - 1)]
    mid = logits[rows, idx]
    right = logits[rows, np.clip(idx + 1, 0, num_bins - 1)]
    curvature = left - 2.0 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, 0.5 * (left - right) / curvature, 0.0)
    return np.where(inner, np.clip(offset, -0.5, 0.5), 0.0)


class SimCCCodec:
    """Encode keypoints to SimCC targets and decode SimCC logits back to keypoints.

    Args:
        input_size_wh: network input ``(W, H)`` in pixels.
        split_ratio: bins per pixel ``k``.
        sigma: Gaussian standard deviation in bins, one value or ``(sigma_x, sigma_y)``
            (mmpose's SimCC-ResNet uses 6.0 at ``k = 2``).
        temperature: softmax temperature used for the scores.
    """

    def __init__(
        self,
        input_size_wh: tuple[int, int],
        split_ratio: float = 2.0,
        sigma: float | tuple[float, float] = 6.0,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> None:
        self.input_size_wh = input_size_wh
        self.split_ratio = float(split_ratio)
        self.sigma = (float(sigma), float(sigma)) if isinstance(sigma, int | float) else tuple(map(float, sigma))
        self.temperature = float(temperature)
        w, h = input_size_wh
        self.bins_wh = (round(w * self.split_ratio), round(h * self.split_ratio))
        # Peak of the normalised target far from the borders, the "perfect" softmax maximum.
        self._peak_ref = tuple(1.0 / (s * np.sqrt(2.0 * np.pi)) for s in self.sigma)

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Training targets for one instance.

        Args:
            keypoints: ``(K, 2)`` x, y in input pixels.
            visible: ``(K,)``; entries > 0 are labelled.

        Returns:
            ``target_x (K, W*k)`` and ``target_y (K, H*k)``, each row summing to 1 (zeros where
            unlabelled), and ``weights (K,)`` in {0, 1}: 0 for unlabelled keypoints and for those
            whose Gaussian falls entirely outside the bins.
        """
        kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
        vis = np.asarray(visible).reshape(-1) > 0
        mu = kps * self.split_ratio
        targets = []
        inside = vis.copy()
        for axis, num_bins in enumerate(self.bins_wh):
            sigma = self.sigma[axis]
            bins = np.arange(num_bins, dtype=np.float64)
            g = np.exp(-((bins[None, :] - mu[:, axis : axis + 1]) ** 2) / (2.0 * sigma**2))
            inside &= (mu[:, axis] + 3 * sigma >= 0) & (mu[:, axis] - 3 * sigma <= num_bins - 1)
            targets.append(g)
        weights = inside.astype(np.float32)
        out = []
        for g in targets:
            g = g * weights[:, None]
            total = g.sum(axis=1, keepdims=True)
            out.append(np.divide(g, total, out=np.zeros_like(g), where=total > 0).astype(np.float32))
        return out[0], out[1], weights

    output_names: tuple[str, ...] = ("x_logits", "y_logits")

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """One crop's ``x_logits (K, W*k)`` and ``y_logits (K, H*k)`` -> one person."""
        xy, scores = self.decode_batch(outputs[0][None], outputs[1][None])
        return Decoded.single(np.concatenate([xy[0], scores[0, :, None]], axis=1))

    def decode_batch(self, x_logits: np.ndarray, y_logits: np.ndarray) -> tuple[FloatArray, FloatArray]:
        """Keypoints from raw network logits of N crops.

        Args:
            x_logits: ``(N, K, W*k)``.
            y_logits: ``(N, K, H*k)``.

        Returns:
            ``keypoints (N, K, 2)`` x, y in input pixels and ``scores (N, K)`` in [0, 1].
        """
        x_logits = np.asarray(x_logits, dtype=np.float64)
        y_logits = np.asarray(y_logits, dtype=np.float64)
        n, k = x_logits.shape[:2]
        coords, axis_scores = [], []
        for axis, logits in enumerate((x_logits, y_logits)):
            flat = logits.reshape(n * k, -1)
            idx = flat.argmax(axis=1)
            coords.append((idx + _refine_peak(flat, idx)) / self.split_ratio)
            peak = _softmax(flat / self.temperature).max(axis=1)
            axis_scores.append(np.clip(peak / self._peak_ref[axis], 0.0, 1.0))
        keypoints = np.stack(coords, axis=1).reshape(n, k, 2).astype(np.float32)
        scores = (0.5 * (axis_scores[0] + axis_scores[1])).reshape(n, k).astype(np.float32)
        return keypoints, scores
