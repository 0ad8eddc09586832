"""2D Gaussian heatmap codec (numpy only), as used by HRNet / LE-HRNet.

* ``encode``: one unnormalised Gaussian (peak 1, ``sigma`` heatmap pixels) per keypoint, centred
  on the exact (unrounded) keypoint position ``x / stride`` (the unbiased encoding of
  Zhang et al., "Distribution-Aware Coordinate Representation", CVPR 2020).
* ``decode``: argmax per heatmap, then DARK refinement: Gaussian-blur the heatmap, take its log
  and apply one Newton step (Taylor expansion to second order) at the peak; the result is mapped
  back to input pixels by multiplying by the stride. Scores: the heatmap maximum, clipped to
  [0, 1].

Heatmap pixel ``(i, j)`` corresponds to input pixel ``(i * stride_x, j * stride_y)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from models.codecs.base import Decoded

__all__ = ["HeatmapCodec"]

FloatArray = npt.NDArray[np.float32]


def _blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(M, h, w)`` maps with edge padding, keeping each map's maximum."""
    radius = max(1, round(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    h, w = maps.shape[1:]
    padded = np.pad(maps, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    rows = sum(kv * padded[:, i : i + h, :] for i, kv in enumerate(kernel))
    padded = np.pad(rows, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    out = sum(kv * padded[:, :, i : i + w] for i, kv in enumerate(kernel))
    orig_max = maps.reshape(len(maps), -1).max(axis=1)
    new_max = out.reshape(len(out), -1).max(axis=1)
    scale = np.divide(orig_max, new_max, out=np.ones_like(orig_max), where=new_max > 0)
    return np.asarray(out * scale[:, None, None])


class HeatmapCodec:
    """Encode keypoints to Gaussian heatmaps and decode heatmaps back to keypoints.

    Args:
        input_size_wh: network input ``(W, H)`` in pixels.
        heatmap_size_wh: heatmap ``(w, h)`` in heatmap pixels (1/4 of the input for HRNet).
        sigma: Gaussian standard deviation in heatmap pixels.
        refine: apply DARK sub-pixel refinement in ``decode``.
        blur_sigma: sigma of the blur before DARK, in heatmap pixels (``sigma`` if None).
    """

    def __init__(
        self,
        input_size_wh: tuple[int, int],
        heatmap_size_wh: tuple[int, int],
        sigma: float = 2.0,
        refine: bool = True,
        blur_sigma: float | None = None,
    ) -> None:
        self.input_size_wh = input_size_wh
        self.heatmap_size_wh = heatmap_size_wh
        self.sigma = float(sigma)
        self.refine = refine
        self.blur_sigma = float(blur_sigma) if blur_sigma is not None else self.sigma
        self.stride_xy = np.array(
            [input_size_wh[0] / heatmap_size_wh[0], input_size_wh[1] / heatmap_size_wh[1]], dtype=np.float64
        )

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[FloatArray, FloatArray]:
        """Training targets for one instance.

        Args:
            keypoints: ``(K, 2)`` x, y in input pixels.
            visible: ``(K,)``; entries > 0 are labelled.

        Returns:
            ``heatmaps (K, h, w)`` with peak 1 (zeros where unlabelled) and ``weights (K,)`` in
            {0, 1}: 0 for unlabelled keypoints and for those more than 3 sigma outside the map.
        """
        w, h = self.heatmap_size_wh
        mu = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2) / self.stride_xy
        vis = np.asarray(visible).reshape(-1) > 0
        r = 3 * self.sigma
        inside = (mu[:, 0] + r >= 0) & (mu[:, 0] - r <= w - 1) & (mu[:, 1] + r >= 0) & (mu[:, 1] - r <= h - 1)
        weights = (vis & inside).astype(np.float32)
        xs = np.arange(w, dtype=np.float64)
        ys = np.arange(h, dtype=np.float64)
        gx = np.exp(-((xs[None, :] - mu[:, :1]) ** 2) / (2 * self.sigma**2))  # (K, w)
        gy = np.exp(-((ys[None, :] - mu[:, 1:]) ** 2) / (2 * self.sigma**2))  # (K, h)
        heatmaps = gy[:, :, None] * gx[:, None, :] * weights[:, None, None]
        return heatmaps.astype(np.float32), weights

    output_names: tuple[str, ...] = ("heatmaps",)

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        """One crop's ``heatmaps (K, h, w)`` -> one person."""
        xy, scores = self.decode_batch(outputs[0][None])
        return Decoded.single(np.concatenate([xy[0], scores[0, :, None]], axis=1))

    def decode_batch(self, heatmaps: np.ndarray) -> tuple[FloatArray, FloatArray]:
        """Keypoints from the heatmaps of N crops.

        Args:
            heatmaps: ``(N, K, h, w)``.

        Returns:
            ``keypoints (N, K, 2)`` x, y in input pixels and ``scores (N, K)`` in [0, 1].
        """
        hm = np.asarray(heatmaps, dtype=np.float64)
        n, k, h, w = hm.shape
        flat = hm.reshape(n * k, h * w)
        idx = flat.argmax(axis=1)
        scores = flat[np.arange(n * k), idx]
        xy = np.stack([idx % w, idx // w], axis=1).astype(np.float64)
        if self.refine:
            xy += self._dark_offsets(hm.reshape(n * k, h, w), xy.astype(np.int64))
        keypoints = (xy * self.stride_xy).reshape(n, k, 2).astype(np.float32)
        return keypoints, np.clip(scores, 0.0, 1.0).reshape(n, k).astype(np.float32)

    def _dark_offsets(self, maps: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """DARK: ``-H^-1 g`` of the log blurred heatmap at integer peaks ``xy (M, 2)``; ``(M, 2)``."""
        m, h, w = maps.shape
        logm = np.log(np.maximum(_blur(maps, self.blur_sigma), 1e-10))
        x = np.clip(xy[:, 0], 2, w - 3)
        y = np.clip(xy[:, 1], 2, h - 3)
        rows = np.arange(m)

        def at(dy: int, dx: int) -> np.ndarray:
            return np.asarray(logm[rows, y + dy, x + dx])

        dx = 0.5 * (at(0, 1) - at(0, -1))
        dy = 0.5 * (at(1, 0) - at(-1, 0))
        dxx = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
        dyy = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
        dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
        det = dxx * dyy - dxy**2
        ok = (det > 1e-12) & (dxx < 0) & (x == xy[:, 0]) & (y == xy[:, 1])
        safe_det = np.where(ok, det, 1.0)
        off_x = -(dyy * dx - dxy * dy) / safe_det
        off_y = -(dxx * dy - dxy * dx) / safe_det
        offsets = np.stack([off_x, off_y], axis=1)
        return np.where(ok[:, None], np.clip(offsets, -1.0, 1.0), 0.0)
