"""Stream URL validation: schemes, SSRF guard, allow-lists (resolver injected, no DNS)."""

from __future__ import annotations

import pytest

from service.config import StreamSettings
from service.errors import InvalidStreamUrlError
from service.streams.urls import _resolve, redact, validate_stream_url

pytestmark = pytest.mark.unit

DEFAULT = StreamSettings()


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str) -> list[str]:
        return table.get(host, [])

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://127.0.0.1:8554/cam1",
        "rtsp://user:pw@10.0.0.5/stream",
        "rtsps://[::1]:322/x",
        "http://192.168.1.20/mjpeg",
        "https://camera.example/live",
    ],
)
def test_accepts_camera_urls(url: str) -> None:
    validate_stream_url(url, DEFAULT, resolver({"camera.example": ["93.184.216.34"]}))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "non-empty"),
        ("not a url", "without spaces"),
        ("ftp://10.0.0.1/x", "scheme 'ftp'"),
        ("gopher://127.0.0.1", "scheme"),
        ("file:///etc/passwd", "file:// urls are disabled"),
        ("rtsp:///nohost", "no host"),
        ("rtsp://127.0.0.1:99999/x", "malformed"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://metadata.google.internal/computeMetadata", "metadata"),
        ("rtsp://169.254.10.10/cam", "link-local"),
        ("rtsp://[fe80::1]/cam", "link-local"),
        ("rtsp://0.0.0.0/cam", "unicast"),
        ("rtsp://224.0.0.1/cam", "unicast"),
        ("rtsp://evil.example/cam", "metadata"),  # a name that resolves to the metadata address
        ("rtsp://nowhere.example/cam", "does not resolve"),
    ],
)
def test_refuses(url: str, reason: str) -> None:
    table = {"evil.example": ["169.254.169.254"]}
    with pytest.raises(InvalidStreamUrlError, match=reason):
        validate_stream_url(url, DEFAULT, resolver(table))


@pytest.mark.parametrize("host", ["a" * 64, "a..b"])
def test_host_names_dns_cannot_encode_are_refused(host: str) -> None:
    """A label over 63 characters or an empty label fails in the IDNA encoder (UnicodeError), before any lookup."""
    with pytest.raises(InvalidStreamUrlError, match="not a valid host name"):
        _resolve(host)


def test_optional_private_and_loopback_blocks() -> None:
    strict = StreamSettings(block_private=True, block_loopback=True)
    with pytest.raises(InvalidStreamUrlError, match="private"):
        validate_stream_url("rtsp://10.1.2.3/x", strict)
    with pytest.raises(InvalidStreamUrlError, match="loopback"):
        validate_stream_url("rtsp://127.0.0.1/x", strict)


def test_host_allow_list_by_name_and_cidr() -> None:
    listed = StreamSettings(allowed_hosts=("cam.local", "10.20.0.0/16"))
    resolve = resolver({"cam.local": ["10.99.0.1"], "other.local": ["10.99.0.2"]})
    validate_stream_url("rtsp://cam.local/a", listed, resolve)
    validate_stream_url("rtsp://10.20.3.4/a", listed, resolve)
    with pytest.raises(InvalidStreamUrlError, match="allow-list"):
        validate_stream_url("rtsp://other.local/a", listed, resolve)


def test_file_urls_only_when_enabled() -> None:
    parts = validate_stream_url("file:///videos/cam01.mp4", StreamSettings(allow_file=True))
    assert parts.path == "/videos/cam01.mp4"


def test_redact_hides_password() -> None:
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    assert redact("rtsp://10.0.0.5/s") == "rtsp://10.0.0.5/s"
