"""COCO person-keypoint files through pycocotools: loading (quietly), splits, dataset facts."""

from __future__ import annotations

from typing import Any

from models.evaluation import load_coco

__all__ = ["data_facts", "load_coco", "split_ids"]


def split_ids(image_ids: list[int], spec: str | None) -> set[int] | None:
    """Image ids kept by ``spec``: None (all), ``"A-B"`` (ids A..B inclusive, e.g. LSPET's
    ``1-9000`` train / ``9001-10000`` val) or ``"first:N"``."""
    if not spec:
        return None
    if spec.startswith("first:"):
        return set(sorted(image_ids)[: int(spec.split(":", 1)[1])])
    low, _, high = spec.partition("-")
    return {i for i in image_ids if int(low) <= i <= int(high)}


def data_facts(dataset: dict[str, Any]) -> dict[str, str]:
    """What a model card records of its training data: description, source, licence, teacher."""
    info = dataset.get("info") or {}
    licences = "; ".join(str(lic.get("name", "")) for lic in dataset.get("licenses") or [] if lic.get("name"))
    facts = {
        "description": str(info.get("description", "")),
        "source": str(info.get("source", "")),
        "licence": licences or str(info.get("licence", "unknown")),
        "citation": str(info.get("citation", "")),
        "teacher": str(info.get("teacher", "")),
    }
    return {k: v for k, v in facts.items() if v}
