"""Precision variants and runtimes on the real model and real photos: OpenVINO sessions answer as
ONNX Runtime does, a served OpenVINO backend says so in /v1/backends and /metrics, and
`models.optimize` scores a variant's keypoint AP against fp32 and installs it only within budget.

OpenVINO is the optional `openvino` extra (CI installs it): without it those tests skip locally.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from models import registry
from models.measured import cpu_has_int8_dot
from models.optimize import optimize, read_rgb
from models.pipelines import build
from models.runtimes import open_session, variant_name
from models.weights import WeightsStore
from service.backends.variants import choose_variant
from service.config import BackendSettings, Settings
from tests.support import client_for, linked_store, require_cpu_precision, require_pose_samples, skip_unless_ci

pytestmark = pytest.mark.integration

MODEL = "movenet-multipose"


def _need_openvino() -> None:
    if importlib.util.find_spec("openvino") is None:
        skip_unless_ci("the 'openvino' extra is not installed")


@pytest.fixture
def own_store(model_dir: Path, tmp_path: Path) -> WeightsStore:
    """A store of its own (variants are written into it) linking the tests' movenet-multipose."""
    return WeightsStore(linked_store(tmp_path / "models", model_dir, MODEL))


def test_openvino_session_answers_as_onnxruntime(model_dir: Path) -> None:
    _need_openvino()
    samples = require_pose_samples()
    store = WeightsStore(model_dir)
    stored = store.require(MODEL)
    pipeline = build.single_stage(registry.MODELS[MODEL], stored.card)
    photo = sorted((samples / "images").rglob("*.jpg"))[0]
    row = pipeline.preprocess(read_rgb(photo))[0]
    batch = np.stack([row, row[::-1]])
    ort_session = open_session(stored.path, providers=("cpu",))
    ov_session = open_session(stored.path, runtime="openvino", precision="fp32")
    assert list(ov_session.output_names) == list(ort_session.output_names)
    for ours, theirs in zip(ov_session.run(batch), ort_session.run(batch), strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=1e-3)


def test_served_openvino_backend_names_its_runtime(model_dir: Path) -> None:
    _need_openvino()
    samples = require_pose_samples()
    photo = sorted((samples / "images").rglob("*.jpg"))[0].read_bytes()
    settings = Settings(model_dir=model_dir, preload=(MODEL,), backends={MODEL: BackendSettings(runtime="openvino")})

    async def scenario() -> tuple[dict, str, dict]:
        async with client_for(settings) as client:
            pose = await client.post(f"/v1/pose?backend={MODEL}", content=photo, headers={"content-type": "image/jpeg"})
            assert pose.status_code == 200, pose.text
            backends = {b["name"]: b for b in (await client.get("/v1/backends")).json()}
            return backends[MODEL], (await client.get("/metrics")).text, pose.json()

    info, metrics, pose = asyncio.run(scenario())
    assert (info["runtime"], info["precision"]) == ("openvino", "fp32")
    assert info["providers"][0].startswith("OpenVINO/CPU")
    assert f'poseserve_backend_info{{backend="{MODEL}",precision="fp32",runtime="openvino"}} 1.0' in metrics
    assert pose["persons"], "a photo of people answered no person"


