"""Shared test helpers: missing prerequisites, where ../shared is, real photos, bad inputs, image mutations,
metric parsing."""

from __future__ import annotations

import io
import json
import os
import random
import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NoReturn

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest.fleet import fleet_available
from loadtest.topdown_frames import paste_people
from models.transforms import Letterbox
from service.api import create_app
from service.config import Settings
from service.spawn import spawned_server

REPO = Path(__file__).resolve().parents[1]


def skip_unless_ci(reason: str) -> NoReturn:
    """A prerequisite is missing (``../shared``, its photos or videos, npm or a cached tarball, the
    convert extra, the RTSP camera stack): skip with ``reason``, or fail with it when ``CI=true``,
    since CI installs all of them and a skip there would hide a broken set-up.

    Works at module level too. Not for what CI never has (a GPU): those stay plain skips.
    """
    __tracebackhide__ = True  # reports point at the caller
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: prerequisites must be present, not skipped)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def shared_dir() -> Path:
    """../shared (the team's data), or POSESERVE_SHARED_DIR."""
    return Path(os.environ.get("POSESERVE_SHARED_DIR", REPO.parent / "shared")).resolve()


def camera_video(name: str = "cam01.mp4") -> Path:
    """A real clip (pose2sim_multi) for a real RTSP camera; skips (fails under CI) without the
    camera stack (GStreamer rtsp-server, ffmpeg) or the video."""
    reason = fleet_available()
    if reason:
        skip_unless_ci(f"RTSP camera fleet unavailable: {reason}")
    video = shared_dir() / "data" / "videos" / "pose2sim_multi" / name
    if not video.is_file():
        skip_unless_ci(f"{video} not found (set POSESERVE_SHARED_DIR)")
    return video


