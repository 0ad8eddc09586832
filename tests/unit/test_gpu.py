"""GPU metrics through NVML: the collector's reading and registration, against a fake NVML module."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service.gpu import NvmlCollector, register_gpu_metrics
from tests.support import metric_samples

pytestmark = pytest.mark.unit


class NVMLError(Exception):
    pass


class FakeNvml:
    """The few pynvml functions the collector calls; `busy_percent[i] is None` = device i fails to read."""

    def __init__(self, busy_percent: list[int | None], used_bytes: list[int], *, init_fails: bool = False) -> None:
        self.busy_percent, self.used_bytes, self.init_fails = busy_percent, used_bytes, init_fails
        self.inits = 0

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise NVMLError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.inits -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.busy_percent)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if self.busy_percent[handle] is None:
            raise NVMLError("GPU is lost")
        return SimpleNamespace(gpu=self.busy_percent[handle], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=self.used_bytes[handle], total=80 << 30, free=0)


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_each_device_reports_utilization_as_a_ratio_and_memory_in_bytes() -> None:
    nvml = FakeNvml([37, 100], [5 << 30, 123])
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, nvml) is not None
    text = scrape(registry)
    assert metric_samples(text, "poseserve_gpu_utilization_ratio") == [({"gpu": "0"}, 0.37), ({"gpu": "1"}, 1.0)]
    assert metric_samples(text, "poseserve_gpu_memory_used_bytes") == [
        ({"gpu": "0"}, float(5 << 30)),
        ({"gpu": "1"}, 123.0),
    ]
    nvml.busy_percent[0] = 5  # read at every scrape
    assert ({"gpu": "0"}, 0.05) in metric_samples(scrape(registry), "poseserve_gpu_utilization_ratio")


def test_without_nvml_or_devices_nothing_is_registered_and_nothing_logged_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.gpu")
    for nvml in (FakeNvml([], [], init_fails=True), FakeNvml([], [])):
        registry = CollectorRegistry()
        assert register_gpu_metrics(registry, nvml) is None
        assert "poseserve_gpu" not in scrape(registry)
        assert nvml.inits == 0  # a device-less NVML is shut down again
    assert caplog.records and all(r.levelno == logging.DEBUG for r in caplog.records)


def test_a_device_that_fails_to_read_is_left_out_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="service.gpu")
    collector = NvmlCollector(FakeNvml([None, 50], [1, 2]), device_count=2)
    registry = CollectorRegistry()
    registry.register(collector)
    for _ in range(3):
        text = scrape(registry)
        assert metric_samples(text, "poseserve_gpu_utilization_ratio") == [({"gpu": "1"}, 0.5)]
        assert metric_samples(text, "poseserve_gpu_memory_used_bytes") == [({"gpu": "1"}, 2.0)]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_a_registry_gets_the_gpu_families_once() -> None:
    nvml = FakeNvml([10], [1])
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry, nvml) is not None
    assert register_gpu_metrics(registry, nvml) is None
    assert nvml.inits == 1
    assert len(metric_samples(scrape(registry), "poseserve_gpu_utilization_ratio")) == 1
