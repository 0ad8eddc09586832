"""SHaRPose served as two ONNX graphs: parity of both graphs, and the quality gate's routing through
the batched stages (real onnxruntime sessions of a small SHaRPose; a fake person detector)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.export_gated import export_graphs
from models.nets.sharpose import SHaRPose, SHaRPoseConfig
from models.pipelines.base import normalize_imagenet
from models.pipelines.sharpose import CoarseHeatmapCodec, GatedCropPose
from models.pipelines.topdown import make_crops
from models.registry import backend as catalogue_backend
from models.runtime import OrtModel
from service.backends.gated import GatedTopDownBackend
from service.config import BackendSettings, TopDownSettings
from service.metrics import Metrics
from tests.support import PixelCountDetector

pytestmark = [pytest.mark.integration, pytest.mark.train]

CFG = SHaRPoseConfig(dim=64, alpha=0.5, input_hw=(128, 96), depth=2, head_dim=32)
PEOPLE = 6


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, dict[str, float]]]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sharpose")
    coarse, fine = folder / "tiny.onnx", folder / "tiny-fine.onnx"
    coarse_report, fine_report = export_graphs(SHaRPose(CFG), coarse, fine)
    return coarse, fine, {"coarse": coarse_report, "fine": fine_report}


def test_both_graphs_match_pytorch_at_batch_1_and_8(graphs: tuple[Path, Path, dict[str, dict[str, float]]]) -> None:
    _, _, reports = graphs
    coarse, fine = reports["coarse"], reports["fine"]
    assert [o["name"] for o in coarse["outputs"]] == ["heatmaps", "quality", "tokens", "patch_scores"]
    assert [i["name"] for i in fine["inputs"]] == ["input", "tokens", "patch_scores"]
    assert fine["inputs"][1]["shape"][1:] == [CFG.num_coarse, CFG.dim]
    for report in (coarse, fine):
        assert set(report["max_abs_diff"]) == {"batch1", "batch8"}
        assert max(report["max_abs_diff"].values()) < 1e-4, report["max_abs_diff"]
        assert all(isinstance(t["shape"][0], str) for t in [*report["inputs"], *report["outputs"]])


class EchoSession:
    providers = ("CPUExecutionProvider",)
    output_names = ("rows",)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return [batch]


def boxes(n: int) -> np.ndarray:
    return np.array([[60 * i + 4, 8, 60 * i + 52, 120] for i in range(n)], np.float32).reshape(-1, 4)


def frame(people: int) -> np.ndarray:
    rng = np.random.default_rng(people)
    image = rng.integers(0, 255, (128, 60 * PEOPLE, 3), dtype=np.uint8)
    image[0, 0, 0] = people
    return image


def pose() -> GatedCropPose:
    h, w = CFG.input_hw
    codec = CoarseHeatmapCodec((w, h), (w // 4, h // 4))
    return GatedCropPose("tiny", (w, h), normalize_imagenet, codec, fine_model="tiny-fine")


def serve(graphs: tuple[Path, Path, object], threshold: float) -> tuple[list[np.ndarray], Metrics]:
    """Keypoints of the frame's people, with the gate at `threshold`."""
    coarse, fine, _ = graphs
    metrics = Metrics()
    settings = BackendSettings(max_batch=8, max_wait_ms=20, quality_threshold=threshold)
    backend = GatedTopDownBackend(
        catalogue_backend("sharpose-s"),
        detector=PixelCountDetector(boxes),  # type: ignore[arg-type]
        pose=pose(),
        det_sessions=[EchoSession()],
        pose_sessions=[OrtModel(coarse, providers=("cpu",), intra_op_threads=1)],
        fine_sessions=[OrtModel(fine, providers=("cpu",), intra_op_threads=1)],
        settings=settings,
        topdown=TopDownSettings(),
        metrics=metrics,
    )
    try:
        assert [r.stage for r in backend.runners] == ["detect", "pose", "fine"]

        async def scenario() -> list[np.ndarray]:
            prepared = backend.prepare(frame(PEOPLE))
            result = await backend.infer(prepared, deadline=time.monotonic() + 30, wait_s=30)
            assert len(result.value) == PEOPLE
            return [p for p in result.value.keypoints]

        return asyncio.run(scenario()), metrics
    finally:
        backend.stop()