class PixelCountDetector:
    """A stand-in detector: a frame's first pixel says how many people it holds, ``layout(n)`` gives
    their boxes (x1, y1, x2, y2), each scoring 0.9. Its model input is that one value."""

    name = "fake-detector"
    input_size = 8

    def __init__(self, layout: Callable[[int], np.ndarray]) -> None:
        self.layout = layout

    def preprocess(self, image_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        geometry = Letterbox(8, 1.0, 1.0, 0.0, 0.0, (image_rgb.shape[1], image_rgb.shape[0]))
        return np.full((1,), image_rgb[0, 0, 0], np.float32), geometry

    def postprocess(self, outputs: list[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        n = int(outputs[0][0])
        return self.layout(n), np.full(n, 0.9, np.float32)


def linked_store(folder: Path, source: Path, *names: str) -> Path:
    """``folder`` (created) as a weights store of its own holding links to models ``names`` of the
    store ``source``: what a test writes there (exports, pulls, variants) stays in it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".onnx", ".json"):
            (folder / f"{name}{suffix}").symlink_to((source / f"{name}{suffix}").resolve())
    return folder


def cpu_lacks(precision: str) -> str | None:
    """Why OpenVINO cannot run `precision` on this CPU (bf16 needs AVX512-BF16 or AMX), or None."""
    from models.runtimes import runtime_problem

    return runtime_problem("openvino", precision)  # type: ignore[arg-type]


def require_cpu_precision(precision: str) -> None:
    """Skip where this CPU cannot run `precision` in OpenVINO: hardware, which CI may lack as it
    lacks a GPU, so a plain skip."""
    problem = cpu_lacks(precision)
    if problem is not None:
        pytest.skip(problem)


def require_pose_samples() -> Path:
    """The pose_samples folder (COCO keypoints json + images); skips with the reason (fails under ``CI=true``)."""
    root = shared_dir() / "data" / "pose_samples"
    if not (root / "person_keypoints.json").is_file():
        skip_unless_ci(f"real test data not found at {root} (set POSESERVE_SHARED_DIR to the shared folder)")
    return root


@cache
def coco_samples() -> tuple[Path, dict]:
    root = require_pose_samples()
    return root, json.loads((root / "person_keypoints.json").read_text())


def sample_jpeg(max_side: int = 640) -> bytes:
    """A real photo with several people (from pose_samples), re-encoded as JPEG."""
    root, coco = coco_samples()
    counts: dict[int, int] = {}
    for ann in coco["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    best = max(coco["images"], key=lambda im: (counts.get(im["id"], 0), im["id"]))
    bgr = cv2.imread(str(root / best["file_name"]))
    scale = max_side / max(bgr.shape[:2])
    if scale < 1:
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


def sample_images(max_side: int = 64) -> dict[str, tuple[str, bytes]]:
    """The `sample_jpeg` photo, small, in every accepted format: name -> (media type, bytes).

    Baseline and progressive JPEG (the latter with an EXIF orientation), PNG, lossy and lossless
    WebP, BMP: the seeds the fuzz tests mutate.
    """
    bgr = cv2.imdecode(np.frombuffer(sample_jpeg(max_side), np.uint8), cv2.IMREAD_COLOR)
    photo = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = 6
    encodings: dict[str, tuple[str, dict[str, object]]] = {
        "jpeg": ("JPEG", {"quality": 90}),
        "jpeg-progressive-exif": ("JPEG", {"quality": 80, "progressive": True, "exif": exif}),
        "png": ("PNG", {}),
        "webp": ("WEBP", {"quality": 80}),
        "webp-lossless": ("WEBP", {"lossless": True}),
        "bmp": ("BMP", {}),
    }
    out = {}
    for name, (fmt, options) in encodings.items():
        buf = io.BytesIO()
        photo.save(buf, fmt, **options)
        out[name] = (f"image/{fmt.lower()}", buf.getvalue())
    return out


@dataclass(frozen=True)
class Mutant:
    kind: str
    source: str
    media_type: str
    body: bytes


MUTATION_KINDS = ("truncate", "flip", "magic_random", "lying_dims", "lying_length", "splice", "fill")
_MAGIC = {"image/jpeg": 4, "image/png": 8, "image/webp": 16, "image/bmp": 2}
_FIELD_VALUES = (0, 1, 2, 255, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _put(data: bytearray, offset: int, size: int, value: int, *, little: bool) -> None:
    """Write `value` (masked to `size` bytes) at `offset`, where the data reaches that far."""
    if offset + size <= len(data):
        data[offset : offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little" if little else "big")


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset of the marker, marker byte) of every segment before the scan data."""
    out, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        out.append((i, marker))
        if marker == 0xDA:
            break
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return out


def _png_chunks(data: bytes) -> list[int]:
    """Offsets of every chunk's length field."""
    out, i = [], 8
    while i + 8 <= len(data):
        out.append(i)
        i += 12 + int.from_bytes(data[i : i + 4], "big")
    return out


def _lie_about_dims(data: bytearray, media_type: str, rng: random.Random) -> None:
    """Overwrite the width/height fields of the header with extreme or random values."""
    values = [rng.choice(_FIELD_VALUES) if rng.random() < 0.7 else rng.getrandbits(32) for _ in range(2)]
    if media_type == "image/png":  # IHDR: width, height (u32 BE); keep the CRC valid half the time
        _put(data, 16, 4, values[0], little=False)
        _put(data, 20, 4, values[1], little=False)
        if rng.random() < 0.5:
            _put(data, 29, 4, zlib.crc32(bytes(data[12:29])), little=False)
    elif media_type == "image/jpeg":  # SOFn: height, width (u16 BE)
        sofs = [i for i, m in _jpeg_segments(bytes(data)) if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)]
        for i in sofs:
            _put(data, i + 5, 2, values[0], little=False)
            _put(data, i + 7, 2, values[1], little=False)
    elif media_type == "image/bmp":  # BITMAPINFOHEADER: width, height (i32 LE), bit count
        _put(data, 18, 4, values[0], little=True)
        _put(data, 22, 4, values[1], little=True)
        if rng.random() < 0.3:
            _put(data, 28, 2, rng.choice((0, 1, 3, 7, 16, 24, 32, 64, 0xFFFF)), little=True)
    elif data[12:16] == b"VP8 ":  # lossy WebP frame header: 14-bit width, height (u16 LE)
        _put(data, 26, 2, values[0], little=True)
        _put(data, 28, 2, values[1], little=True)
    else:  # lossless WebP: 14-bit (width - 1), (height - 1) packed after the 0x2F signature
        _put(data, 21, 4, (values[0] & 0x3FFF) | ((values[1] & 0x3FFF) << 14) | (rng.getrandbits(4) << 28), little=True)


def _lie_about_length(data: bytearray, media_type: str, rng: random.Random) -> None:
    """Overwrite one length field (segment, chunk, file or offset) with an extreme or random value."""
    value = rng.choice(_FIELD_VALUES) if rng.random() < 0.7 else rng.getrandbits(32)
    if media_type == "image/png":
        _put(data, rng.choice(_png_chunks(bytes(data))), 4, value, little=False)
    elif media_type == "image/jpeg":
        segments = [i for i, m in _jpeg_segments(bytes(data)) if m not in (0xD8, 0x01) and not 0xD0 <= m <= 0xD7]
        _put(data, rng.choice(segments) + 2, 2, value, little=False)
    elif media_type == "image/bmp":  # file size, pixel offset, header size, image size
        _put(data, rng.choice((2, 10, 14, 34)), 4, value, little=True)
    else:  # RIFF size, first chunk size
        _put(data, rng.choice((4, 16)), 4, value, little=True)


def image_mutants(count: int, seed: int, seeds: dict[str, tuple[str, bytes]]) -> list[Mutant]:
    """`count` deterministic mutations of `seeds` (see `sample_images`), the kinds in equal turns.

    truncate: a prefix; flip: 1-16 random bytes changed; magic_random: the first bytes (magic and
    maybe more of the header) then random bytes; lying_dims: width/height fields set to 0, 1,
    65535, 2^31, ... (PNG IHDR, JPEG SOF, BMP info header, WebP frame header); lying_length: a
    segment / chunk / file length field; splice: a span deleted, duplicated or random bytes
    inserted; fill: a span overwritten with 0x00 or 0xFF.
    """
    rng = random.Random(seed)
    names = sorted(seeds)
    out = []
    for i in range(count):
        kind = MUTATION_KINDS[i % len(MUTATION_KINDS)]
        source = rng.choice(names)
        media_type, original = seeds[source]
        data = bytearray(original)
        n = len(data)
        if kind == "truncate":
            data = data[: rng.randrange(n)]
        elif kind == "flip":
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(n)] ^= rng.randint(1, 255)
        elif kind == "magic_random":
            keep = _MAGIC[media_type] if rng.random() < 0.5 else rng.randint(_MAGIC[media_type], min(n, 700))
            data = data[:keep] + rng.randbytes(rng.randint(0, 4096))
        elif kind == "lying_dims":
            _lie_about_dims(data, media_type, rng)
        elif kind == "lying_length":
            _lie_about_length(data, media_type, rng)
        elif kind == "splice":
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 256))
            how = rng.choice(("delete", "duplicate", "insert"))
            insert = b"" if how == "delete" else bytes(data[a:b]) if how == "duplicate" else rng.randbytes(b - a)
            data = data[:a] + insert + data[b if how == "delete" else a :]
        else:
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 512))
            data[a:b] = bytes([rng.choice((0x00, 0xFF))]) * (b - a)
        out.append(Mutant(kind, source, media_type, bytes(data)))
    return out


