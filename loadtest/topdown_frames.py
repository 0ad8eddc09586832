"""End-to-end milliseconds per frame of a backend with 1, 4 and 10 people in the frame.

    python -m loadtest.topdown_frames --backend topdown-movenet --people 1,4,10

Frames are grids of real annotated people cut from ../shared/data/pose_samples (the largest ones
with at least 10 labelled keypoints), one person per 320x400 tile. A local server is spawned and
each frame is POSTed in a closed loop at concurrency 1; the report gives p50/p99 latency and the
number of persons returned.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from service.bench import bench_http
from service.spawn import spawned_server

REPO = Path(__file__).resolve().parents[1]
TILE_WH = (320, 400)


def paste_people(pose_samples: Path, picks: Sequence[tuple[int, bool]], cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Annotated people (annotation id, mirrored?) cut at their boxes, one per 320x400 tile.

    Returns the (rows * 400, cols * 320, 3) BGR grid and the (N, 4) xyxy boxes of its people.
    """
    coco = json.loads((pose_samples / "person_keypoints.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    annotations = {a["id"]: a for a in coco["annotations"]}
    tw, th = TILE_WH
    grid = np.full((-(-len(picks) // cols) * th, cols * tw, 3), 114, np.uint8)
    boxes = []
    for i, (ann_id, mirror) in enumerate(picks):
        ann = annotations[ann_id]
        image = cv2.imread(str(pose_samples / files[ann["image_id"]]))
        assert image is not None, files[ann["image_id"]]
        x, y, w, h = (round(v) for v in ann["bbox"])
        cut = image[max(y, 0) : y + h, max(x, 0) : x + w]
        cut = cut[:, ::-1] if mirror else cut
        scale = min(0.8 * tw / cut.shape[1], 0.9 * th / cut.shape[0])
        size = (round(cut.shape[1] * scale), round(cut.shape[0] * scale))
        cut = cv2.resize(cut, size, interpolation=cv2.INTER_AREA)
        ox, oy = (i % cols) * tw + (tw - cut.shape[1]) // 2, (i // cols) * th + (th - cut.shape[0]) // 2
        grid[oy : oy + cut.shape[0], ox : ox + cut.shape[1]] = cut
        boxes.append([ox, oy, ox + cut.shape[1], oy + cut.shape[0]])
    return grid, np.array(boxes, np.float32)


def person_grid(pose_samples: Path, people: int) -> np.ndarray:
    """BGR grid of the `people` largest annotated persons with >= 10 keypoints (mirrored past the last)."""
    coco = json.loads((pose_samples / "person_keypoints.json").read_text())
    anns = sorted(
        (a for a in coco["annotations"] if a["num_keypoints"] >= 10 and not a.get("iscrowd")),
        key=lambda a: -a["bbox"][2] * a["bbox"][3],
    )
    picks = [(anns[i % len(anns)]["id"], i >= len(anns)) for i in range(people)]
    return paste_people(pose_samples, picks, cols=min(people, 5))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="topdown-movenet")
    parser.add_argument("--people", default="1,4,10")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/topdown-frames.json"))
    args = parser.parse_args()
    shared = Path(os.environ.get("POSESERVE_SHARED_DIR", REPO.parent / "shared"))
    frames: dict[int, bytes] = {}
    for n in (int(v) for v in args.people.split(",")):
        grid = person_grid(shared / "data" / "pose_samples", n)
        ok, encoded = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames[n] = encoded.tobytes()
    report: list[dict[str, Any]] = []
    with spawned_server({"POSESERVE_PRELOAD": args.backend, "POSESERVE_LOG_LEVEL": "warning"}) as (url, _):
        for n, jpeg in frames.items():
            found = httpx.post(
                f"{url}/v1/pose?backend={args.backend}",
                content=jpeg,
                headers={"content-type": "image/jpeg"},
                timeout=60,
            ).json()["persons"]
            row = bench_http(url, jpeg, concurrency=[1], seconds=args.seconds, backend=args.backend)[0]
            report.append({"people": n, "persons_returned": len(found), **row})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"backend": args.backend, "rows": report}, indent=2))
    for row in report:
        print(
            f"{row['people']:>3} people: p50 {row['latency_p50_ms']:8.1f} ms  p99 {row['latency_p99_ms']:8.1f} ms"
            f"  persons returned {row['persons_returned']}"
        )


if __name__ == "__main__":
    main()
