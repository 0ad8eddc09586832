"""The Grafana dashboards of poseserve, as code (grafana-foundation-sdk).

Writes ``dashboards/{overview,cameras,engine}.json`` next to this file. Never edit those files by
hand: change this module and regenerate with ``python -m deploy.grafana.build`` (``make
dashboards``); ``--check`` exits non-zero when the committed JSON differs from a fresh build.

Every query uses only the metrics of ``service/metrics.py`` (DESIGN §5) and three template
variables: ``datasource`` (a Prometheus data source), ``stream`` and ``backend``.

Counters that only appear with their first event (reconnects, worker restarts, dropped items,
dropped WebSocket messages) fall back to 0 per stream or per backend/stage through an ``or``
with a series that always exists, so their panels show 0 rather than "No data".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dash_models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from service.streams.states import FrameOutcome, StreamState

__all__ = ["DASHBOARDS", "DATASOURCE_UID", "GPU_PANELS", "REDIS_PANELS", "build_all", "main", "render"]

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"
DATASOURCE_UID = "poseserve-prometheus"
"""uid of the provisioned data source (provisioning/datasources/prometheus.yml); the default of `$datasource`"""

DS = dash_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
STREAM = 'stream=~"$stream"'
BACKEND = 'backend=~"$backend"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)

GPU_PANELS = frozenset({"GPU utilisation", "GPU memory used"})
REDIS_PANELS = frozenset({"Redis stream lag and pending", "Live workers", "Image jobs by outcome"})
"""per-backend series only gateways and workers running with `--redis-url` export"""
"""Panels whose metrics exist only where NVML finds an NVIDIA GPU."""

WIDTH = 24  # Grafana's grid is 24 columns wide


# -- helpers ---------------------------------------------------------------------------------------
def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def quantile_queries(metric: str, by: str, selector: str, legend: str) -> list[prometheus.Dataquery]:
    """p50/p95/p99 of histogram `metric` per `by` labels (one query each)."""
    return [
        query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{legend} p{round(q * 100)}",
            ref=chr(ord("A") + i),
        )
        for i, q in enumerate(QUANTILES)
    ]


def series(
    title: str,
    targets: list[prometheus.Dataquery],
    *,
    unit: str = "short",
    description: str = "",
    stacked: bool = False,
    span: int = 12,
    height: int = 8,
    min_zero: bool = True,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DS)
        .unit(unit)
        .span(span)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
    )
    if description:
        panel = panel.description(description)
    if min_zero:
        panel = panel.min(0)
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL)).fill_opacity(40)
    return panel.targets(targets)


def big_number(title: str, expr: str, *, unit: str = "short", description: str = "", span: int = 4) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(span)
        .height(4)
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(query(expr, title))
    )


def zero_fallback(expr: str, by: str, always: str) -> str:
    """`expr`, or 0 for every `by` group of the always-present series `always`."""
    return f"{expr} or sum by ({by}) (0 * {always})"


def variables() -> list[dash.DatasourceVariable | dash.QueryVariable]:
    ds = (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dash_models.VariableOption(selected=True, text="Prometheus", value=DATASOURCE_UID))
    )

    def labels(name: str, label: str, metric: str) -> dash.QueryVariable:
        return (
            dash.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query({"query": f"label_values({metric}, {name})", "refId": f"{name}-values"})
            .refresh(dash_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dash_models.VariableOption(selected=True, text="All", value="$__all"))
        )

    # histograms have no series under their own name: the backend comes from the batch counter
    return [
        ds,
        labels("stream", "Stream", "poseserve_stream_frames_total"),
        labels("backend", "Backend", "poseserve_batch_size_count"),
    ]


def new_dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    board = (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["poseserve"])
        .editable()
        .timezone("browser")
        .time("now-30m", "now")
        .refresh("10s")
        .tooltip(dash_models.DashboardCursorSync.CROSSHAIR)
        .link(
            dash.DashboardLink("poseserve")
            .type(dash_models.DashboardLinkType.DASHBOARDS)
            .tags(["poseserve"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for variable in variables():
        board = board.with_variable(variable)
    return board


# -- dashboards ------------------------------------------------------------------------------------
def overview() -> dash.Dashboard:
    board = new_dashboard(
        "poseserve-overview", "poseserve / Overview", "HTTP traffic, latency and errors; what is queued and running."
    )
    board = (
        board.with_row(dash.Row("Now"))
        .with_panel(
            big_number(
                "Ready",
                "min(poseserve_ready)",
                description="1 when every instance answers /readyz 200 (models loaded, workers live, Redis reachable)",
            )
        )
        .with_panel(big_number("Requests/s", f"sum(rate(poseserve_requests_total[{RATE}]))", unit="reqps"))
        .with_panel(
            big_number(
                "Error ratio",
                f'(sum(rate(poseserve_requests_total{{code=~"5.."}}[{RATE}])) or vector(0))'
                f" / sum(rate(poseserve_requests_total[{RATE}]))",
                unit="percentunit",
                description="share of requests answered 5xx",
            )
        )
        .with_panel(
            big_number(
                "Queued items",
                f"sum(poseserve_queue_depth{{{BACKEND}}})",
                description="items waiting for a batch, all backends and stages",
            )
        )
        .with_panel(
            big_number(
                "Busy workers",
                'sum(poseserve_workers{state="busy"})',
                description="inference workers running a batch now (the in-flight work)",
            )
        )
        .with_panel(
            big_number("Idle workers", 'sum(poseserve_workers{state="idle"})', description="workers waiting for work")
        )
        .with_panel(
            big_number(
                "Live cameras",
                f'sum(poseserve_stream_state{{state="live",{STREAM}}})',
                description="streams whose camera delivers frames",
            )
        )
        .with_row(dash.Row("HTTP"))
        .with_panel(
            series(
                "Requests/s by route",
                [query(f"sum by (route) (rate(poseserve_requests_total[{RATE}]))", "{{route}}")],
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Errors/s by code",
                [
                    query(
                        f'sum by (route, code) (rate(poseserve_requests_total{{code=~"[45].."}}[{RATE}]))',
                        "{{code}} {{route}}",
                    )
                ],
                unit="reqps",
                description="4xx: the client's request was refused; 5xx: the service failed or was overloaded",
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Latency by route",
                quantile_queries("poseserve_request_seconds", "route", "", "{{route}}"),
                unit="s",
                description="request duration percentiles, from poseserve_request_seconds",
                span=WIDTH,
                height=9,
            )
        )
    )
    return board


def _state_expr() -> tuple[str, dash_models.ValueMap]:
    """One number per stream (the index of its current state) and the mapping back to the state's name."""
    states = list(StreamState)
    expr = " or ".join(
        f'poseserve_stream_state{{{STREAM},state="{state}"}} * {i + 1}' for i, state in enumerate(states)
    )
    colours = {
        StreamState.CONNECTING: "blue",
        StreamState.LIVE: "green",
        StreamState.RECONNECTING: "orange",
        StreamState.FAILED: "red",
        StreamState.STOPPED: "text",
    }
    mapping = dash_models.ValueMap(
        {
            str(i + 1): dash_models.ValueMappingResult(text=str(state), color=colours.get(state, "text"), index=i)
            for i, state in enumerate(states)
        }
    )
    return f"sum by (stream) ({expr})", mapping


