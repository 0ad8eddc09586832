"""What was measured on this machine, per model: throughput of each runtime x precision at its best
batch shape. Written by ``poseserve models optimize`` and ``poseserve tune``; read when a backend
loads to pick the default variant and batch shape (explicit settings win).

One JSON file per machine under ``<model_dir>/measured/``, named by `machine_id` (CPU model and
flags, usable cores, GPU presence, runtime versions): figures from another machine, or from an
older copy of a model (its sha256 is kept beside them), are never used. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MeasuredStore", "cpu_has_int8_dot", "machine_description", "machine_id"]

logger = logging.getLogger(__name__)

_SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_fp16")
_INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def _cpu_info() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = [f for f in value.split() if f in _SPEED_FLAGS]
                break
    return model, sorted(flags)


def cpu_has_int8_dot() -> bool:
    """Whether this x86 CPU multiplies int8 with one instruction per 4-product sum (VNNI or AMX).
    Without it, int8 kernels (ONNX Runtime's u8s8) sum pairs of products in 16 bits, which saturate."""
    return bool(_INT8_DOT_FLAGS & set(_cpu_info()[1]))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_description() -> dict[str, Any]:
    """What makes measurements comparable: CPU, usable cores, GPU driver, runtime versions."""
    model, flags = _cpu_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cores": cores,
        "nvidia": Path("/proc/driver/nvidia/version").exists(),
        "onnxruntime": _version("onnxruntime-gpu") or _version("onnxruntime"),
        "openvino": _version("openvino"),
    }


def machine_id() -> str:
    """12 hex digits naming this machine's `machine_description`."""
    return hashlib.sha256(json.dumps(machine_description(), sort_keys=True).encode()).hexdigest()[:12]


class MeasuredStore:
    """``<model_dir>/measured/<machine_id>.json``: ``{model: {base_sha256, variants: {KEY: figures}}}``
    where KEY is ``RUNTIME-PRECISION`` and figures hold ``img_per_s`` and the batch shape measured."""

    def __init__(self, model_dir: Path, machine: str | None = None) -> None:
        self.path = Path(model_dir) / "measured" / f"{machine or machine_id()}.json"

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable measurements %s: %s", self.path, exc)
            return {}
        return doc.get("models", {}) if isinstance(doc, dict) else {}

    def variants(self, model: str, base_sha256: str) -> dict[str, dict[str, Any]]:
        """``{RUNTIME-PRECISION: figures}`` measured here for this copy of `model` ({} when none)."""
        entry = self._read().get(model, {})
        return dict(entry.get("variants", {})) if entry.get("base_sha256") == base_sha256 else {}

    def record(self, model: str, base_sha256: str, key: str, figures: dict[str, Any]) -> None:
        """Store `figures` for variant `key` (replacing earlier ones; a changed model starts afresh)."""
        models = self._read()
        entry = models.get(model, {})
        if entry.get("base_sha256") != base_sha256:
            entry = {"base_sha256": base_sha256, "variants": {}}
        entry["variants"][key] = figures
        models[model] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": machine_description(), "models": models}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide it from a server running as another user
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
