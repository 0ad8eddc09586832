"""GPU utilisation and memory through NVML, read at scrape time (DESIGN §5).

`NvmlCollector` is a prometheus_client custom collector: each scrape of /metrics asks NVML for
every device's utilisation and memory in use. It is registered only where NVML initialises, so a
machine without a GPU (or without the driver) has no GPU series, no thread and no per-scrape cost;
the one failed initialisation is logged at debug. A scrape-time read also keeps the values as
fresh as the scrape itself, which a periodic updater would not.

The families (names, help, labels) are defined in `service.metrics.gpu_families`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from service.metrics import gpu_families

__all__ = ["NvmlCollector", "register_gpu_metrics"]

logger = logging.getLogger(__name__)


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlCollector:
    """Utilisation (0..1) and memory used (bytes) of each NVML device, labelled by device index.

    `nvml` is the `pynvml` module (or an object with the same functions). Build it with `start`,
    which returns None when NVML does not initialise.
    """

    def __init__(self, nvml: Any, device_count: int) -> None:
        self._nvml = nvml
        self._device_count = device_count
        self._warned: set[int] = set()

    @classmethod
    def start(cls, nvml: Any | None = None) -> NvmlCollector | None:
        """Initialise NVML and count the devices; None (logged at debug) when there is no NVML or no GPU."""
        nvml = nvml if nvml is not None else _load_nvml()
        if nvml is None:
            logger.debug("GPU metrics off: pynvml is not installed")
            return None
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError (no driver, no library) or an OSError loading it
            logger.debug("GPU metrics off: NVML does not initialise (%s)", exc)
            return None
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            logger.debug("GPU metrics off: NVML counts no devices (%s)", exc)
            count = 0
        if count == 0:
            nvml.nvmlShutdown()
            return None
        return cls(nvml, count)

    def close(self) -> None:
        """Release this collector's NVML initialisation (NVML counts them)."""
        self._nvml.nvmlShutdown()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples: the registry learns the names without a call to NVML."""
        yield from gpu_families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        utilization, memory = gpu_families()
        for index in range(self._device_count):
            try:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                busy_percent = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                used_bytes = self._nvml.nvmlDeviceGetMemoryInfo(handle).used
            except Exception as exc:  # a device lost from the bus fails alone; the others still report
                level = logging.DEBUG if index in self._warned else logging.WARNING
                self._warned.add(index)
                logger.log(level, "GPU %d: NVML read failed (%s); its series are left out of this scrape", index, exc)
                continue
            utilization.add_metric([str(index)], float(busy_percent) / 100.0)
            memory.add_metric([str(index)], float(used_bytes))
        yield utilization
        yield memory


def register_gpu_metrics(registry: CollectorRegistry, nvml: Any | None = None) -> NvmlCollector | None:
    """Register an `NvmlCollector` on `registry` where NVML has devices; the collector, or None."""
    collector = NvmlCollector.start(nvml)
    if collector is None:
        return None
    try:
        registry.register(collector)
    except ValueError:  # this registry already exports the GPU families (an app built twice on one Metrics)
        logger.debug("GPU metrics already registered on this registry")
        collector.close()
        return None
    return collector
