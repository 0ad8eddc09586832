"""What the OpenAPI document declares agrees with what the service enforces."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.openapi import error_responses, without_default_validation_answers
from service.config import StreamSettings
from service.errors import InvalidStreamUrlError
from service.schemas import STREAM_URL_PATTERN, ErrorResponse
from service.streams.urls import validate_stream_url

pytestmark = pytest.mark.unit

PERMISSIVE = StreamSettings(allow_file=True)
SCHEMES = ["rtsp", "RTSP", "rtsps", "http", "HttPs", "file", "FILE", "ftp", "", "rtsp+tcp"]
SEPARATORS = ["://", ":/", ":", "//", ":///", "", "://@", "://[::1]"]


def public_address(host: str) -> list[str]:
    return ["93.184.216.34"]


@settings(max_examples=400, derandomize=True)
@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda scheme, sep, rest: scheme + sep + rest,
            st.sampled_from(SCHEMES),
            st.sampled_from(SEPARATORS),
            st.text(alphabet=st.sampled_from("ab1.:/?#@[] \t\x1c\u00a0%-_"), max_size=20),
        ),
    )
)
def test_every_url_the_server_accepts_matches_the_documented_pattern(url: str) -> None:
    """The pattern is necessary: a URL it refuses is refused by the server too (as 400), so a client
    validating against the schema never rejects a URL the server would take."""
    try:
        validate_stream_url(url, PERMISSIVE, public_address)
    except InvalidStreamUrlError:
        return
    assert re.match(STREAM_URL_PATTERN, url), url


@pytest.mark.parametrize(
    "url", ["rtsp://10.0.0.5:554/stream1", "RTSPS://user:pw@cam.example/x", "https://[2001:db8::1]/m", "file:/v.mp4"]
)
def test_camera_urls_match_the_pattern(url: str) -> None:
    assert re.match(STREAM_URL_PATTERN, url)
    validate_stream_url(url, PERMISSIVE, public_address)


def test_error_responses_group_codes_by_status() -> None:
    responses = error_responses("duplicate_stream", "too_many_streams", "unauthorized", "validation_error")
    assert sorted(responses) == [401, 409, 422]
    assert all(r["model"] is ErrorResponse for r in responses.values())
    assert responses[409]["description"] == "error code: duplicate_stream, too_many_streams"
    assert "WWW-Authenticate" in responses[401]["headers"] and "headers" not in responses[409]


def test_default_422_answers_are_removed_with_their_schemas() -> None:
    default = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}
    ours = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    document = {
        "paths": {
            "/a": {"get": {"responses": {"200": {}, "422": default}}},
            "/b": {"post": {"responses": {"422": ours}}},
        },
        "components": {"schemas": {"HTTPValidationError": {}, "ValidationError": {}, "ErrorResponse": {}}},
    }
    out = without_default_validation_answers(document)
    assert out["paths"]["/a"]["get"]["responses"] == {"200": {}}
    assert out["paths"]["/b"]["post"]["responses"] == {"422": ours}
    assert list(out["components"]["schemas"]) == ["ErrorResponse"]
