"""API keys: parsing, scopes, per-key token buckets, and a key file reloaded atomically.

Keys come from `POSESERVE_API_KEYS` (a comma list; `KEY` has every scope, `KEY:pose+streams`
names them) and from `POSESERVE_API_KEY_FILE`, one key per line:

    # comment
    KEY [scopes=pose,streams] [rate=10/s | rate=unlimited] [burst=20] [name=cam-team]

The secret itself is never kept, logged or put in an error: a key is known by the SHA-256 of its
secret and shown as its `name` (or `key-` and the first 8 hex digits of that hash). No HTTP here;
`service.api.auth` turns refusals into status codes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

if TYPE_CHECKING:
    from service.config import Settings

__all__ = [
    "SCOPES",
    "ApiKey",
    "KeyConfigError",
    "Keyring",
    "RateLimit",
    "RedactKeys",
    "Scope",
    "TokenBucket",
    "key_digest",
    "parse_env_keys",
    "parse_key_file",
    "parse_rate",
    "redact_keys",
    "split_env_entry",
]

logger = logging.getLogger(__name__)

Scope = Literal["pose", "streams"]
SCOPES: frozenset[Scope] = frozenset(("pose", "streams"))

_PERIOD_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"^(?P<count>\d+(?:\.\d+)?)/(?P<period>[a-z]+)$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_OPTIONS = ("scopes", "rate", "burst", "name")


class KeyConfigError(ValueError):
    """A malformed key entry or key file; the message names the line, never the key."""


@dataclass(frozen=True)
class RateLimit:
    """`rate_per_s` requests a second on average, `burst` at once after a quiet spell."""

    rate_per_s: float
    burst: int

    def __str__(self) -> str:
        count, period = next(
            ((self.rate_per_s * s, p) for p, s in (("s", 1), ("min", 60), ("h", 3600)) if self.rate_per_s * s >= 1),
            (self.rate_per_s * 3600, "h"),
        )
        return f"{count:g}/{period} (burst {self.burst})"


def parse_rate(text: str, burst: int | None = None) -> RateLimit:
    """`10/s`, `600/min`, `3600/h` -> RateLimit; the burst defaults to the count (at least 1)."""
    m = _RATE.match(text.strip().lower())
    if m is None or m["period"] not in _PERIOD_S:
        raise KeyConfigError(f"rate {text!r} is not COUNT/PERIOD with PERIOD s, min or h (e.g. 10/s)")
    count = float(m["count"])
    if count <= 0:
        raise KeyConfigError(f"rate {text!r} must be above zero")
    if burst is not None and burst < 1:
        raise KeyConfigError(f"burst {burst} must be at least 1")
    return RateLimit(rate_per_s=count / _PERIOD_S[m["period"]], burst=burst or max(1, math.ceil(count)))


@dataclass
class TokenBucket:
    """Holds up to `limit.burst` tokens, refilled at `limit.rate_per_s`; a request spends one.

    Pure bookkeeping: the caller passes the time (seconds, any monotonic origin).
    """

    limit: RateLimit
    tokens: float = field(init=False)
    updated_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.limit.burst)

    def take(self, now_s: float) -> float:
        """Spend a token and return 0.0, or spend nothing and return the seconds until one is there."""
        if self.updated_s is not None:
            elapsed_s = max(0.0, now_s - self.updated_s)
            self.tokens = min(float(self.limit.burst), self.tokens + elapsed_s * self.limit.rate_per_s)
        self.updated_s = now_s if self.updated_s is None else max(self.updated_s, now_s)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.limit.rate_per_s


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: the hash of its secret (the secret is not kept), scopes, rate limit."""

    digest: bytes = field(repr=False)
    name: str
    scopes: frozenset[Scope]
    rate: RateLimit | None = None


def _key(secret: str, *, name: str | None, scopes: frozenset[Scope], rate: RateLimit | None) -> ApiKey:
    digest = key_digest(secret)
    return ApiKey(digest=digest, name=name or f"key-{digest.hex()[:8]}", scopes=scopes, rate=rate)