def noise_jpeg(w: int = 320, h: int = 240) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@dataclass(frozen=True)
class BadInput:
    name: str
    body: bytes
    content_type: str
    status: int
    code: str
    query: str = ""
    multipart: bool = False


def bad_inputs(max_image_bytes: int) -> list[BadInput]:
    """Every malformed request of DESIGN §3 with the status and error code it must get."""
    good = noise_jpeg()
    return [
        BadInput("empty body", b"", "image/jpeg", 400, "invalid_image"),
        BadInput("truncated jpeg", good[: len(good) // 2], "image/jpeg", 400, "invalid_image"),
        BadInput("random bytes", np.random.default_rng(1).bytes(4096), "image/png", 400, "invalid_image"),
        BadInput("text/plain", b"hello", "text/plain", 415, "unsupported_media_type"),
        BadInput("no content type", good, "", 415, "unsupported_media_type"),
        BadInput("header claims 30000x30000", png_claiming(30000, 30000), "image/png", 413, "too_large"),
        BadInput("bytes over limit", b"\xff\xd8" + b"\0" * (max_image_bytes + 10), "image/jpeg", 413, "too_large"),
        BadInput("unknown backend", good, "image/jpeg", 404, "unknown_backend", query="backend=nope"),
        BadInput("min_score out of range", good, "image/jpeg", 422, "validation_error", query="min_score=7"),
        BadInput("multipart without image field", good, "", 400, "invalid_image", multipart=True),
    ]


class FakeClock:
    """A monotonic clock the test moves by hand (seconds), for the pure logic that takes `clock=`."""

    def __init__(self, start_s: float = 100.0) -> None:
        self.now = start_s

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000.0


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) for every sample of metric `name` in Prometheus text format."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m["name"] != name:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
        out.append((labels, float(m["value"])))
    return out


def batches_larger_than_one(metrics_text: str, backend: str = "movenet-multipose") -> int:
    """Number of batches of size > 1 recorded by poseserve_batch_size."""
    total = sum(
        v for lb, v in metric_samples(metrics_text, "poseserve_batch_size_count") if lb.get("backend") == backend
    )
    ones = sum(
        v
        for lb, v in metric_samples(metrics_text, "poseserve_batch_size_bucket")
        if lb.get("backend") == backend and lb.get("le") == "1.0"
    )
    return int(total - ones)


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, lifespan run (models loaded, workers started and stopped)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=30) as client:
            yield client


