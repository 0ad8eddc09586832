"""TensorRT's engine cache, the pure parts: the provider options and where the engines are kept.

A machine with TensorRT is faked (ONNX Runtime's provider list, the NVIDIA driver's presence);
tests/integration/test_tensorrt_engine_cache.py builds real engines where a GPU is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models import runtime
from models.runtime import EngineCache, engine_cache_folder, resolve_providers

pytestmark = pytest.mark.unit

TRT = "TensorrtExecutionProvider"


@pytest.fixture
def gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    available = [TRT, "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: available)
    monkeypatch.setattr(runtime, "nvidia_device_present", lambda: True)


def model_file(folder: Path, content: bytes = b"onnx bytes") -> Path:
    path = folder / "model.onnx"
    path.write_bytes(content)
    return path


@pytest.mark.usefixtures("gpu_machine")
def test_tensorrt_keeps_its_engines_and_timings_where_the_cache_says(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines", tmp_path / "timing")
    chosen = resolve_providers(("tensorrt", "cuda", "cpu"), fp16=True, engine_cache=lambda: cache)
    assert chosen[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0] == (
        TRT,
        {
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(tmp_path / "engines"),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(tmp_path / "timing"),
        },
    )


@pytest.mark.usefixtures("gpu_machine")
def test_no_cache_folder_builds_at_every_start(tmp_path: Path) -> None:
    assert resolve_providers(("tensorrt", "cpu"), engine_cache=lambda: None)[0] == (TRT, {"trt_fp16_enable": "False"})


def test_the_cache_is_not_asked_for_without_tensorrt(tmp_path: Path) -> None:
    def unexpected() -> EngineCache:
        raise AssertionError("asked for a cache without TensorRT")

    assert resolve_providers(("tensorrt", "cuda", "cpu"), engine_cache=unexpected)[-1] == "CPUExecutionProvider"


def test_new_weights_or_another_graph_get_their_own_engine_folder(tmp_path: Path) -> None:
    path = model_file(tmp_path)
    first = engine_cache_folder(path)
    assert first is not None and first.engines.is_dir() and first.timing.is_dir()
    assert first.engines.parent == first.timing.parent == tmp_path / "tensorrt"
    assert engine_cache_folder(path) == first  # the same bytes: the same engines
    assert engine_cache_folder(path, graph=b"a graph cut from it") != first
    path.write_bytes(b"retrained onnx bytes")
    retrained = engine_cache_folder(path)
    assert retrained is not None and retrained.engines != first.engines
    assert retrained.timing == first.timing  # kernel timings hold for any model of these versions


def test_a_store_where_the_cache_cannot_be_made_builds_at_every_start(tmp_path: Path) -> None:
    path = model_file(tmp_path)
    (tmp_path / "tensorrt").write_text("a file where the folder would go")
    assert engine_cache_folder(path) is None
