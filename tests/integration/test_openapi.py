"""schemathesis against the in-process app's /openapi.json: every operation, every check, no failure.

Deterministic: a fixed seed, derandomized generation, at most 25 fuzzed examples per operation,
plus the examples and coverage phases (missing / wrong bodies, unsupported methods, ...).
The WebSocket route is not in the OpenAPI document (OpenAPI cannot describe it); the README
documents its protocol and tests/integration/test_streams_api.py exercises it.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from models.weights import DEFAULT_MODEL_DIR
from service.api import create_app
from service.config import BackendSettings, Settings, StreamSettings

pytestmark = pytest.mark.integration

SEED = 20240611
MAX_EXAMPLES = 25

# positive_data_acceptance holds "valid by the schema" as "must succeed". One answer to
# schema-valid requests is right nonetheless, and only it is added to what that check accepts
# (every other check runs as is): 400 invalid_stream_url, as a URL of the right form is refused
# unless its host resolves and passes the allow-list / SSRF guard, which no schema can express.
_SHAPE_IS_NOT_ENOUGH = [("/v1/streams", "POST", ["400"])]

CASES: Counter[str] = Counter()  # operation label -> examples sent
STATUSES: Counter[tuple[str, int]] = Counter()  # (operation label, status) -> answers
CHECKS: Counter[str] = Counter()  # check name -> times run
FAILED: list[str] = []


def config() -> schemathesis.Config:
    accepted = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' default
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "mode": "all"},
            "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
            "checks": {"enabled": True},
            "operations": [
                {
                    "include-path": path,
                    "include-method": method,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*accepted, *also]}},
                }
                for path, method, also in _SHAPE_IS_NOT_ENOUGH
            ],
        }
    )


SETTINGS = Settings(
    model_dir=DEFAULT_MODEL_DIR,
    batching=BackendSettings(max_batch=8, max_wait_ms=2, intra_op_threads=2),
    # Streams may only reach 127.0.0.1, where no camera listens: nothing generated leaves the machine.
    streams=StreamSettings(allowed_hosts=("127.0.0.1",), open_timeout_ms=200, read_timeout_ms=200),
)
# The document comes from an app built at import (cheap: nothing is loaded before its lifespan);
# that app also selects schemathesis' ASGI transport, but each test sends to a fresh app (`app`).
DOCUMENTED = create_app(SETTINGS)
schema = schemathesis.openapi.from_dict(json.loads(json.dumps(DOCUMENTED.openapi())), config=config())
schema.app = DOCUMENTED


@st.composite
def bmp_files(draw: st.DrawFn) -> bytes:
    """Small real BMPs of random pixels: schemathesis sends real JPEG, PNG and WebP files for
    schema-valid image bodies, but has no BMP sample of its own."""
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    pixels = np.frombuffer(draw(st.binary(min_size=width * height * 3, max_size=width * height * 3)), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.reshape(height, width, 3)).save(buf, "BMP")
    return buf.getvalue()


schemathesis.openapi.media_type("image/bmp", bmp_files())


@schema.hook
def after_validate(context: Any, case: Any, response: Any, results: list[Any]) -> None:
    CASES[case.operation.label] += 1
    STATUSES[case.operation.label, response.status_code] += 1
    for result in results:
        CHECKS[result.name] += 1
        if result.failure is not None:
            FAILED.append(f"{case.operation.label}: {result.name}: {result.failure.title}")


@pytest.fixture
def app(model_dir: Path) -> FastAPI:
    """A fresh app per operation: schemathesis starts its lifespan (models, workers) on the first
    request and stops it when the test ends. `model_dir` makes sure the default model is present."""
    return create_app(SETTINGS.model_copy(update={"model_dir": model_dir}))


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # one app per operation, on purpose
def test_operation_conforms(case: schemathesis.Case, app: FastAPI) -> None:
    case.call_and_validate(app=app)


def test_summary_covers_every_operation_and_check() -> None:
    """Runs after the schemathesis test (file order): it did run, on every operation, with every check."""
    operations = {
        "POST /v1/pose",
        "GET /v1/backends",
        "POST /v1/streams",
        "GET /v1/streams",
        "GET /v1/streams/{stream_id}",
        "DELETE /v1/streams/{stream_id}",
        "GET /v1/streams/{stream_id}/frame.jpg",
        "GET /viewer",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }
    print(f"schemathesis: {len(CASES)} operations, {sum(CASES.values())} examples, {dict(CASES)}")
    print(f"checks run: {sum(CHECKS.values())}, {dict(CHECKS)}; failures: {len(FAILED)}")
    print(f"answers: {dict(sorted(STATUSES.items()))}")
    assert set(CASES) == operations
    assert all(n >= 5 for n in CASES.values()), CASES
    assert {"not_a_server_error", "status_code_conformance", "content_type_conformance"} <= set(CHECKS)
    assert {"response_schema_conformance", "positive_data_acceptance", "negative_data_rejection"} <= set(CHECKS)
    assert FAILED == []
    # The success paths were reached too, not only refusals (a real image; a loopback camera).
    assert STATUSES["POST /v1/pose", 200] > 0 and STATUSES["POST /v1/streams", 201] > 0, STATUSES