def assert_clean_log(log_path: Path) -> None:
    """No request or connection may have ended in an unhandled exception."""
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 200 :][:4000]


@contextmanager
def running_server(model_dir: Path, log_path: Path, **env_overrides: str) -> Iterator[tuple[str, int]]:
    """`poseserve serve` as a subprocess on an ephemeral loopback port: (base url, pid)."""
    with log_path.open("w+") as log:
        env = {"POSESERVE_MODEL_DIR": str(model_dir), **env_overrides}
        try:
            with spawned_server(env, log=log, ready_timeout_s=90) as (url, proc):
                yield url, proc.pid
        except RuntimeError as exc:
            log.seek(0)
            raise AssertionError(f"{exc}: {log.read()[-4000:]}") from None


# Four clearly separate people (pose_samples annotations 55, 53, 54 of one AIC photo, and 55
# mirrored), each cut at its ground-truth box and pasted onto a grey 2 x 2 grid. The one
# 4-person photo in pose_samples (exlpose, id 15) is a near-black low-light frame (mean pixel
# 0.19 / 255) in which neither detector finds anyone, so it cannot serve here.
GRID_PEOPLE = ((55, False), (53, False), (54, False), (55, True))


def four_person_grid() -> tuple[np.ndarray, np.ndarray]:
    """(800, 640, 3) RGB grid and the (4, 4) xyxy boxes of its people."""
    root = require_pose_samples()
    grid_bgr, boxes = paste_people(root, GRID_PEOPLE, cols=2)
    return cv2.cvtColor(grid_bgr, cv2.COLOR_BGR2RGB), boxes


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4) x (B, 4) xyxy -> (A, B) intersection over union."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)
