"""The real movenet-multipose with its sparse heads cut (`models.sparse_heads`): the cut graph
outputs the centre and heatmap heads and the feature map, each runtime decodes the pose_samples
photos from it to what the whole graph decodes, and a backend runs the cut graph unless told not to.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from models import registry
from models.codecs import movenet
from models.optimize import read_rgb
from models.runtimes import Runtime, open_session
from models.sparse_heads import cut_sparse_heads
from models.transforms import letterbox
from models.weights import WeightsStore
from service.backends.single_stage import sparse_pipeline
from service.config import BackendSettings
from tests.support import cpu_lacks

pytestmark = pytest.mark.integration

MODEL = "movenet-multipose"
RUNTIMES: list[Runtime] = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


def test_the_cut_graph_outputs_the_feature_map_in_place_of_four_heads(model_dir: Path) -> None:
    cut = cut_sparse_heads(model_dir / f"{MODEL}.onnx", movenet.SPARSE_HEADS)
    assert cut is not None
    graph, sparse = cut
    assert sorted(sparse.heads) == sorted(movenet.SPARSE_HEADS)
    assert {name: head.out.shape[0] for name, head in sparse.heads.items()} == {
        "kpt_offsets": 34,
        "kpt_regress": 34,
        "box_scale": 2,
        "box_offset": 2,
    }
    session = open_session(model_dir / f"{MODEL}.onnx", providers=("cpu",), intra_op_threads=1, graph=graph)
    assert list(session.output_names) == ["centre_logits", "kpt_heatmap_logits", sparse.feature]
    assert len(graph) < (model_dir / f"{MODEL}.onnx").stat().st_size  # the heads' weights left with them


def test_a_graph_without_such_heads_is_not_cut(model_dir: Path) -> None:
    assert cut_sparse_heads(model_dir / f"{MODEL}.onnx", ("kpt_regress", "no_such_output")) is None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_runtime_decodes_the_photos_from_the_cut_graph_as_from_the_whole(
    runtime: Runtime, model_dir: Path, pose_sample_images: list[Path]
) -> None:
    path = model_dir / f"{MODEL}.onnx"
    graph, sparse = cut_sparse_heads(path, movenet.SPARSE_HEADS) or pytest.fail("not cut")
    # OpenVINO bf16 where the CPU has it (the trunk's precision, the heads stay fp32), else fp32
    precision = "bf16" if runtime == "openvino" and cpu_lacks("bf16") is None else "fp32"
    whole = open_session(path, runtime=runtime, precision=precision, providers=("cpu",), intra_op_threads=1)
    cut = open_session(path, runtime=runtime, precision=precision, providers=("cpu",), intra_op_threads=1, graph=graph)
    persons = 0
    for image in pose_sample_images:
        batch = letterbox(read_rgb(image), registry.MODELS[MODEL].input_hw[0])[0][None]
        expected = movenet.decode_candidates([o[0] for o in whole.run(batch)])
        got = movenet.decode_sparse([o[0] for o in cut.run(batch)], sparse)
        np.testing.assert_allclose(got.keypoints, expected.keypoints, atol=1e-2)
        np.testing.assert_allclose(got.boxes_xyxy, expected.boxes_xyxy, atol=1e-2)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
        persons += int((expected.scores > 0.2).sum())
    assert persons >= len(pose_sample_images)  # the photos show people: the comparison is not of empty maps


def test_a_backend_runs_the_cut_graph_unless_told_not_to(model_dir: Path) -> None:
    entry = registry.MODELS[MODEL]
    stored = WeightsStore(model_dir).require(MODEL)
    pipeline, graph = sparse_pipeline(entry, stored, BackendSettings())
    assert graph is not None
    assert pipeline.codec.output_names[:2] == ("centre_logits", "kpt_heatmap_logits")
    assert len(pipeline.codec.output_names) == 3
    pipeline, graph = sparse_pipeline(entry, stored, BackendSettings(sparse_heads=False))
    assert graph is None and pipeline.codec.output_names == movenet.HEAD_NAMES


def test_bench_model_runs_the_cut_graph_on_a_real_photo(model_dir: Path, pose_sample_images: list[Path]) -> None:
    from service.bench import bench_model

    rows = bench_model(
        MODEL,
        WeightsStore(model_dir),
        BackendSettings(providers=("cpu",), intra_op_threads=1),
        batches=[1],
        image=pose_sample_images[0].read_bytes(),
        min_seconds=0.05,
        min_iters=2,
    )
    assert [(r["stage"], r["batch"], r["input_shape"]) for r in rows] == [("pose", 1, [384, 384, 3])]
    assert rows[0]["throughput_ips"] > 0
