"""Accuracy of a SERVED backend on a COCO keypoint file: `poseserve eval`, and the teacher runs of
`poseserve data pseudolabel`.

Every image goes through the service itself, in-process: the app built by `create_app` answers
`POST /v1/pose?min_score=0&backend=NAME` over an httpx ASGI transport (decode, admission, batching,
ONNX Runtime sessions, pre/post-processing: the API path, no socket). With ``boxes="gt"`` a
top-down backend skips its detector: the ground-truth person boxes are cut with the backend's own
``make_crops`` (padding, flip test) and run through the backend's own pose stage (its batcher and
sessions), then ``assemble`` maps them back, each box scoring 1 x mean keypoint score.

Scores come from pycocotools (``models.evaluation``): AP, AP50, AP75, APm, APl, AR over the 17
joints, and again over the 12 body joints only (``BODY_JOINTS``, the joints LSPET labels; OKS then
uses only those joints' sigmas). OKS already ignores a ground-truth joint with v = 0, so on a
dataset with unlabelled face points the plain AP is its labelled-joint AP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.evaluation import BODY_JOINTS, coco_keypoint_results, evaluate_keypoints
from service.auth import split_env_entry
from service.config import Settings

__all__ = ["BoxSource", "EvalReport", "ServedImage", "evaluate_backend", "labelled_joints", "run_served"]

BoxSource = Literal["detector", "gt"]
_WAIT_S = 300.0
_LOG_EVERY_S = 15.0

logger = logging.getLogger(__name__)


class _Progress:
    """Logs images done, rate and time left every ``_LOG_EVERY_S`` (long runs such as pseudo-labelling)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = self.logged = time.monotonic()

    def done(self, count: int) -> None:
        now = time.monotonic()
        if now - self.logged < _LOG_EVERY_S and count < self.total:
            return
        self.logged = now
        rate = count / max(now - self.started, 1e-9)
        left = (self.total - count) / rate if rate > 0 else float("inf")
        logger.info("served %d/%d images (%.1f/s, %.0f s left)", count, self.total, rate, left)


@dataclass(frozen=True)
class ServedImage:
    """One image to run: its COCO id, its file, and (``boxes="gt"``) its person boxes x1, y1, x2, y2."""

    image_id: int
    path: Path
    boxes_xyxy: np.ndarray | None = None


@dataclass
class EvalReport:
    backend: str
    boxes: BoxSource
    images: int
    persons: int
    stats: dict[str, float]
    body_stats: dict[str, float]
    labelled_joints: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "boxes": self.boxes,
            "images": self.images,
            "persons": self.persons,
            "stats": self.stats,
            "body_stats": self.body_stats,
            "labelled_joints": self.labelled_joints,
            "seconds": round(self.seconds, 2),
        }


def _pose_key(settings: Settings) -> str | None:
    entries = (split_env_entry(entry.get_secret_value()) for entry in settings.api_keys)
    return next((key for key, scopes in entries if "pose" in scopes), None)


async def _served(settings: Settings, backend: str, images: Sequence[ServedImage]) -> dict[int, list[dict[str, Any]]]:
    import httpx

    from service.api import create_app

    app = create_app(settings)
    key = _pose_key(settings)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    out: dict[int, list[dict[str, Any]]] = {}
    async with app.router.lifespan_context(app):
        if any(item.boxes_xyxy is not None for item in images):
            return await _with_boxes(app.state.services, backend, images, settings)
        transport = httpx.ASGITransport(app=app)
        progress = _Progress(len(images))
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=_WAIT_S) as client:
            for count, item in enumerate(images, 1):
                data = item.path.read_bytes()
                content_type = "image/png" if item.path.suffix.lower() == ".png" else "image/jpeg"
                r = await client.post(
                    f"/v1/pose?min_score=0&backend={backend}",
                    content=data,
                    headers={"content-type": content_type, **headers},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"{item.path}: HTTP {r.status_code}: {r.text}")
                out[item.image_id] = r.json()["persons"]
                progress.done(count)
    return out