def cameras() -> dash.Dashboard:
    board = new_dashboard(
        "poseserve-cameras",
        "poseserve / Cameras",
        "Camera streams: frame rates, capture-to-result age, frame outcomes, reconnects, WebSocket clients.",
    )
    state_expr, state_mapping = _state_expr()
    outcomes = ", ".join(str(o) for o in FrameOutcome)
    ws_always = f"poseserve_ws_clients{{{STREAM}}}"
    frames_always = f"poseserve_stream_input_fps{{{STREAM}}}"
    board = (
        board.with_row(dash.Row("Frames"))
        .with_panel(
            series(
                "Input vs result fps",
                [
                    query(f"poseserve_stream_input_fps{{{STREAM}}}", "{{stream}} input", ref="A"),
                    query(f"poseserve_stream_result_fps{{{STREAM}}}", "{{stream}} results", ref="B"),
                ],
                unit="fps",
                description="frames/s read from each camera against results/s sent to its clients "
                "(results are capped by the stream's max_fps)",
            )
        )
        .with_panel(
            series(
                "Capture to result age",
                quantile_queries("poseserve_stream_result_age_seconds", "stream", STREAM, "{{stream}}"),
                unit="s",
                description="age of each result when sent: capture time to the WebSocket message",
            )
        )
        .with_panel(
            series(
                "Keypoint jitter",
                quantile_queries("poseserve_stream_keypoint_jitter_pixels", "stream", STREAM, "{{stream}}"),
                unit="px",
                description="mean frame-to-frame keypoint displacement of tracked persons whose box barely moves "
                "(what clients see: smoothed when the subscription smooths)",
            )
        )
        .with_panel(
            series(
                "Frame outcomes",
                [
                    query(
                        f"sum by (stream, outcome) (rate(poseserve_stream_frames_total{{{STREAM}}}[{RATE}]))",
                        "{{stream}} {{outcome}}",
                    )
                ],
                unit="fps",
                description=f"every frame read gets one outcome ({outcomes}); skipped = over max_fps, not an overload",
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Reconnects and reader restarts",
                [
                    query(
                        zero_fallback(
                            f"sum by (stream) (increase(poseserve_stream_reconnects_total{{{STREAM}}}[{RATE}]))",
                            "stream",
                            frames_always,
                        ),
                        "{{stream}} reconnects",
                        ref="A",
                    ),
                    query(
                        zero_fallback(
                            f"sum by (stream) (increase(poseserve_stream_reader_restarts_total{{{STREAM}}}[{RATE}]))",
                            "stream",
                            frames_always,
                        ),
                        "{{stream}} reader restarts",
                        ref="B",
                    ),
                ],
                description="camera reconnections, and reader threads restarted by the watchdog",
            )
        )
        .with_panel(
            statetimeline.Panel()
            .title("Stream state")
            .description("connecting, live, reconnecting, failed or stopped, per stream")
            .datasource(DS)
            .span(WIDTH)
            .height(6)
            .show_value(common_models.VisibilityMode.AUTO)
            .merge_values(True)
            .fill_opacity(80)
            .mappings([state_mapping])
            .with_target(query(state_expr, "{{stream}}"))
        )
        .with_row(dash.Row("WebSocket clients"))
        .with_panel(
            series(
                "WebSocket clients",
                [query(f"sum by (stream) (poseserve_ws_clients{{{STREAM}}})", "{{stream}}")],
            )
        )
        .with_panel(
            series(
                "WebSocket messages dropped",
                [
                    query(
                        zero_fallback(
                            f"sum by (stream) (rate(poseserve_ws_messages_dropped_total{{{STREAM}}}[{RATE}]))",
                            "stream",
                            ws_always,
                        ),
                        "{{stream}}",
                    )
                ],
                unit="short",
                description="messages/s a slow client never got (its oldest queued message dropped)",
            )
        )
    )
    return board


