"""API keys as pure logic: parsing, scopes, the token bucket (fake clock), the key file reload."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from service.auth import (
    SCOPES,
    KeyConfigError,
    Keyring,
    RateLimit,
    RedactKeys,
    TokenBucket,
    key_digest,
    parse_env_keys,
    parse_key_file,
    parse_rate,
    redact_keys,
)
from tests.support import FakeClock

pytestmark = pytest.mark.unit


def test_plain_env_keys_get_every_scope_and_scoped_ones_only_theirs() -> None:
    plain, pose_only, both = parse_env_keys(["k1", "k2:pose", "k3:pose+streams"])
    assert plain.scopes == SCOPES == {"pose", "streams"}
    assert pose_only.scopes == {"pose"}
    assert both.scopes == {"pose", "streams"}
    assert plain.digest == key_digest("k1") and pose_only.digest == key_digest("k2")
    assert plain.rate is None


@pytest.mark.parametrize("entry", ["s3cretkey:admin", "s3cretkey:", ":pose", "s3cretkey:pose+admin"])
def test_bad_env_entry_is_refused_without_echoing_the_key(entry: str) -> None:
    with pytest.raises(KeyConfigError) as info:
        parse_env_keys(["firstkey", entry])
    message = str(info.value)
    assert "POSESERVE_API_KEYS entry 2" in message
    assert "firstkey" not in message and "s3cretkey" not in message


def test_env_keys_take_the_default_rate_and_repeats_are_refused() -> None:
    (key,) = parse_env_keys(["k1"], parse_rate("5/s"))
    assert key.rate == RateLimit(rate_per_s=5.0, burst=5)
    with pytest.raises(KeyConfigError, match="repeats an earlier key"):
        parse_env_keys(["k1", "k1:pose"])


def test_key_names_are_given_or_a_hash_prefix_never_the_secret() -> None:
    (key,) = parse_env_keys(["topsecretvalue"])
    assert key.name == "key-" + key_digest("topsecretvalue").hex()[:8]
    assert "topsecretvalue" not in repr(key) and "topsecretvalue" not in key.name


@pytest.mark.parametrize(
    ("text", "rate_per_s", "burst"),
    [("10/s", 10.0, 10), ("600/min", 10.0, 600), ("3600/h", 1.0, 3600), ("0.5/s", 0.5, 1)],
)
def test_parse_rate(text: str, rate_per_s: float, burst: int) -> None:
    assert parse_rate(text) == RateLimit(rate_per_s=rate_per_s, burst=burst)
    assert parse_rate(str(parse_rate(text)).split()[0]).rate_per_s == pytest.approx(rate_per_s)  # str() reads back


@pytest.mark.parametrize("text", ["10", "10/d", "0/s", "-1/s", "ten/s", "10 per s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(KeyConfigError):
        parse_rate(text)


KEY_FILE = """\
# poseserve API keys
alpha-secret scopes=pose rate=2/s name=cam-team
beta-secret  scopes=pose,streams rate=60/min burst=5   # trailing comment
gamma-secret/base64+padding==
delta-secret scopes=streams rate=unlimited name=ops

