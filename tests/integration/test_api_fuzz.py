"""Mutated photos through the app in-process (one client, real worker and model): 200 or 4xx, never 500."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.config import BackendSettings, Settings
from tests.support import Mutant, client_for, image_mutants, metric_samples, sample_images, sample_jpeg

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]

ANSWERS = {200, 400, 413, 415}  # decoded; invalid_image; too_large (pixels); unsupported_media_type


async def post_mutant(client: httpx.AsyncClient, index: int, mutant: Mutant) -> httpx.Response:
    """Every fourth mutant as a multipart `image` field, the others as a raw body of its media type."""
    if index % 4 == 3:
        return await client.post("/v1/pose", files={"image": ("m.img", mutant.body, mutant.media_type)})
    return await client.post("/v1/pose", content=mutant.body, headers={"content-type": mutant.media_type})


def test_mutated_images_answer_200_or_4xx_and_server_stays_ready(model_dir: Path) -> None:
    mutants = image_mutants(300, 3, sample_images())
    settings = Settings(model_dir=model_dir, batching=BackendSettings(max_batch=8, max_wait_ms=2, intra_op_threads=2))

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response, str]:
        async with client_for(settings) as client:
            answers = [await post_mutant(client, i, m) for i, m in enumerate(mutants)]
            good = await client.post("/v1/pose", content=sample_jpeg(), headers={"content-type": "image/jpeg"})
            ready = await client.get("/readyz")
            metrics = await client.get("/metrics")
            return answers, good, ready, metrics.text

    answers, good, ready, metrics = asyncio.run(scenario())
    by_status = Counter(r.status_code for r in answers)
    assert set(by_status) <= ANSWERS, f"answers by status: {dict(by_status)}"
    assert by_status[200] >= 30 and by_status[400] >= 100, f"answers by status: {dict(by_status)}"
    refusals = [r.json()["error"] for r in answers if r.status_code != 200]
    assert all(e["code"] in {"invalid_image", "too_large", "unsupported_media_type"} and e["message"] for e in refusals)
    assert good.status_code == 200 and len(good.json()["persons"]) >= 2, good.text
    assert ready.status_code == 200, ready.text
    requests = metric_samples(metrics, "poseserve_requests_total")
    served = {labels["code"]: v for labels, v in requests if labels["route"] == "/v1/pose"}
    assert sum(served.values()) == len(mutants) + 1 and "500" not in served, served
