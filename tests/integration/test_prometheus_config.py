"""deploy/prometheus under the real promtool: configs, rule files, rule unit tests; every alert
tested firing and not firing; every metric the rules read defined by `service.metrics.Metrics`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric

from service.metrics import Metrics, gpu_families
from tests.support import REPO, skip_unless_ci

pytestmark = pytest.mark.integration

try:
    import yaml
except ImportError:  # PyYAML comes with the dev extra (schemathesis)
    skip_unless_ci("PyYAML is not installed (dev extra)")

PROM = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
# Debian's promtool is built without Kubernetes service discovery (no client-go in Debian).
NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        skip_unless_ci("promtool is not installed (Debian package prometheus; `make system-deps`)")
    return path


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule with key `kind` ("alert" or "record") across the rule files."""
    return [rule for path in RULE_FILES for group in load(path)["groups"] for rule in group["rules"] if kind in rule]


def test_the_local_config_is_valid(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", PROM / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_the_kubernetes_config_is_valid(promtool: str, tmp_path: Path) -> None:
    config_path = PROM / "prometheus-kubernetes.yml"
    result = run_promtool(promtool, "check", "config", config_path)
    if result.returncode == 0:
        return
    # A promtool without Kubernetes discovery: check the discovery block's shape here, and everything
    # else (relabelling, rule files, intervals) with promtool, the discovery swapped for file_sd.
    assert NO_KUBERNETES_SD in result.stdout + result.stderr, result.stdout + result.stderr
    config = load(config_path)
    (job,) = config["scrape_configs"]
    (discovery,) = job.pop("kubernetes_sd_configs")
    assert discovery["role"] == "pod"
    assert set(discovery) <= {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"}
    relabelled = {rule.get("target_label") for rule in job["relabel_configs"]}
    assert {"pod", "namespace", "__address__"} <= relabelled
    kept = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert any("__meta_kubernetes_pod_label_app_kubernetes_io_name" in r["source_labels"] for r in kept)
    job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
    swapped = tmp_path / "prometheus-kubernetes-file-sd.yml"
    swapped.write_text(yaml.safe_dump(config))
    result = run_promtool(promtool, "check", "config", swapped)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_files_are_valid(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_the_rule_unit_tests_pass(promtool: str) -> None:
    assert TEST_FILES
    result = run_promtool(promtool, "test", "rules", *TEST_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules("alert")}
    assert len(alerts) >= 10
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"
    # and what the tests name exists
    assert (firing | quiet) - alerts == set()


def test_every_alert_is_complete() -> None:
    for rule in rules("alert"):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert "for" in rule, rule["alert"]


def exported_names(families: list[Metric]) -> set[str]:
    """The sample names a scrape can carry for these families."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def test_every_metric_the_rules_read_is_defined() -> None:
    defined = exported_names([*Metrics().registry.collect(), *gpu_families()]) | {"up"}
    assert "poseserve_stream_result_age_seconds_bucket" in defined and "poseserve_requests_total" in defined
    recorded = {rule["record"] for rule in rules("record")}
    for rule in rules("record") + rules("alert"):
        expr = rule["expr"]
        raw = set(re.findall(r"(?<![\w:])poseserve_\w+", expr))
        assert raw <= defined, f"{rule.get('record') or rule.get('alert')}: undefined {raw - defined}"
        assert set(re.findall(r"\b\w+:\w+:\w+\b", expr)) <= recorded, expr
    # every recorded name follows level:metric:operations on a poseserve metric
    assert all(re.fullmatch(r"[a-z_]+:poseserve_[a-z0-9_]+:[a-z0-9_]+", name) for name in recorded), recorded
    assert "up" in " ".join(rule["expr"] for rule in rules("alert"))
