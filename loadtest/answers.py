"""Every backend's answers on every pose_samples photo, as JSON: compare two versions of the code.

    python -m loadtest.answers --out before.json --model-dir /tmp/store movenet-multipose topdown-movenet
    (then the same on the other version, and `cmp before.json after.json`)

Runs the app in-process (lifespan, real workers) and posts each photo of
../shared/data/pose_samples with `min_score=0`; an answer is kept without its `request_id` and
`timing_ms`, so identical code paths give identical files. `--allow-untrained` lets seed backends
export random weights into --model-dir (use a scratch store, and reuse it for the second run so
both versions serve the same weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx

from service.api import create_app
from service.config import Settings

REPO = Path(__file__).resolve().parents[1]


async def answers(model_dir: Path, backends: list[str], photos: list[Path]) -> dict[str, Any]:
    settings = Settings(model_dir=model_dir, preload=(), allow_untrained=True, request_timeout_s=120)
    app = create_app(settings)
    result: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=300) as client:
            for backend in backends:
                for photo in photos:
                    content_type = "image/png" if photo.suffix.lower() == ".png" else "image/jpeg"
                    r = await client.post(
                        f"/v1/pose?backend={backend}&min_score=0",
                        content=photo.read_bytes(),
                        headers={"content-type": content_type},
                    )
                    body = r.json()
                    body.pop("request_id", None)
                    body.pop("timing_ms", None)
                    result[f"{backend}/{photo.name}"] = [r.status_code, body]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="answers of backends on the pose_samples photos")
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    shared = Path(os.environ.get("POSESERVE_SHARED_DIR", REPO.parent / "shared"))
    root = shared / "data/pose_samples/images"
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        raise SystemExit(f"no photos under {root}")
    result = asyncio.run(answers(args.model_dir, args.backends, photos))
    args.out.write_text(json.dumps(result, indent=0, sort_keys=True))
    persons = sum(len(body.get("persons", [])) for _, body in result.values())
    print(f"{len(result)} answers, {persons} persons -> {args.out}")


if __name__ == "__main__":
    main()