def _scopes(text: str, separator: str, where: str, *, echo: bool) -> frozenset[Scope]:
    """`echo`: name the unknown scopes in the error (not for an env entry, where they may be part of a key)."""
    names = {part.strip() for part in text.split(separator) if part.strip()}
    unknown = names - SCOPES
    if unknown or not names:
        detail = f"; unknown: {', '.join(sorted(unknown))}" if unknown and echo else ""
        raise KeyConfigError(f"{where}: scopes must name one or more of {', '.join(sorted(SCOPES))}{detail}")
    return frozenset(cast(set[Scope], names))


def split_env_entry(entry: str, where: str = "POSESERVE_API_KEYS entry") -> tuple[str, frozenset[Scope]]:
    """`KEY` -> (KEY, every scope); `KEY:pose+streams` -> (KEY, those scopes)."""
    secret, sep, scopes = entry.strip().rpartition(":")
    if not sep:
        secret, scopes = entry.strip(), ""
    if not secret:
        raise KeyConfigError(f"{where}: the key is empty")
    return secret, _scopes(scopes, "+", f"{where} (a key cannot contain ':')", echo=False) if sep else SCOPES


def parse_env_keys(entries: Iterable[str], default_rate: RateLimit | None = None) -> tuple[ApiKey, ...]:
    """Entries of `POSESERVE_API_KEYS` (already split at commas) -> keys with `default_rate`."""
    keys = []
    for i, entry in enumerate(entries, 1):
        secret, scopes = split_env_entry(entry, f"POSESERVE_API_KEYS entry {i}")
        keys.append(_key(secret, name=None, scopes=scopes, rate=default_rate))
    return _unique(keys, "POSESERVE_API_KEYS")


