"""TensorRT through ONNX Runtime keeps the engines it builds: a second session of the same model
loads them from the store instead of building again. Skipped cleanly without TensorRT and a GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.runtime import OrtModel, engine_cache_folder, nvidia_device_present

pytestmark = pytest.mark.integration

tensorrt = pytest.mark.skipif(
    "TensorrtExecutionProvider" not in ort.get_available_providers() or not nvidia_device_present(),
    reason="no TensorRT execution provider with an NVIDIA GPU here",
)


@tensorrt
def test_a_second_session_loads_the_engines_the_first_built(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "movenet-multipose.onnx"
    shutil.copy(model_dir / "movenet-multipose.onnx", path)
    batch = np.random.default_rng(0).integers(0, 255, (1, 256, 256, 3)).astype(np.uint8)
    first = OrtModel(path, providers=("tensorrt", "cpu"), fp16=True)
    assert first.providers[0] == "TensorrtExecutionProvider"
    expected = first.run(batch)
    cache = engine_cache_folder(path)
    assert cache is not None and list(cache.engines.glob("*.engine")), "no engine kept"
    built = {p: p.stat().st_mtime_ns for p in cache.engines.glob("*.engine")}
    second = OrtModel(path, providers=("tensorrt", "cpu"), fp16=True)
    for got, want in zip(second.run(batch), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert {p: p.stat().st_mtime_ns for p in cache.engines.glob("*.engine")} == built  # loaded, not rebuilt
