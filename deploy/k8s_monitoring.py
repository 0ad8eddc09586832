"""Kustomize generator: the Prometheus Operator resources of poseserve, from deploy/prometheus.

Run by kustomize as the exec plugin `MonitoringGenerator` (deploy/kustomize-plugins/), with the
kustomization root (deploy/) as working directory; prints a YAML stream:

- one `PrometheusRule` per rule file in prometheus/rules/ (`poseserve-<file stem>`), whose `spec` is
  the rule file itself, indented: the groups promtool checks and tests are the groups the operator
  loads, byte for byte;
- one `ServiceMonitor` (`poseserve`) whose scrape interval, timeout, path, job name and pod selector
  come from the `poseserve` job of prometheus/prometheus-kubernetes.yml.

Standard library only (kustomize runs it with whatever `python3` is on PATH, or $POSESERVE_PYTHON).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
RULES_DIR = DEPLOY / "prometheus" / "rules"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus-kubernetes.yml"
JOB = "poseserve"
NAME_LABEL = "__meta_kubernetes_pod_label_app_kubernetes_io_name"
PORT_NAME = "http"  # the container and Service port name prometheus-kubernetes.yml keeps


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def _metadata(name: str, component: str) -> list[str]:
    return [
        "metadata:",
        f"  name: {name}",
        "  labels:",
        "    app.kubernetes.io/name: poseserve",
        f"    app.kubernetes.io/component: {component}",
    ]


def prometheus_rule(path: Path) -> str:
    """A PrometheusRule whose spec is the rule file `path` (a mapping with the single key `groups`)."""
    text = path.read_text()
    top = [ln for ln in text.splitlines() if ln and not ln[0].isspace() and not ln.startswith("#")]
    if [ln.split(":", 1)[0] for ln in top] != ["groups"]:
        raise SystemExit(f"{path}: a rule file has one top-level key, `groups`; found {top}")
    body = ["  " + ln if ln.strip() else "" for ln in text.splitlines()]
    head = ["apiVersion: monitoring.coreos.com/v1", "kind: PrometheusRule"]
    return "\n".join([*head, *_metadata(f"poseserve-{path.stem}", "monitoring"), "spec:", *body]) + "\n"


def scrape_job(text: str, job: str = JOB) -> dict[str, str]:
    """Scalar settings of `job` in a Prometheus config (line-based: the file's own block layout)."""
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if re.fullmatch(rf"\s*- job_name:\s*[\"']?{re.escape(job)}[\"']?\s*", ln)),
        None,
    )
    if start is None:
        raise SystemExit(f"{SCRAPE_CONFIG}: no scrape job {job!r}")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    block: list[str] = []
    for ln in lines[start + 1 :]:
        if ln.strip() and not ln.lstrip().startswith("#") and len(ln) - len(ln.lstrip()) < indent:
            break
        block.append(ln)
    found: dict[str, str] = {"job_name": job}
    for key in ("metrics_path", "scrape_interval", "scrape_timeout"):
        for ln in block:
            match = re.fullmatch(rf" {{{indent}}}{key}:\s*(\S+)\s*", ln)
            if match:
                found[key] = match.group(1).strip("\"'")
                break
        else:
            raise SystemExit(f"{SCRAPE_CONFIG}: job {job!r} sets no {key}")
    # the pod selector: the `keep` rule on the app.kubernetes.io/name label
    for i, ln in enumerate(block):
        if NAME_LABEL in ln:
            match = next((re.search(r"regex:\s*(\S+)", b) for b in block[i : i + 3] if "regex:" in b), None)
            if match:
                found["app_name"] = match.group(1).strip("\"'")
                break
    else:
        raise SystemExit(f"{SCRAPE_CONFIG}: job {job!r} keeps no pods by {NAME_LABEL}")
    return found


def service_monitor(path: Path) -> str:
    job = scrape_job(path.read_text())
    lines = [
        "apiVersion: monitoring.coreos.com/v1",
        "kind: ServiceMonitor",
        *_metadata(job["job_name"], "monitoring"),
        "spec:",
        "  selector:",
        "    matchLabels:",
        f"      app.kubernetes.io/name: {_q(job['app_name'])}",
        "  endpoints:",
        f"    - port: {PORT_NAME}",
        f"      path: {_q(job['metrics_path'])}",
        f"      interval: {_q(job['scrape_interval'])}",
        f"      scrapeTimeout: {_q(job['scrape_timeout'])}",
        "      relabelings:",
        "        # the job name the rules and dashboards expect (the operator would use the Service name)",
        "        - targetLabel: job",
        f"          replacement: {_q(job['job_name'])}",
        "        - sourceLabels: [__meta_kubernetes_pod_node_name]",
        "          targetLabel: node",
    ]
    return "\n".join(lines) + "\n"


def generate() -> str:
    rule_files = sorted(RULES_DIR.glob("*.yml"))
    if not rule_files:
        raise SystemExit(f"no rule files in {RULES_DIR}")
    docs = [prometheus_rule(p) for p in rule_files] + [service_monitor(SCRAPE_CONFIG)]
    return "---\n" + "---\n".join(docs)


def main() -> None:
    sys.stdout.write(generate())


if __name__ == "__main__":
    main()