def parse_key_file(text: str, default_rate: RateLimit | None = None) -> tuple[ApiKey, ...]:
    """The key file's text -> keys. Raises `KeyConfigError` naming the line (never the key)."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        comment = next((i for i, f in enumerate(fields) if f.startswith("#")), len(fields))
        fields = fields[:comment]
        if not fields:
            continue
        where = f"line {number}"
        secret, options = fields[0], fields[1:]
        if secret.startswith(tuple(f"{option}=" for option in _OPTIONS)):
            raise KeyConfigError(f"{where}: the first field must be the key")
        values: dict[str, str] = {}
        for position, option in enumerate(options, 2):
            name, sep, value = option.partition("=")
            if not sep or name not in _OPTIONS or name in values:  # the field may be a key: not echoed
                raise KeyConfigError(f"{where}: field {position} is not one of {', '.join(_OPTIONS)} (or repeats one)")
            values[name] = value
        if "name" in values and not _NAME.match(values["name"]):
            raise KeyConfigError(f"{where}: name must be 1-64 of A-Z a-z 0-9 _ . -")
        if "burst" in values and values.get("rate", "unlimited") == "unlimited":
            raise KeyConfigError(f"{where}: burst= needs rate=COUNT/PERIOD")
        try:
            burst = int(values["burst"]) if "burst" in values else None
            rate = _file_rate(values.get("rate"), burst, default_rate)
        except ValueError as exc:
            raise KeyConfigError(f"{where}: {exc}") from None
        scopes = _scopes(values["scopes"], ",", where, echo=True) if "scopes" in values else SCOPES
        keys.append(_key(secret, name=values.get("name"), scopes=scopes, rate=rate))
    return _unique(keys, "the key file")


def _file_rate(text: str | None, burst: int | None, default_rate: RateLimit | None) -> RateLimit | None:
    if text is None:
        return default_rate
    return None if text == "unlimited" else parse_rate(text, burst)


def _unique(keys: Sequence[ApiKey], source: str) -> tuple[ApiKey, ...]:
    seen_digests: set[bytes] = set()
    seen_names: set[str] = set()
    for i, key in enumerate(keys, 1):
        if key.digest in seen_digests:
            raise KeyConfigError(f"{source}: key {i} repeats an earlier key")
        if key.name in seen_names:
            raise KeyConfigError(f"{source}: key {i} repeats the name {key.name!r}")
        seen_digests.add(key.digest)
        seen_names.add(key.name)
    return tuple(keys)


@dataclass(frozen=True)
class _Entry:
    key: ApiKey
    bucket: TokenBucket | None


class Keyring:
    """The accepted keys and their buckets; `reload()` swaps in the key file's keys atomically.

    Auth is on when environment keys or a key file are configured, even if the file lists no key
    (then every request is refused): emptying the file never opens the API. Lookups and bucket
    updates run on the event loop; `reload()` may run on any thread.
    """

    def __init__(
        self,
        env_keys: Sequence[ApiKey] = (),
        key_file: Path | None = None,
        *,
        default_rate: RateLimit | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = bool(env_keys) or key_file is not None
        self.key_file = key_file
        self._env_keys = tuple(env_keys)
        self._default_rate = default_rate
        self._clock = clock
        self._reload_lock = threading.Lock()
        self._entries: Mapping[bytes, _Entry] = {}
        self._entries = self._build(self._read_file())  # a bad file at start-up raises

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        default_rate = parse_rate(settings.auth.default_rate) if settings.auth.default_rate else None
        env_keys = parse_env_keys((k.get_secret_value() for k in settings.api_keys), default_rate)
        return cls(env_keys, settings.api_key_file, default_rate=default_rate)

    def names(self) -> list[str]:
        return sorted(entry.key.name for entry in self._entries.values())

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None (compares hashes: no timing hint about the secret)."""
        if not secret:
            return None
        entry = self._entries.get(key_digest(secret))
        return entry.key if entry else None

    def admit(self, key: ApiKey) -> float:
        """0.0 if `key` may make a request now (a token is spent), else the seconds until it may."""
        entry = self._entries.get(key.digest)
        if entry is None or entry.bucket is None:
            return 0.0
        return entry.bucket.take(self._clock())

    def reload(self) -> bool:
        """Read the key file again; on any error log it, keep the current keys and return False."""
        if self.key_file is None:
            return False
        with self._reload_lock:
            old = self._entries
            try:
                entries = self._build(self._read_file())
            except (OSError, ValueError) as exc:  # KeyConfigError, UnicodeDecodeError are ValueErrors
                logger.error("API key file %s not reloaded; the %d current keys stay: %s", self.key_file, len(old), exc)
                return False
            self._entries = entries  # one assignment: a request sees the old keys or the new ones
        old_names = {e.key.name for e in old.values()}
        new_names = {e.key.name for e in entries.values()}
        logger.info(
            "API keys reloaded from %s: %d keys (added: %s; removed: %s)",
            self.key_file,
            len(entries),
            ", ".join(sorted(new_names - old_names)) or "none",
            ", ".join(sorted(old_names - new_names)) or "none",
        )
        return True

    def _read_file(self) -> tuple[ApiKey, ...]:
        if self.key_file is None:
            return ()
        return parse_key_file(self.key_file.read_text(encoding="utf-8"), self._default_rate)

    def _build(self, file_keys: Sequence[ApiKey]) -> dict[bytes, _Entry]:
        """Entries for the environment keys and `file_keys`; a key whose limit is unchanged keeps its bucket."""
        keys = _unique((*self._env_keys, *file_keys), "POSESERVE_API_KEYS and the key file")
        entries = {}
        for key in keys:
            previous = self._entries.get(key.digest)
            if previous is not None and previous.bucket is not None and previous.key.rate == key.rate:
                bucket: TokenBucket | None = previous.bucket
            else:
                bucket = TokenBucket(key.rate) if key.rate else None
            entries[key.digest] = _Entry(key, bucket)
        return entries


_SECRETS = (
    (re.compile(r"([?&]token=)[^&\s\"']*"), r"\1[redacted]"),  # a WebSocket URL's ?token=KEY
    (re.compile(r"(?i)\b(authorization|x-api-key)(\s*:\s*)[^\r\n]*"), r"\1\2[redacted]"),  # header lines
)


def redact_keys(text: str) -> str:
    """`/ws?token=KEY&x=1` -> `/ws?token=[redacted]&x=1`; `authorization: Bearer KEY` -> `authorization: [redacted]`."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactKeys(logging.Filter):
    """Takes keys out of log records: uvicorn logs WebSocket paths with their query string, and at
    debug level the websockets library logs handshake headers. Install on `uvicorn.error` and
    `uvicorn.access` (a logger's filters see only the records logged to it by name)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it itself
            return True
        redacted = redact_keys(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