def engine() -> dash.Dashboard:
    board = new_dashboard(
        "poseserve-engine",
        "poseserve / Engine",
        "Batching and inference per backend and stage; workers; GPUs.",
    )
    stage_always = f"poseserve_queue_depth{{{BACKEND}}}"
    board = (
        board.with_row(dash.Row("Batches"))
        .with_panel(
            heatmap.Panel()
            .title("Batch size distribution")
            .description("batches per size bucket over time (poseserve_batch_size)")
            .datasource(DS)
            .span(12)
            .height(8)
            .calculate(False)
            .rows_frame(heatmap.RowsHeatmapOptions().layout(common_models.HeatmapCellLayout.LE))
            .color(
                heatmap.HeatmapColorOptions()
                .mode(heatmap_models.HeatmapColorMode.SCHEME)
                .scheme("Oranges")
                .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
                .exponent(0.5)
                .steps(64)
                .reverse(False)
            )
            .y_axis(heatmap.YAxisConfig().unit("short").decimals(0))
            .cell_values(heatmap.CellValues().unit("short"))
            .show_value(common_models.VisibilityMode.NEVER)
            .show_tooltip()
            .with_target(
                query(
                    f"sum by (le) (increase(poseserve_batch_size_bucket{{{BACKEND}}}[{RATE}]))",
                    "{{le}}",
                ).format(PromQueryFormat.HEATMAP)
            )
        )
        .with_panel(
            bargauge.Panel()
            .title("Batch sizes in the time range")
            .description("batches per size over the dashboard's time range")
            .datasource(DS)
            .span(6)
            .height(8)
            .orientation(common_models.VizOrientation.HORIZONTAL)
            .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .unit("short")
            .with_target(
                query(
                    f"sum by (le) (increase(poseserve_batch_size_bucket{{{BACKEND}}}[$__range]))",
                    "{{le}}",
                    instant=True,
                ).format(PromQueryFormat.HEATMAP)
            )
        )
        .with_panel(
            series(
                "Mean batch size",
                [
                    query(
                        f"sum by (backend, stage) (rate(poseserve_batch_size_sum{{{BACKEND}}}[{RATE}]))"
                        f" / sum by (backend, stage) (rate(poseserve_batch_size_count{{{BACKEND}}}[{RATE}]))",
                        "{{backend}}/{{stage}}",
                    )
                ],
                span=6,
            )
        )
        .with_panel(
            series(
                "Queue wait",
                quantile_queries("poseserve_queue_wait_seconds", "backend, stage", BACKEND, "{{backend}}/{{stage}}"),
                unit="s",
                description="enqueue to batch start",
            )
        )
        .with_panel(
            series(
                "Queue depth",
                [query(f"sum by (backend, stage) (poseserve_queue_depth{{{BACKEND}}})", "{{backend}}/{{stage}}")],
                description="items waiting for a batch",
            )
        )
        .with_panel(
            series(
                "Inference time per batch",
                quantile_queries("poseserve_inference_seconds", "backend, stage", BACKEND, "{{backend}}/{{stage}}"),
                unit="s",
                description="model run time per batch, without pre/post-processing",
                span=WIDTH,
            )
        )
        .with_row(dash.Row("Workers"))
        .with_panel(
            series(
                "Backends: runtime and precision",
                [
                    query(
                        f"max by (backend, runtime, precision) (poseserve_backend_info{{{BACKEND}}})",
                        "{{backend}} {{runtime}}/{{precision}}",
                    )
                ],
                description="the runtime and precision each loaded backend serves with (1 while loaded)",
                span=8,
            )
        )
        .with_panel(
            series(
                "Workers by state",
                [query("sum by (state) (poseserve_workers)", "{{state}}")],
                stacked=True,
                span=8,
            )
        )
        .with_panel(
            series(
                "Worker restarts",
                [
                    query(
                        zero_fallback(
                            f"sum by (backend, stage) (increase(poseserve_worker_restarts_total{{{BACKEND}}}[{RATE}]))",
                            "backend, stage",
                            stage_always,
                        ),
                        "{{backend}}/{{stage}}",
                    )
                ],
                description="worker threads restarted by their stage's supervisor after dying",
                span=8,
            )
        )
        .with_panel(
            series(
                "Items dropped by reason",
                [
                    query(
                        zero_fallback(
                            "sum by (backend, stage, reason) "
                            f"(rate(poseserve_items_dropped_total{{{BACKEND}}}[{RATE}]))",
                            "backend, stage",
                            stage_always,
                        ),
                        "{{backend}}/{{stage}} {{reason}}",
                    )
                ],
                unit="short",
                description="items/s that never reached inference: overloaded, queue_delay, expired, "
                "cancelled, no_workers",
                stacked=True,
                span=8,
            )
        )
        .with_row(dash.Row("Quality gate"))
        .with_panel(
            series(
                "Quality gate decisions",
                [
                    query(
                        zero_fallback(
                            f"sum by (backend, decision) (rate(poseserve_quality_gate_total{{{BACKEND}}}[{RATE}]))",
                            "backend",
                            stage_always,
                        ),
                        "{{backend}} {{decision}}",
                    )
                ],
                description="crops/s of quality-gated backends (SHaRPose) by the gate's decision: refined (also ran "
                "stage fine) or coarse; refined / (refined + coarse) is the fraction refined, stage fine's batch "
                "sizes are in the Batches row; 0 for backends without a gate",
                stacked=True,
                span=WIDTH,
            )
        )
        .with_row(dash.Row("GPU"))
        .with_panel(
            series(
                "GPU utilisation",
                [query("poseserve_gpu_utilization_ratio", "GPU {{gpu}}")],
                unit="percentunit",
                description="from NVML; absent without an NVIDIA GPU",
            ).max(1)
        )
        .with_panel(
            series(
                "GPU memory used",
                [query("poseserve_gpu_memory_used_bytes", "GPU {{gpu}}")],
                unit="bytes",
                description="from NVML; absent without an NVIDIA GPU",
            )
        )
        .with_row(dash.Row("Scale-out over Redis"))
        .with_panel(
            series(
                "Redis stream lag and pending",
                [
                    query(f"max by (backend) (poseserve_redis_stream_lag{{{BACKEND}}})", "{{backend}} lag", ref="A"),
                    query(
                        f"max by (backend) (poseserve_redis_stream_pending{{{BACKEND}}})",
                        "{{backend}} pending",
                        ref="B",
                    ),
                ],
                description="jobs not yet delivered to a worker (lag: what KEDA scales on) and delivered but "
                "not acknowledged (pending), per backend; only with --redis-url",
                span=8,
            )
        )
        .with_panel(
            series(
                "Live workers",
                [query(f"max by (backend) (poseserve_redis_workers{{{BACKEND}}})", "{{backend}}")],
                description="workers with a fresh heartbeat, as gateways see them",
                span=4,
            )
        )
        .with_panel(
            series(
                "Image jobs by outcome",
                [
                    query(
                        f"sum by (backend, outcome) (rate(poseserve_redis_jobs_total{{{BACKEND}}}[{RATE}]))",
                        "{{backend}} {{outcome}}",
                        ref="A",
                    ),
                    query(
                        f"sum by (backend) (rate(poseserve_redis_jobs_redelivered_total{{{BACKEND}}}[{RATE}]))",
                        "{{backend}} re-delivered",
                        ref="B",
                    ),
                ],
                unit="ops",
                description="gateways: sent, answered, duplicate, late, lost; workers: done, failed, expired; "
                "re-delivered: jobs claimed from a dead worker",
                span=8,
            )
        )
        .with_panel(
            series(
                "Redis connection and lease moves",
                [
                    query("min(poseserve_redis_connected)", "connected (all processes)", ref="A"),
                    query(f"sum(increase(poseserve_redis_reconnects_total[{RATE}]))", "reconnects", ref="B"),
                    query(f"sum(increase(poseserve_redis_lease_moves_total[{RATE}]))", "camera lease moves", ref="C"),
                ],
                description="1 while every process reaches Redis; reconnections; cameras moved to another "
                "worker after their worker's lease expired",
                span=4,
            )
        )
    )
    return board


DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "overview": overview,
    "cameras": cameras,
    "engine": engine,
}


# -- output ----------------------------------------------------------------------------------------
def render(board: dash.Dashboard) -> str:
    """Stable JSON: keys sorted, panel ids numbered in layout order."""
    model = board.build()
    for index, panel in enumerate(model.panels or [], start=1):
        panel.id_val = index
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def build_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": render(make()) for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs from a build")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    built = build_all()
    if args.check:
        stale = [name for name, text in built.items() if _read(args.out / name) != text]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in built)
        for name in stale:
            print(f"{args.out / name}: differs from a fresh build (run `make dashboards`)", file=sys.stderr)
        for name in extra:
            print(f"{args.out / name}: not built by {Path(__file__).name}", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in built.items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
