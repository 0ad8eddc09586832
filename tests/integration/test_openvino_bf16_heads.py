"""OpenVINO sessions: bf16 keeps the heads in fp32 (`models.runtimes.openvino.split_heads`), and a
backend at `max_batch` 1 compiles for its exact input shape.

- a small graph (a trunk of three convolutions feeding two heads) is cut where its two outputs part,
  and trunk + heads compute what the whole graph computes; a plain chain is not cut;
- the real movenet-multipose: the bf16 session is cut at the feature map all six heads read, and its
  pose_samples keypoint AP stays within the default 0.01 budget of fp32 (the whole graph in bf16
  lost 0.0108 on this CPU). Where the CPU has no bf16, the hint runs fp32 and the delta is 0;
- a session compiled for a static input computes what the file's dynamic axes compute, runs no other
  shape, and is what `load_sessions` opens at `max_batch` 1 only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import registry
from models.optimize import DEFAULT_MAX_AP_DROP, keypoint_ap
from models.pipelines import build
from models.pipelines.base import PipelineOptions
from models.runtimes import open_session
from tests.support import require_pose_samples, skip_unless_ci

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def ov() -> Any:
    if importlib.util.find_spec("openvino") is None:
        skip_unless_ci("the 'openvino' extra is not installed")
    import openvino

    return openvino


def conv(ov: Any, x: Any, out_ch: int, seed: int) -> Any:
    import openvino.opset13 as opset

    in_ch = x.get_output_partial_shape(0)[1].get_length()
    w = np.random.default_rng(seed).normal(0, 0.3, (out_ch, in_ch, 3, 3)).astype(np.float32)
    return opset.relu(opset.convolution(x, opset.constant(w), [1, 1], [1, 1], [1, 1], [1, 1]))


def small_graph(ov: Any, heads: int) -> Any:
    import openvino.opset13 as opset

    x = opset.parameter([1, 3, 16, 16], np.float32, name="input")
    trunk = conv(ov, conv(ov, conv(ov, x, 8, 0), 8, 1), 8, 2)
    outputs = [conv(ov, trunk, 2, 10 + i) for i in range(heads)]
    return ov.Model([o.output(0) for o in outputs], [x], "small"), trunk


def test_a_small_graph_is_cut_where_its_outputs_part(ov: Any) -> None:
    from models.runtimes.openvino import split_heads

    model, trunk_out = small_graph(ov, heads=2)
    core = ov.Core()
    x = np.random.default_rng(5).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    whole = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x}).to_tuple()
    parts = split_heads(model)
    assert parts is not None
    trunk, heads = parts
    assert trunk.outputs[0].get_node().input_value(0).get_node().get_name() == trunk_out.get_name()
    feature = core.compile_model(trunk, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x}).to_tuple()[0]
    out = core.compile_model(heads, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: feature}).to_tuple()
    assert len(out) == len(whole) == 2
    for a, b in zip(out, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    chain, _ = small_graph(ov, heads=1)  # one output: its last op is the only cut, no head to keep
    assert split_heads(chain) is None


def test_movenet_bf16_keeps_heads_fp32_within_the_ap_budget(ov: Any, model_dir: Path) -> None:
    samples = require_pose_samples()
    path = model_dir / "movenet-multipose.onnx"
    pipeline = build.single_stage(registry.MODELS["movenet-multipose"], None, PipelineOptions())
    fp32 = open_session(path, providers=("cpu",), intra_op_threads=1)
    bf16 = open_session(path, runtime="openvino", precision="bf16", providers=("cpu",), intra_op_threads=1)
    assert bf16.providers == ["OpenVINO/CPU/bf16+f32-heads"]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' tables
        fp32_ap, bf16_ap = keypoint_ap(fp32, pipeline, samples)["AP"], keypoint_ap(bf16, pipeline, samples)["AP"]
    logger.info("pose_samples keypoint AP: fp32 %.4f, bf16 with fp32 heads %.4f", fp32_ap, bf16_ap)
    assert bf16_ap - fp32_ap >= -DEFAULT_MAX_AP_DROP, (fp32_ap, bf16_ap)


def test_a_static_input_session_computes_what_the_dynamic_one_does(
    ov: Any, model_dir: Path, pose_sample_images: list[Path]
) -> None:
    from models.optimize import read_rgb
    from service.backends.sessions import load_sessions
    from service.config import BackendSettings

    path = model_dir / "movenet-multipose.onnx"
    pipeline = build.single_stage(registry.MODELS["movenet-multipose"], None, PipelineOptions())
    row = pipeline.preprocess(read_rgb(pose_sample_images[0]))[0]
    dynamic = open_session(path, runtime="openvino", providers=("cpu",), intra_op_threads=1)
    static = open_session(
        path, runtime="openvino", providers=("cpu",), intra_op_threads=1, static_input=(1, *row.shape)
    )
    for a, b in zip(static.run(row[None]), dynamic.run(row[None]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError):
        static.run(np.stack([row, row]))

    def opened(max_batch: int) -> Any:
        settings = BackendSettings(runtime="openvino", workers=1, intra_op_threads=1, max_batch=max_batch)
        return load_sessions(path, settings, "movenet-multipose", spinning=False, row_shape=row.shape)[0]

    assert opened(1).static_input == (1, *row.shape)
    assert opened(2).static_input is None