"""


def test_key_file_format() -> None:
    alpha, beta, gamma, delta = parse_key_file(KEY_FILE, default_rate=parse_rate("100/s"))
    assert (alpha.name, alpha.scopes, alpha.rate) == ("cam-team", {"pose"}, RateLimit(2.0, 2))
    assert beta.scopes == {"pose", "streams"} and beta.rate == RateLimit(1.0, 5)
    assert beta.name == "key-" + key_digest("beta-secret").hex()[:8]
    assert gamma.scopes == SCOPES and gamma.rate == RateLimit(100.0, 100)  # the default rate
    assert delta.scopes == {"streams"} and delta.rate is None
    assert [k.digest for k in (alpha, beta, gamma, delta)] == [
        key_digest(s) for s in ("alpha-secret", "beta-secret", "gamma-secret/base64+padding==", "delta-secret")
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("s3cretkey scopes=admin", "line 1: scopes must name one or more of pose, streams; unknown: admin"),
        ("ok1\ns3cretkey colour=red", "line 2: field 2 is not one of scopes, rate, burst, name"),
        ("okkey s3cretkey", "line 1: field 2 is not one of"),  # two keys on a line: neither echoed
        ("okkey s3cretkey=", "line 1: field 2 is not one of"),
        ("s3cretkey rate=fast", "line 1: rate 'fast'"),
        ("s3cretkey burst=3", "line 1: burst= needs rate="),
        ("s3cretkey rate=1/s burst=0", "line 1: burst 0 must be at least 1"),
        ("s3cretkey name=has/slash", "line 1: name must be"),
        ("s3cretkey scopes=pose scopes=streams", "line 1: field 3 is not one of"),
        ("scopes=pose", "line 1: the first field must be the key"),
        ("s3cretkey name=a\nother name=a", "repeats the name 'a'"),
        ("s3cretkey\ns3cretkey scopes=pose", "repeats an earlier key"),
    ],
)
def test_malformed_key_file_names_the_line_not_the_key(text: str, reason: str) -> None:
    with pytest.raises(KeyConfigError) as info:
        parse_key_file(text)
    assert reason in str(info.value)
    assert "s3cretkey" not in str(info.value) and "okkey" not in str(info.value)


def test_token_bucket_with_a_fake_clock() -> None:
    bucket = TokenBucket(RateLimit(rate_per_s=2.0, burst=3))
    t = 50.0
    assert [bucket.take(t) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert bucket.take(t) == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert bucket.take(t + 0.25) == pytest.approx(0.25)  # refused requests spend nothing
    assert bucket.take(t + 0.5) == 0.0
    assert bucket.take(t + 0.5) == pytest.approx(0.5)
    assert [bucket.take(t + 100) for _ in range(4)][-1] == pytest.approx(0.5)  # refills only up to the burst


def test_token_bucket_never_refills_backwards() -> None:
    bucket = TokenBucket(RateLimit(rate_per_s=1.0, burst=1))
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)  # an earlier time adds no tokens
    assert bucket.take(11.0) == 0.0


def test_keyring_authenticates_and_limits_each_key_alone() -> None:
    clock = FakeClock(1000.0)
    env = parse_env_keys(["a:pose", "b"], parse_rate("1/s"))
    ring = Keyring(env, clock=clock)
    a, b = ring.authenticate("a"), ring.authenticate("b")
    assert a is not None and b is not None and a.scopes == {"pose"}
    assert ring.authenticate("c") is None and ring.authenticate("") is None
    assert ring.admit(a) == 0.0
    assert ring.admit(a) == pytest.approx(1.0)
    assert ring.admit(b) == 0.0  # b has its own bucket
    clock.now += 1.0
    assert ring.admit(a) == 0.0


def test_keyring_without_keys_is_off_and_with_an_empty_file_refuses_all(tmp_path: Path) -> None:
    assert not Keyring().enabled
    empty = tmp_path / "keys"
    empty.write_text("# nobody yet\n")
    ring = Keyring(key_file=empty)
    assert ring.enabled and ring.names() == [] and ring.authenticate("anything") is None


def test_bad_key_file_at_start_up_raises(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("k1 scopes=nope\n")
    with pytest.raises(KeyConfigError, match="line 1"):
        Keyring(key_file=path)
    with pytest.raises(FileNotFoundError):
        Keyring(key_file=tmp_path / "missing")


def test_reload_swaps_in_new_keys_and_keeps_env_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys"
    path.write_text("old-secret name=old\n")
    ring = Keyring(parse_env_keys(["env-secret:pose"]), key_file=path)
    assert ring.authenticate("old-secret") is not None
    path.write_text("new-secret name=new scopes=streams\n")
    with caplog.at_level(logging.INFO, logger="service.auth"):
        assert ring.reload() is True
    assert ring.authenticate("old-secret") is None
    new = ring.authenticate("new-secret")
    assert new is not None and new.name == "new" and new.scopes == {"streams"}
    assert ring.authenticate("env-secret") is not None
    assert "added: new; removed: old" in caplog.text
    assert "new-secret" not in caplog.text and "old-secret" not in caplog.text


@pytest.mark.parametrize(
    "breakage",
    [
        lambda p: p.write_text("new-secret scopes=everything\n"),
        lambda p: p.write_bytes(b"\xff\xfe not utf-8\n"),
        lambda p: p.unlink(),
        lambda p: p.write_text("env-secret\n"),  # repeats an environment key
    ],
    ids=["bad scope", "not utf-8", "deleted", "duplicate of env key"],
)
def test_malformed_reload_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, breakage: Callable[[Path], object]
) -> None:
    path = tmp_path / "keys"
    path.write_text("old-secret name=old\n")
    ring = Keyring(parse_env_keys(["env-secret"]), key_file=path)
    breakage(path)
    with caplog.at_level(logging.ERROR, logger="service.auth"):
        assert ring.reload() is False
    assert ring.authenticate("old-secret") is not None and ring.authenticate("env-secret") is not None
    assert ring.names() == sorted(["old", "key-" + key_digest("env-secret").hex()[:8]])
    assert "not reloaded; the 2 current keys stay" in caplog.text
    assert "new-secret" not in caplog.text and "env-secret" not in caplog.text


def test_reload_keeps_a_bucket_whose_limit_is_unchanged(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    path = tmp_path / "keys"
    path.write_text("steady rate=1/min\nchanging rate=1/min\n")
    ring = Keyring(key_file=path, clock=clock)
    for secret in ("steady", "changing"):
        key = ring.authenticate(secret)
        assert key is not None and ring.admit(key) == 0.0 and ring.admit(key) > 0
    path.write_text("steady rate=1/min\nchanging rate=2/min\n")
    assert ring.reload()
    steady, changing = ring.authenticate("steady"), ring.authenticate("changing")
    assert steady is not None and changing is not None
    assert ring.admit(steady) > 0  # a reload is no way around a rate limit
    assert ring.admit(changing) == 0.0  # a new limit starts with a full bucket


def test_keys_are_redacted_from_log_records() -> None:
    assert redact_keys("/v1/streams/x/ws?token=abc&fps=2") == "/v1/streams/x/ws?token=[redacted]&fps=2"
    assert redact_keys("/ws?a=1&token=abc") == "/ws?a=1&token=[redacted]"
    assert redact_keys("< Authorization: Bearer abc") == "< Authorization: [redacted]"
    assert redact_keys("< x-api-key: abc") == "< x-api-key: [redacted]"
    assert redact_keys("/v1/pose?backend=x") == "/v1/pose?backend=x"
    cases = [
        (
            '%s - "WebSocket %s" %d',
            ("1.2.3.4:5", "/ws?token=abc", 403),
            '1.2.3.4:5 - "WebSocket /ws?token=[redacted]" 403',
        ),
        ("< %s: %s", ("authorization", "Bearer abc"), "< authorization: [redacted]"),
        ("< %s: %s", ("host", "abc"), "< host: abc"),
    ]
    for msg, args, expected in cases:
        record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, msg, args, None)
        assert RedactKeys().filter(record)
        assert record.getMessage() == expected
