"""The chart's monitoring: the PrometheusRule's alerts checked and unit-tested by the real promtool,
and the Grafana dashboard's ConfigMap, whose queries may name only metrics the operator exports."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from compozy_operator.monitoring import LiveState
from compozy_operator.resources.models import WorkflowExecutionStatus
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.helm import Helm

from .conftest import CHART, sets, template

ALERT_TESTS = Path(__file__).with_name("prometheus") / "alerts_test.yaml"
DASHBOARD = Path(CHART) / "files" / "dashboards" / "compozy-operator.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count")}


def rendered(helm: Helm, *values: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(template(helm, "compozy-operator", "compozy-system", *values)) if d]


def exported_names() -> set[str]:
    """Every series name the operator process exposes (labelled metrics with no child yet included),
    plus the live gauges (collected from one running run)."""
    importlib.import_module("compozy_operator.operator_main")  # registers every metric of the operator process
    running = WorkflowExecutionStatus.model_validate({"phase": "Running", "workflow": "w",
                                                      "tasks": {"a": {"phase": "Pending", "attempt": 1}}})
    families = [*REGISTRY.collect(), *LiveState(lambda: [("ns", running)], lambda: []).collect()]
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs + [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]


def test_alerts_pass_promtool_check_and_its_unit_tests(helm: Helm, devenv: DevEnvironment, tmp_path: Path) -> None:
    rule = next(d for d in rendered(helm, *sets("prometheusRule.enabled=true", "prometheusRule.labels.release=kps"))
                if d["kind"] == "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    promtool = str(devenv.bindir / "promtool")
    check = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 6 rules found" in check.stdout, check.stdout + check.stderr
    tests = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], cwd=tmp_path, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    exported = exported_names() | {"up"}
    named = {m for r in rule["spec"]["groups"][0]["rules"] for m in re.findall(r"\b(compozy_\w+|up)\b", r["expr"])}
    assert named <= exported, f"alerts on metrics the operator does not export: {sorted(named - exported)}"


def test_no_rule_or_dashboard_unless_asked(helm: Helm) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered(helm)}
    assert ("PrometheusRule", "compozy-operator") not in kinds
    assert ("ConfigMap", "compozy-operator-dashboard") not in kinds


def test_dashboard_configmap_is_for_the_grafana_sidecar(helm: Helm) -> None:
    cm = next(d for d in rendered(helm, *sets("grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring"))
              if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "compozy-operator-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["compozy-operator.json"]) == json.loads(DASHBOARD.read_text())


def test_dashboard_queries_name_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "compozy-operator" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exported = exported_names() | {"up"}
    named = {m for q in queries(dashboard) for m in re.findall(r"\b(compozy_\w+|up)\b", q)}
    assert named and named <= exported, f"the dashboard asks for metrics nobody exports: {sorted(named - exported)}"
    for q in queries(dashboard):
        assert q.count("(") == q.count(")") and q.count("{") == q.count("}"), q