async def _with_boxes(
    services: Any, backend: str, images: Sequence[ServedImage], settings: Settings
) -> dict[int, list[dict[str, Any]]]:
    from models.pipelines.topdown import make_crops
    from service.backends.topdown import Detections, TopDownBackend
    from service.imaging import decode_image

    loaded = await services.backends.acquire(backend)
    if not isinstance(loaded, TopDownBackend):
        raise ValueError(f"--boxes gt needs a top-down backend; {backend} finds its own persons")
    out: dict[int, list[dict[str, Any]]] = {}
    progress = _Progress(len(images))
    for count, item in enumerate(images, 1):
        progress.done(count - 1)
        boxes = np.asarray(item.boxes_xyxy, np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            out[item.image_id] = []
            continue
        rgb = decode_image(item.path.read_bytes(), max_pixels=settings.max_image_pixels)
        rows, crops = make_crops(rgb, boxes, loaded.pose, padding=loaded.padding, flip_test=loaded.flip_test)
        started = time.monotonic()
        # the served pose stage (a gated backend's fine stage included), fed the given boxes
        result = await loaded.pose_stage(
            Detections(rows, crops, np.ones(len(boxes), np.float32)),
            None,
            started=started,
            deadline=started + _WAIT_S,
            wait_s=_WAIT_S,
            key=item.image_id,
        )
        persons = result.value
        out[item.image_id] = [
            {"score": float(s), "bbox": [float(v) for v in b], "keypoints": k.tolist()}
            for k, b, s in zip(persons.keypoints, persons.boxes_xyxy, persons.scores, strict=True)
        ]
    progress.done(len(images))
    return out


def run_served(settings: Settings, backend: str, images: Sequence[ServedImage]) -> dict[int, list[dict[str, Any]]]:
    """Persons (the API's JSON: score, bbox, keypoints) of every image, as backend ``backend`` serves them.

    Images with ``boxes_xyxy`` (all or none) run the top-down pose stage on those boxes.
    """
    return asyncio.run(_served(settings, backend, images))


def _gt_boxes(coco: dict[str, Any]) -> dict[int, np.ndarray]:
    boxes: dict[int, list[list[float]]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 1) == 0:
            continue
        x, y, w, h = ann["bbox"]
        boxes.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    return {k: np.asarray(v, np.float64).reshape(-1, 4) for k, v in boxes.items()}


def labelled_joints(coco: dict[str, Any]) -> list[int]:
    """COCO indices labelled (v > 0) in at least one annotation."""
    seen = np.zeros(17, bool)
    for ann in coco["annotations"]:
        seen |= np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)[:, 2] > 0
    return [int(i) for i in np.flatnonzero(seen)]


def evaluate_backend(
    backend: str,
    ann_file: Path,
    image_root: Path,
    *,
    settings: Settings,
    boxes: BoxSource = "detector",
    split: str | None = None,
) -> EvalReport:
    """COCO keypoint AP of the served backend ``backend`` on ``ann_file`` (images under ``image_root``).

    ``split`` (``A-B`` ids or ``first:N``, as ``poseserve train``'s) restricts the evaluation to
    those images (the ground truth too), e.g. LSPET's validation ids ``9001-10000``.
    """
    from models.train.coco import split_ids

    coco = json.loads(Path(ann_file).read_text(encoding="utf-8"))
    keep = split_ids([img["id"] for img in coco["images"]], split)
    if keep is not None:
        coco = {
            **coco,
            "images": [i for i in coco["images"] if i["id"] in keep],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
        }
    gt_boxes = _gt_boxes(coco) if boxes == "gt" else {}
    items = [
        ServedImage(img["id"], Path(image_root) / img["file_name"], gt_boxes.get(img["id"]) if boxes == "gt" else None)
        for img in coco["images"]
    ]
    started = time.monotonic()
    served = run_served(settings, backend, items)
    results: list[dict[str, Any]] = []
    for image_id, persons in served.items():
        if persons:
            kps = np.array([p["keypoints"] for p in persons], dtype=np.float64)
            results += coco_keypoint_results(image_id, kps, np.array([p["score"] for p in persons]))
    return EvalReport(
        backend=backend,
        boxes=boxes,
        images=len(items),
        persons=len(results),
        stats=evaluate_keypoints(coco, results),
        body_stats=evaluate_keypoints(coco, results, joints=BODY_JOINTS),
        labelled_joints=labelled_joints(coco),
        seconds=time.monotonic() - started,
    )