def gate_counts(metrics: Metrics) -> tuple[float, float, float]:
    """(crops refined, crops answered by the coarse stage, items the fine stage ran)."""

    def value(name: str, labels: dict[str, str]) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    labels = {"backend": "sharpose-s"}
    return (
        value("poseserve_quality_gate_total", {**labels, "decision": "refined"}),
        value("poseserve_quality_gate_total", {**labels, "decision": "coarse"}),
        value("poseserve_batch_size_sum", {**labels, "stage": "fine"}),
    )


def reference(graphs: tuple[Path, Path, object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per crop, sequentially: quality, coarse keypoints, fine keypoints (crop pixels)."""
    coarse_path, fine_path, _ = graphs
    p = pose()
    rows, _ = make_crops(frame(PEOPLE), boxes(PEOPLE), p)
    coarse = OrtModel(coarse_path, providers=("cpu",)).run(np.stack(rows))
    (fine,) = OrtModel(fine_path, providers=("cpu",)).run_inputs([np.stack(rows), coarse[2], coarse[3]])
    coarse_kps = np.stack([p.postprocess_crop([o[i] for o in coarse]) for i in range(PEOPLE)])
    fine_kps = np.stack([p.decode_fine(fine[i]) for i in range(PEOPLE)])
    return coarse[1], coarse_kps, fine_kps


def _sorted_xy(keypoints: list[np.ndarray]) -> np.ndarray:
    """Persons come back best first; order them by their mean x to compare with crops."""
    return np.stack(sorted(keypoints, key=lambda k: float(k[:, 0].mean())))


def fine_batches(metrics: Metrics) -> float:
    labels = {"backend": "sharpose-s", "stage": "fine"}
    return metrics.registry.get_sample_value("poseserve_batch_size_count", labels) or 0.0


def assert_served(got: list[np.ndarray], crop_kps: np.ndarray) -> None:
    """Served persons = the crops' keypoints mapped to image pixels, person by person."""
    _, crops = make_crops(frame(PEOPLE), boxes(PEOPLE), pose())
    expected = np.stack([c.to_image(k[:, :2]) for c, k in zip(crops, crop_kps, strict=True)])
    expected = expected[np.argsort(expected[:, :, 0].mean(axis=1))]
    assert np.abs(_sorted_xy(got)[:, :, :2] - expected).max() < 0.5


def test_quality_high_never_runs_the_fine_stage(graphs: tuple[Path, Path, object]) -> None:
    """Q in (0, 1) is always >= a threshold of 0: every crop stops after the coarse stage."""
    _, coarse_kps, _ = reference(graphs)
    kps, metrics = serve(graphs, threshold=0.0)
    assert gate_counts(metrics) == (0.0, PEOPLE, 0.0)
    assert fine_batches(metrics) == 0.0
    assert_served(kps, coarse_kps)


def test_quality_low_refines_every_crop_in_fine_batches(graphs: tuple[Path, Path, object]) -> None:
    """A threshold above 1 refines every crop; the fine stage's batches hold all of them."""
    _, _, fine_kps = reference(graphs)
    kps, metrics = serve(graphs, threshold=1.01)
    assert gate_counts(metrics) == (PEOPLE, 0.0, PEOPLE)
    assert 1 <= fine_batches(metrics) <= PEOPLE
    assert_served(kps, fine_kps)


def test_gate_refines_exactly_the_crops_below_the_threshold(graphs: tuple[Path, Path, object]) -> None:
    quality, coarse_kps, fine_kps = reference(graphs)
    q = np.sort(quality)
    threshold = float((q[PEOPLE // 2 - 1] + q[PEOPLE // 2]) / 2)  # half the crops below, half above
    assert q[PEOPLE // 2] - q[PEOPLE // 2 - 1] > 1e-5, q  # distinct enough for batch-size rounding
    kps, metrics = serve(graphs, threshold=threshold)
    assert gate_counts(metrics) == (PEOPLE // 2, PEOPLE - PEOPLE // 2, PEOPLE // 2)
    # each crop's keypoints come from the stage the gate chose for it
    assert_served(kps, np.where((quality < threshold)[:, None, None], fine_kps, coarse_kps))