def test_bf16_variant_is_scored_and_installed_within_budget(own_store: WeightsStore) -> None:
    _need_openvino()
    require_cpu_precision("bf16")
    samples = require_pose_samples()
    refused = optimize(
        own_store, MODEL, runtime="openvino", precision="bf16", samples=samples, max_ap_drop=0.0, seconds=0.2
    )
    name = variant_name(MODEL, "openvino", "bf16")
    acc = refused.card.variant.accuracy if refused.card.variant else {}
    assert refused.installed == (acc["ap_delta"] >= 0.0)
    assert own_store.available(name) == refused.installed  # nothing written when refused

    result = optimize(
        own_store, MODEL, runtime="openvino", precision="bf16", samples=samples, max_ap_drop=1.0, seconds=0.2
    )
    assert result.installed and own_store.available(name)
    variant = own_store.require(name).card.variant
    assert variant is not None and variant.precision == "bf16" and variant.calibration is None
    assert variant.accuracy["fp32_ap"] > 0.2 and abs(variant.accuracy["ap_delta"]) < 0.1
    from models.runtimes.openvino import fp32_cut_names

    latest = fp32_cut_names(own_store.require(MODEL).path)[0]
    assert variant.fp32_from == latest  # any AP will do: the shortest fp32 tail is kept
    choice = choose_variant(own_store, MODEL, BackendSettings(runtime="openvino", precision="bf16"))
    assert choice.stored.path.name == f"{name}.onnx"


def test_int8_variant_calibrates_on_video_frames(own_store: WeightsStore, shared_root: Path) -> None:
    """ONNX Runtime static int8 (no OpenVINO needed); calibrated on frames of one real video."""
    samples = require_pose_samples()
    videos = sorted((shared_root / "data" / "videos").glob("*.mp4"))
    if not videos:
        skip_unless_ci("no videos under shared/data/videos")
    result = optimize(
        own_store,
        MODEL,
        runtime="onnxruntime",
        precision="int8",
        samples=samples,
        calibration=videos[:1],
        max_ap_drop=0.01,
        seconds=0.2,
    )
    variant = result.card.variant
    assert variant is not None and variant.calibration is not None
    assert variant.calibration["frames"] >= 4 and all("#frame-" in s for s in variant.calibration["sources"])
    assert variant.calibration["weight_bits"] == (8 if cpu_has_int8_dot() else 7)
    name = variant_name(MODEL, "onnxruntime", "int8")
    assert result.installed == (variant.accuracy["ap_delta"] >= -0.01) == own_store.available(name)


def test_auto_makes_every_variant_this_cpu_runs_and_refusals_are_not_errors(
    own_store: WeightsStore, shared_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models optimize --precision auto` on ONNX Runtime: no int8 without calibration frames (and
    exit 0: nothing to make is no failure), with them one int8 variant, scored and reported, exit 0
    whether or not it stayed within the AP budget."""
    from typer.testing import CliRunner

    from models.optimize import cpu_variants
    from models.runtimes import runtime_problem
    from service.cli import app

    samples = require_pose_samples()
    videos = sorted((shared_root / "data" / "videos").glob("*.mp4"))
    if not videos:
        skip_unless_ci("no videos under shared/data/videos")
    for calibrated in (False, True):
        pairs = cpu_variants(calibrated=calibrated)
        assert all(runtime_problem(r, p) is None and p != "fp32" for r, p in pairs)
        assert any(p == "int8" for _, p in pairs) == calibrated
    monkeypatch.setenv("POSESERVE_MODEL_DIR", str(own_store.model_dir))
    optimize_cmd = ["models", "optimize", MODEL, "--precision", "auto", "--runtime", "onnxruntime"]
    optimize_cmd += ["--samples", str(samples)]

    none = CliRunner().invoke(app, optimize_cmd)
    assert none.exit_code == 0, none.output
    assert "can make no variant (int8 too, given --calibration)" in none.output
    assert sorted(p.name for p in own_store.model_dir.glob("*.json")) == [f"{MODEL}.json"]

    made = CliRunner().invoke(app, [*optimize_cmd, "--calibration", str(videos[0])])
    assert made.exit_code == 0, made.output
    name = variant_name(MODEL, "onnxruntime", "int8")
    assert "can make onnxruntime int8" in made.output and f"{name}: AP " in made.output
    installed = f"installed {own_store.onnx_path(name)}" in made.output
    assert installed == own_store.available(name) == ("refused: loses more than" not in made.output)

    wrong = CliRunner().invoke(app, ["models", "optimize", MODEL, "--precision", "int4", "--samples", str(samples)])
    assert wrong.exit_code == 2
