"""`poseserve bench net`: the seed networks' forward times in PyTorch, on the CPU here; the CUDA
rows (eager and CUDA graph) where PyTorch sees a GPU, skipped cleanly where it does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from models.netbench import forward_times
from service.cli import app

pytestmark = pytest.mark.integration

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA device")


def test_cpu_rows_per_precision_and_batch() -> None:
    rows = forward_times(
        ["erpose-n"], precisions=("fp32", "bf16"), batches=(1, 2), iters=2, warmup=1, input_hw=(64, 64)
    )
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    for r in rows:
        assert r["device"] == "cpu" and r["input_hw"] == "64x64" and r["params_m"] > 1.0
        assert r["ms_p50"] > 0 and r["img_per_s"] == pytest.approx(r["batch"] * 1000 / r["ms_p50"], rel=0.01)


def test_graphs_need_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        forward_times(["erpose-n"], graphs=True, iters=1)


def test_cli_writes_the_table_and_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    out = tmp_path / "net.json"
    args = ["bench", "net", "amfacpose-r18", "--iters", "2", "--batch", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["kind"] == "net" and [r["model"] for r in doc["rows"]] == ["amfacpose-r18"]
    assert doc["rows"][0]["input_hw"] == "256x256" and doc["rows"][0]["ms_p50"] > 0
    refusals = [(["nosuch-net"], "unknown seed model"), (["erpose-n", "--precision", "int4"], "unknown precision")]
    if not torch.cuda.is_available():
        refusals.append((["erpose-n", "--graphs"], "--graphs needs a CUDA device"))
    for bad, message in refusals:
        result = CliRunner().invoke(app, ["bench", "net", *bad, "--out", str(tmp_path / "x.json")])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.json").exists()


@cuda
def test_cuda_graph_replay_times_the_forward() -> None:
    rows = forward_times(["erpose-n"], device="cuda", precisions=("fp16",), batches=(1, 4), graphs=True, iters=5)
    assert [r["batch"] for r in rows] == [1, 4] and all(r["graphs"] and r["ms_p50"] > 0 for r in rows)
    assert rows[0]["device"] == torch.cuda.get_device_name(0)
