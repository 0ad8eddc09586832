"""The app's /metrics beyond the request counters: `poseserve_ready` as /readyz answers, and GPU
series exactly where NVML sees a GPU on this machine, with no error (nor any log above debug) where
it does not."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from service.config import Settings
from tests.support import client_for, metric_samples

pytestmark = pytest.mark.integration


def nvml_gpu_count() -> int:
    """Devices NVML sees here (0 without the library, the driver or a GPU), asked directly."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def test_metrics_have_gpu_series_only_where_nvml_sees_a_gpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="service.gpu")

    async def scrape() -> tuple[int, str]:
        async with client_for(Settings(model_dir=tmp_path, preload=())) as client:
            response = await client.get("/metrics")
            return response.status_code, response.text

    status, text = asyncio.run(scrape())
    assert status == 200
    gpus = nvml_gpu_count()
    utilization = metric_samples(text, "poseserve_gpu_utilization_ratio")
    memory = metric_samples(text, "poseserve_gpu_memory_used_bytes")
    if gpus == 0:
        assert "poseserve_gpu" not in text
    else:
        assert sorted(lb["gpu"] for lb, _ in utilization) == sorted(str(i) for i in range(gpus))
        assert all(0.0 <= v <= 1.0 for _, v in utilization)
        assert len(memory) == gpus and all(v > 0 for _, v in memory)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "service.gpu")


@pytest.mark.parametrize(("preload", "ready"), [((), 1.0), (("movenet-multipose",), 0.0)])
def test_ready_follows_readyz(tmp_path: Path, preload: tuple[str, ...], ready: float) -> None:
    """An empty model dir: a preloaded backend cannot load, so the service is not ready."""

    async def scrape() -> tuple[int, str]:
        async with client_for(Settings(model_dir=tmp_path, preload=preload)) as client:
            readyz = await client.get("/readyz")
            return readyz.status_code, (await client.get("/metrics")).text

    readyz_status, text = asyncio.run(scrape())
    assert readyz_status == (200 if ready else 503)
    assert metric_samples(text, "poseserve_ready") == [({}, ready)]
