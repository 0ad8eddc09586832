"""Stream URL checks: scheme allow-list and an SSRF guard on the host.

A camera URL is refused unless its scheme is allowed, and its host (every address it resolves
to) is not link-local, a cloud metadata endpoint, multicast or unspecified — and, when configured,
not private or loopback, or not on the explicit host allow-list.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import SplitResult, urlsplit

from service.config import StreamSettings
from service.errors import InvalidStreamUrlError

__all__ = ["redact", "validate_stream_url"]

_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data", "metadata.azure.com"})
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)

Resolver = Callable[[str], Sequence[str]]


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise InvalidStreamUrlError(f"host {host!r} does not resolve: {exc.strerror}") from None
    except UnicodeError:  # the IDNA encoder refuses empty labels and labels over 63 characters
        raise InvalidStreamUrlError(f"host {host[:80]!r} is not a valid host name") from None
    return sorted({str(info[4][0]) for info in infos})


def _host_allowed(host: str, addresses: Sequence[str], allowed: Sequence[str]) -> bool:
    for entry in allowed:
        if entry.lower() == host.lower():
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if all(ipaddress.ip_address(a) in network for a in addresses):
            return True
    return False


def _check_address(address: str, settings: StreamSettings) -> None:
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip in _METADATA_ADDRESSES:
        raise InvalidStreamUrlError(f"address {ip} is a cloud metadata endpoint")
    if ip.is_link_local:
        raise InvalidStreamUrlError(f"address {ip} is link-local")
    if ip.is_loopback:
        if settings.block_loopback:
            raise InvalidStreamUrlError(f"address {ip} is loopback and loopback cameras are not allowed")
        return
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        raise InvalidStreamUrlError(f"address {ip} is not a unicast host address")
    if ip.is_private and settings.block_private:
        raise InvalidStreamUrlError(f"address {ip} is private and private cameras are not allowed")


def validate_stream_url(url: str, settings: StreamSettings, resolve: Resolver = _resolve) -> SplitResult:
    """Parse and check `url`; raises `InvalidStreamUrlError` with the reason."""
    if not url or len(url) > 2048 or any(ch.isspace() for ch in url):
        raise InvalidStreamUrlError("url must be a non-empty string of at most 2048 characters, without spaces")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        raise InvalidStreamUrlError(f"malformed url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        if not settings.allow_file:
            raise InvalidStreamUrlError("file:// urls are disabled (streams.allow_file)")
        if not parts.path:
            raise InvalidStreamUrlError("file:// url has no path")
        return parts
    if scheme not in settings.allowed_schemes:
        allowed = ", ".join(settings.allowed_schemes)
        raise InvalidStreamUrlError(f"scheme {scheme or '(none)'!r} is not allowed (allowed: {allowed})")
    host = parts.hostname
    if not host:
        raise InvalidStreamUrlError("url has no host")
    if host.lower() in _METADATA_HOSTS:
        raise InvalidStreamUrlError(f"host {host!r} is a cloud metadata endpoint")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = list(resolve(host))
    if not addresses:
        raise InvalidStreamUrlError(f"host {host!r} does not resolve")
    if settings.allowed_hosts and not _host_allowed(host, addresses, settings.allowed_hosts):
        raise InvalidStreamUrlError(f"host {host!r} is not on the allow-list (streams.allowed_hosts)")
    for address in addresses:
        _check_address(address, settings)
    return parts


def redact(url: str) -> str:
    """The URL without its password, for logs and API responses."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
