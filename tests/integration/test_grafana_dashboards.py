"""The Grafana dashboards: generated JSON in step with its builder, variables, targets, and only metrics
that `service/metrics.py` defines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.grafana import build
from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

GRAFANA = REPO / "deploy" / "grafana"
# exported only where NVML finds a GPU (DESIGN §5); listed here until service/metrics.py defines them
GPU_METRICS = frozenset({"poseserve_gpu_utilization_ratio", "poseserve_gpu_memory_used_bytes"})
_METRIC = re.compile(r"\bposeserve_[a-z0-9_]+")


def dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in build.build_all().items()}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row (rows nested in collapsed rows included)."""
    out = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels") or [])
        else:
            out.append(panel)
    return out


def defined_metric_names() -> set[str]:
    """Every sample name the service's metrics can export (`_bucket`, `_sum`, `_count`, `_total`...)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        kind_suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ())
        names.update(family.name + suffix for suffix in kind_suffixes)
    return names


def test_committed_json_is_a_fresh_build() -> None:
    built = build.build_all()
    assert set(built) == {"overview.json", "cameras.json", "engine.json"}
    committed = {p.name for p in (GRAFANA / "dashboards").glob("*.json")}
    assert committed == set(built), "deploy/grafana/dashboards holds files the builder does not write"
    for name, text in built.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, f"{name} drifted: run `make dashboards`"
    assert build.main(["--check"]) == 0


def test_check_reports_drift(tmp_path: Path) -> None:
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "engine.json").write_text("{}\n")
    assert build.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", ["overview.json", "cameras.json", "engine.json"])
def test_variables_and_targets(name: str) -> None:
    board = dashboards()[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "stream", "backend"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == build.DATASOURCE_UID
    assert variables["stream"]["query"]["query"] == "label_values(poseserve_stream_frames_total, stream)"
    assert variables["backend"]["query"]["query"] == "label_values(poseserve_batch_size_count, backend)"
    for var in ("stream", "backend"):
        assert variables[var]["multi"] and variables[var]["includeAll"] and variables[var]["allValue"] == ".*"

    found = panels(board)
    assert found
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids), "panel ids repeat"
    for panel in found:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel.get("targets") or []
        assert targets, f"{panel['title']}: no target"
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}"
        assert len({t["refId"] for t in targets}) == len(targets), f"{panel['title']}: refIds repeat"


def test_only_metrics_the_service_defines() -> None:
    defined = defined_metric_names()
    known = defined | GPU_METRICS
    used: dict[str, set[str]] = {}
    for name, board in dashboards().items():
        exprs = [t["expr"] for p in panels(board) for t in p["targets"]]
        exprs += [v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)]
        for expr in exprs:
            for metric in _METRIC.findall(expr):
                used.setdefault(metric, set()).add(name)
    unknown = {m: sorted(boards) for m, boards in used.items() if m not in known}
    assert not unknown, f"metrics not defined in service/metrics.py: {unknown}"
    # the dashboards cover the DESIGN §5 families the service exports
    families = {f.name for f in Metrics().registry.collect()}
    covered = {f for f in families if any(u == f or u.startswith(f + "_") for u in used)}
    assert covered == families, f"no panel for {sorted(families - covered)}"
    assert {p["title"] for p in panels(dashboards()["engine.json"])} >= build.GPU_PANELS


def test_provisioning() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == build.DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "poseserve.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards/poseserve"
