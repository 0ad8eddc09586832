"""OpenVINO sessions: bf16 runs an fp32 tail (`models.runtimes.openvino.split_heads`), and a
backend at `max_batch` 1 compiles for its exact input shape.

- a small graph (a trunk of three convolutions feeding two heads) offers the places where every
  output still depends on one tensor, latest first; cut at either, trunk + tail compute what the
  whole graph computes; a chain is cut before its last convolution; unnamed tensors are no places;
- the real movenet-multipose: `optimize` keeps the shortest fp32 tail whose pose_samples keypoint AP
  stays within the default 0.01 budget of fp32 (on one CPU the tail from the feature map the heads
  read lost 0.0111, the tail from the last 1x1 convolution before it 0.0072), records it on the
  card, and the backend's sessions run that tail. Where the CPU has no bf16 (AVX512-BF16 or AMX),
  `optimize` refuses to make the variant, saying so;
- a session compiled for a static input computes what the file's dynamic axes compute (within float
  rounding: the CPU plugin may pick other kernels for a static shape), runs no other
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
from tests.support import cpu_lacks, require_cpu_precision, require_pose_samples, skip_unless_ci

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def ov() -> Any:
    if importlib.util.find_spec("openvino") is None:
        skip_unless_ci("the 'openvino' extra is not installed")
    import openvino

    return openvino


def conv(ov: Any, x: Any, out_ch: int, seed: int, name: str | None = None) -> Any:
    import openvino.opset13 as opset

    in_ch = x.get_output_partial_shape(0)[1].get_length()
    w = np.random.default_rng(seed).normal(0, 0.3, (out_ch, in_ch, 3, 3)).astype(np.float32)
    out = opset.relu(opset.convolution(x, opset.constant(w), [1, 1], [1, 1], [1, 1], [1, 1]))
    if name is not None:  # as the ONNX frontend names its tensors
        out.output(0).set_names({name})
    return out


def small_graph(ov: Any, heads: int, named: bool = True) -> Any:
    """input -> conv a -> conv b -> conv c -> `heads` convs (outputs)."""
    import openvino.opset13 as opset

    x = opset.parameter([1, 3, 16, 16], np.float32, name="input")
    a = conv(ov, x, 8, 0, "a" if named else None)
    trunk = conv(ov, conv(ov, a, 8, 1, "b" if named else None), 8, 2, "c" if named else None)
    outputs = [conv(ov, trunk, 2, 10 + i, f"out{i}" if named else None) for i in range(heads)]
    return ov.Model([o.output(0) for o in outputs], [x], "small")


def test_a_small_graph_is_cut_where_its_outputs_part(ov: Any) -> None:
    from models.runtimes.openvino import fp32_cuts, split_heads, tensor_name

    core = ov.Core()
    x = np.random.default_rng(5).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    whole = core.compile_model(small_graph(ov, 2), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x}).to_tuple()
    # a tail holds some but fewer than half of the convolutions: 2 of 5 after c, 3 of 5 after b
    assert [tensor_name(c) for c in fp32_cuts(small_graph(ov, 2))] == ["c"]
    assert [tensor_name(c) for c in fp32_cuts(small_graph(ov, 1))] == ["c"]
    for fp32_from in (None, "c"):
        parts = split_heads(small_graph(ov, 2), fp32_from)
        assert parts is not None
        trunk, tail = parts
        assert trunk.outputs[0].get_names() == {"c"}
        feature = core.compile_model(trunk, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x}).to_tuple()[0]
        out = core.compile_model(tail, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: feature}).to_tuple()
        assert len(out) == len(whole) == 2
        for got, want in zip(out, whole, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    for where in ("b", "out0"):  # a tail of half the convolutions; a tensor one output does not read
        with pytest.raises(ValueError, match=f"{where} is not a tensor"):
            split_heads(small_graph(ov, 2), where)
    chain = split_heads(small_graph(ov, 1))  # one output: the tail is its last convolution
    assert chain is not None and chain[0].outputs[0].get_names() == {"c"}
    assert split_heads(small_graph(ov, 2, named=False)) is None  # unnamed tensors are no places


def test_movenet_bf16_tail_is_chosen_within_the_ap_budget(ov: Any, model_dir: Path, tmp_path: Path) -> None:
    require_cpu_precision("bf16")
    from models.optimize import optimize
    from models.runtimes import variant_name
    from models.runtimes.openvino import fp32_cut_names
    from models.weights import WeightsStore
    from service.backends.sessions import load_sessions
    from service.config import BackendSettings
    from tests.support import linked_store

    samples = require_pose_samples()
    name = "movenet-multipose"
    store = WeightsStore(linked_store(tmp_path / "models", model_dir, name))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' tables
        result = optimize(store, name, runtime="openvino", precision="bf16", samples=samples, seconds=0.2)
    variant = result.card.variant
    assert variant is not None and result.installed
    logger.info("bf16 with fp32 after %s: AP delta %+.4f", variant.fp32_from, variant.accuracy["ap_delta"])
    assert variant.accuracy["ap_delta"] >= -DEFAULT_MAX_AP_DROP
    assert variant.fp32_from in fp32_cut_names(model_dir / f"{name}.onnx")

    stored = store.require(variant_name(name, "openvino", "bf16"))
    assert stored.card.variant is not None and stored.card.variant.fp32_from == variant.fp32_from
    settings = BackendSettings(runtime="openvino", precision="bf16", workers=1, intra_op_threads=1)
    session = load_sessions(
        stored.path, settings, name, spinning=False, precision="bf16", fp32_from=stored.card.fp32_from
    )[0]
    assert session.providers == ["OpenVINO/CPU/bf16+f32-heads"]
    pipeline = build.single_stage(registry.MODELS[name], None, PipelineOptions())
    with contextlib.redirect_stdout(io.StringIO()):
        ap = keypoint_ap(session, pipeline, samples)["AP"]
    assert abs(ap - variant.accuracy["ap"]) < 1e-3, (ap, variant.accuracy)

    # what a run returns is its own: the next run (trunk output shared with the heads) changes none of it
    from models.optimize import read_rgb

    first, second = (pipeline.preprocess(read_rgb(p))[0][None] for p in sorted((samples / "images").rglob("*.jpg"))[:2])
    answered = session.run(first)
    kept = [a.copy() for a in answered]
    session.run(second)
    for a, b in zip(answered, kept, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bf16_is_refused_on_a_cpu_without_it(ov: Any, model_dir: Path, tmp_path: Path) -> None:
    from models.errors import OptimizeError, RuntimeUnavailableError
    from models.optimize import optimize
    from models.weights import WeightsStore
    from tests.support import linked_store

    if cpu_lacks("bf16") is None:
        pytest.skip("this CPU runs bf16 (the test above makes the variant)")
    samples = require_pose_samples()
    store = WeightsStore(linked_store(tmp_path / "models", model_dir, "movenet-multipose"))
    with pytest.raises(OptimizeError, match="no bf16 support"):
        optimize(store, "movenet-multipose", runtime="openvino", precision="bf16", samples=samples, seconds=0.2)
    assert [p.name for p in (tmp_path / "models").glob("*bf16*")] == []  # nothing written
    with pytest.raises(RuntimeUnavailableError, match="no bf16 support"):
        open_session(model_dir / "movenet-multipose.onnx", runtime="openvino", precision="bf16")


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
        # AVX2 fp32 kernels (AMD EPYC) differed by up to 1.5e-4 on a few of 313,344 values
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    with pytest.raises(RuntimeError):
        static.run(np.stack([row, row]))

    def opened(max_batch: int) -> Any:
        settings = BackendSettings(runtime="openvino", workers=1, intra_op_threads=1, max_batch=max_batch)
        return load_sessions(path, settings, "movenet-multipose", spinning=False, row_shape=row.shape)[0]

    assert opened(1).static_input == (1, *row.shape)
    assert opened(2).static_input is None
