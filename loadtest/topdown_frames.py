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
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from service.bench import bench_http
from service.spawn import spawned_server

REPO = Path(__file__).resolve().parents[1]
TILE_WH = (320, 400)


def person_grid(pose_samples: Path, people: int) -> np.ndarray:
    """(rows * 400, cols * 320, 3) BGR grid of `people` annotated persons."""
    coco = json.loads((pose_samples / "person_keypoints.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    anns = sorted(
        (a for a in coco["annotations"] if a["num_keypoints"] >= 10 and not a.get("iscrowd")),
        key=lambda a: -a["bbox"][2] * a["bbox"][3],
    )
    cols = min(people, 5)
    rows = -(-people // cols)
    tw, th = TILE_WH
    grid = np.full((rows * th, cols * tw, 3), 114, np.uint8)
    for i in range(people):
        ann = anns[i % len(anns)]
        image = cv2.imread(str(pose_samples / files[ann["image_id"]]))
        assert image is not None, files[ann["image_id"]]
        x, y, w, h = (round(v) for v in ann["bbox"])
        cut = image[max(y, 0) : y + h, max(x, 0) : x + w]
        cut = cut[:, ::-1] if i >= len(anns) else cut
        scale = min(0.8 * tw / cut.shape[1], 0.9 * th / cut.shape[0])
        cut = cv2.resize(cut, (round(cut.shape[1] * scale), round(cut.shape[0] * scale)))
        ox, oy = (i % cols) * tw + (tw - cut.shape[1]) // 2, (i // cols) * th + (th - cut.shape[0]) // 2
        grid[oy : oy + cut.shape[0], ox : ox + cut.shape[1]] = cut
    return grid


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
