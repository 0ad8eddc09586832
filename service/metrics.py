"""Every Prometheus metric of the service, defined once (prefix `poseserve_`, base units).

A `Metrics` object owns its own `CollectorRegistry`, so each app instance (and each test) has
independent counters. Dashboards in `deploy/grafana` use only the names defined here.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from service.streams.states import FrameOutcome, StreamState

__all__ = ["Metrics", "gpu_families"]

_LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
_JITTER_BUCKETS_PX = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 64)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests_total = Counter(
            "poseserve_requests_total",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "poseserve_request_seconds",
            "HTTP request duration",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "poseserve_queue_wait_seconds",
            "time from enqueue to batch start",
            ["backend", "stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "poseserve_batch_size",
            "items per inference batch",
            ["backend", "stage"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "poseserve_inference_seconds",
            "model run time per batch (excludes pre/post-processing)",
            ["backend", "stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("poseserve_queue_depth", "items waiting for a batch", ["backend", "stage"], registry=r)
        self.items_dropped_total = Counter(
            "poseserve_items_dropped_total",
            "items that never reached inference, by reason: overloaded (refused by admission: queue full in "
            "items or in time), queue_delay (waited max_queue_delay_ms in the queue), expired (deadline), "
            "cancelled, no_workers (queued when the stage's last worker was given up)",
            ["backend", "stage", "reason"],
            registry=r,
        )
        self.workers = Gauge("poseserve_workers", "inference worker threads by state", ["state"], registry=r)
        self.ready = Gauge(
            "poseserve_ready",
            "1 when /readyz answers ready (preloaded backends loaded, no stage without live workers, Redis "
            "reachable when configured), else 0; evaluated at every /readyz and /metrics request",
            registry=r,
        )
        self.backend_info = Gauge(
            "poseserve_backend_info",
            "1 per loaded backend, labelled with the inference runtime (onnxruntime, openvino) and the precision "
            "(fp32, bf16, fp16, int8) it serves",
            ["backend", "runtime", "precision"],
            registry=r,
        )
        self.worker_restarts_total = Counter(
            "poseserve_worker_restarts_total",
            "inference worker threads restarted by their stage's supervisor after dying",
            ["backend", "stage"],
            registry=r,
        )
        self.quality_gate_total = Counter(
            "poseserve_quality_gate_total",
            "crops of a quality-gated top-down backend (SHaRPose) by the gate's decision: refined (predicted "
            "quality below the backend's quality_threshold: also ran stage fine) or coarse (stage pose alone)",
            ["backend", "decision"],
            registry=r,
        )

        # camera streams (label `stream` = the stream's name; bounded by streams.max_streams)
        self.stream_frames_total = Counter(
            "poseserve_stream_frames_total",
            "camera frames by outcome (one of streams.states.FrameOutcome)",
            ["stream", "outcome"],
            registry=r,
        )
        self.stream_input_fps = Gauge(
            "poseserve_stream_input_fps", "frames/s read from the camera", ["stream"], registry=r
        )
        self.stream_result_fps = Gauge("poseserve_stream_result_fps", "results/s produced", ["stream"], registry=r)
        self.stream_result_age_seconds = Histogram(
            "poseserve_stream_result_age_seconds",
            "capture -> result sent",
            ["stream"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stream_state = Gauge(
            "poseserve_stream_state", "1 for the stream's current state", ["stream", "state"], registry=r
        )
        self.stream_reconnects_total = Counter(
            "poseserve_stream_reconnects_total", "camera reconnections", ["stream"], registry=r
        )
        self.stream_reader_restarts_total = Counter(
            "poseserve_stream_reader_restarts_total",
            "camera readers restarted by the watchdog after their thread failed",
            ["stream"],
            registry=r,
        )
        self.stream_keypoint_jitter_pixels = Histogram(
            "poseserve_stream_keypoint_jitter_pixels",
            "per tracked person whose box barely moved since the previous processed frame: mean displacement "
            "of its confident keypoints as sent (after smoothing, when on), image pixels",
            ["stream"],
            buckets=_JITTER_BUCKETS_PX,
            registry=r,
        )
        self.ws_clients = Gauge("poseserve_ws_clients", "connected WebSocket clients", ["stream"], registry=r)
        self.ws_messages_dropped_total = Counter(
            "poseserve_ws_messages_dropped_total",
            "messages a slow client never got (oldest dropped)",
            ["stream"],
            registry=r,
        )

        # distributed mode (service.distributed): image jobs over Redis Streams, per backend
        self.redis_stream_lag = Gauge(
            "poseserve_redis_stream_lag",
            "jobs in the backend's Redis stream not yet delivered to any worker (consumer group lag)",
            ["backend"],
            registry=r,
        )
        self.redis_stream_pending = Gauge(
            "poseserve_redis_stream_pending",
            "jobs delivered to a worker and not yet acknowledged",
            ["backend"],
            registry=r,
        )
        self.redis_workers = Gauge(
            "poseserve_redis_workers", "workers whose heartbeat is fresh, per backend", ["backend"], registry=r
        )
        self.redis_jobs_total = Counter(
            "poseserve_redis_jobs_total",
            "image jobs by outcome: gateway: sent, answered, duplicate (a second reply, dropped), late (reply after "
            "the request gave up), lost (Redis restarted under it); worker: done, failed (typed failure replied), "
            "expired (past its deadline: acknowledged, never run)",
            ["backend", "outcome"],
            registry=r,
        )
        self.redis_jobs_redelivered_total = Counter(
            "poseserve_redis_jobs_redelivered_total",
            "jobs a worker claimed from another (presumed dead) worker after the visibility timeout",
            ["backend"],
            registry=r,
        )
        self.redis_lease_moves_total = Counter(
            "poseserve_redis_lease_moves_total",
            "cameras this worker took over after the lease of their previous worker expired",
            registry=r,
        )
        self.redis_connected = Gauge(
            "poseserve_redis_connected", "1 while this process reaches Redis, else 0", registry=r
        )
        self.redis_reconnects_total = Counter(
            "poseserve_redis_reconnects_total", "times this process got Redis back after losing it", registry=r
        )

    def forget_stream(self, stream: str) -> None:
        """Remove every series of a deleted stream."""
        for metric in (
            self.stream_input_fps,
            self.stream_result_fps,
            self.stream_result_age_seconds,
            self.stream_reconnects_total,
            self.stream_reader_restarts_total,
            self.stream_keypoint_jitter_pixels,
            self.ws_clients,
            self.ws_messages_dropped_total,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(stream)
        for metric, values in (
            (self.stream_frames_total, tuple(FrameOutcome)),
            (self.stream_state, tuple(StreamState)),
        ):
            for value in values:
                with contextlib.suppress(KeyError):
                    metric.remove(stream, value)


def gpu_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    """Empty (utilization, memory used) families with label `gpu` (the NVML device index), filled at
    scrape time by `service.gpu.NvmlCollector`; they exist only where NVML initialises."""
    return (
        GaugeMetricFamily(
            "poseserve_gpu_utilization_ratio",
            "fraction of the driver's last sample period in which a kernel ran on the GPU (NVML), 0..1",
            labels=["gpu"],
        ),
        GaugeMetricFamily("poseserve_gpu_memory_used_bytes", "GPU memory in use, all processes (NVML)", labels=["gpu"]),
    )
