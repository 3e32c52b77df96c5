"""The alert rules and the Grafana dashboard: the PromQL parses, the alerts fire when they should (and
not otherwise), and every metric they use is one the operator or its router really exports.

Parsing and rule evaluation use promtool, built from github.com/prometheus/prometheus by
``hack/build-binaries.sh promtool`` (cached; the first build takes a few minutes). The exported
metrics are read from the prometheus_client registries: ``mlops_operator.metrics`` (the operator)
and a router's own registry (``backends/serving_local/router.py``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mlops-operator"
ALERTS = CHART / "files" / "prometheus" / "alerts.yaml"
DASHBOARD = CHART / "files" / "grafana" / "mlops-operator.json"
# Labels Prometheus adds to every scraped series (job, instance) and those a ServiceMonitor adds.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "inf", "nan", "atan2"}
# Grafana's variables, replaced by something PromQL accepts before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${namespace}": ".*",
                     "$namespace": ".*", "$monitor": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool (built on first use)."""
    result = subprocess.run([str(REPO / "hack" / "build-binaries.sh"), "promtool"], capture_output=True, text=True)
    if result.returncode != 0:
        if shutil.which("go") is None:
            pytest.skip("promtool is not built and Go is not installed to build it")
        raise AssertionError(f"building promtool failed:\n{result.stderr[-3000:]}")
    return str(Path(result.stdout.strip().splitlines()[-1]) / "promtool")


# ---------------------------------------------------------------- what the operator exports


def _exported(registry_collectors: list[Any]) -> dict[str, set[str]]:
    """Sample name -> label names, for prometheus_client metric objects."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "summary": ("", "_count", "_sum", "_created"), "gauge": ("",)}
    names: dict[str, set[str]] = {}
    for metric in registry_collectors:
        for family in metric.describe():
            labels = set(metric._labelnames)  # prometheus_client keeps them here; describe() does not say
            for suffix in suffixes[family.type]:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


@pytest.fixture(scope="module")
def exported_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Every sample name the operator process and a router expose, with its label names."""
    from prometheus_client import Counter, Gauge, Histogram, Summary

    from mlops_operator import metrics
    from mlops_operator.backends.serving_local.router import Router

    operator = [m for m in vars(metrics).values() if isinstance(m, (Counter, Gauge, Histogram, Summary))]
    router = Router(tmp_path_factory.mktemp("router"), None)
    router_metrics = [m for m in vars(router).values() if isinstance(m, (Counter, Gauge, Histogram, Summary))]
    exported = {**_exported(operator), **_exported(router_metrics)}
    # Cross-check against what the registries really serve (sample names only).
    from prometheus_client import REGISTRY, generate_latest

    served = generate_latest(REGISTRY).decode() + generate_latest(router.registry).decode()
    for line in served.splitlines():
        if line.startswith("# TYPE mlops_"):
            family = line.split()[2]
            assert {family, f"{family}_total", f"{family}_bucket"} & set(exported), f"not collected: {line}"
    exported["up"] = set()
    return exported


# ---------------------------------------------------------------- PromQL helpers


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of each vector selector in a (valid) PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings cannot hide names
    found = []
    grouping = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()", grouping.sub(" ", expr)):
        name, matchers = match.group(1), match.group(2) or ""
        if name in PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        found.append((name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))))
    return found


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def test_selector_extraction() -> None:
    """The extraction the name checks rely on finds metric names, not functions, keywords or labels."""
    expr = ('sum by (kind) (rate(mlops_a_total{kind="x", result=~"a|b"}[5m] offset 1h)) / on (kind) '
            'histogram_quantile(0.9, sum by (le) (rate(mlops_b_bucket[5m]))) or absent(up{job="j"} == 1)')
    assert selectors(expr) == [("mlops_a_total", {"kind", "result"}), ("mlops_b_bucket", set()), ("up", {"job"})]
    assert grouping_labels(expr) == {"kind", "le"}


# ---------------------------------------------------------------- the rules


def test_alert_rules_parse(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_is_documented() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    # The list: training failed, validation failed repeatedly, rollout aborted, drift detected,
    # reconcile errors, operator down.
    assert {"MlopsTrainingRunFailed", "MlopsModelValidationFailedRepeatedly", "MlopsRolloutAborted",
            "MlopsDriftDetected", "MlopsReconcileErrors", "MlopsOperatorDown"} <= names
    operations = (REPO / "docs" / "operations.md").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["alert"] in operations, f"{rule['alert']} has no entry in docs/operations.md"


def test_every_alert_links_to_its_runbook_section() -> None:
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    # GitHub's anchors: the heading in lower case.
    anchors = {line[3:].strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbooks.md#{rule['alert'].lower()}", url
        assert rule["alert"].lower() in anchors, f"docs/runbooks.md has no section {rule['alert']}"


def test_alerts_use_only_exported_metrics(exported_metrics: dict[str, set[str]]) -> None:
    for rule in alert_rules():
        expr = rule["expr"]
        used = selectors(expr)
        assert used, rule["alert"]
        for name, labels in used:
            assert name in exported_metrics, f"{rule['alert']}: {name} is not exported"
            assert labels <= exported_metrics[name] | TARGET_LABELS, f"{rule['alert']}: {name}{labels}"
        available = set().union(*(exported_metrics[name] for name, _ in used)) | TARGET_LABELS
        assert grouping_labels(expr) <= available, rule["alert"]


def test_dashboard_uses_only_exported_metrics(exported_metrics: dict[str, set[str]]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for where, expr in dashboard_queries():
        used = selectors(grafana_to_promql(expr))
        assert used, where
        for name, labels in used:
            assert name in exported_metrics, f"{where}: {name} is not exported"
            assert labels <= exported_metrics[name] | TARGET_LABELS, f"{where}: {name}{labels}"
        available = set().union(*(exported_metrics[name] for name, _ in used)) | TARGET_LABELS
        assert grouping_labels(expr) <= available, where
    # Template variables query metrics too (label_values of one metric or of an alternation).
    for variable in dashboard["templating"]["list"]:
        definition = variable.get("definition", "")
        names = re.findall(r"mlops_\w+", definition)
        for alternation in re.findall(r"mlops_\(([^)]*)\)", definition):
            names += [f"mlops_{suffix}" for suffix in alternation.split("|")]
        for name in names:
            assert name in exported_metrics, f"variable {variable['name']}: {name} is not exported"


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Each panel query, as a recording rule, passes promtool's parser."""
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
             for i, (_, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_layout() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("training runs", "model versions", "traffic weights", "latency", "drift score"):
        assert topic in titles, topic


# ---------------------------------------------------------------- the alerts fire when they should


def _without_annotations(rules_path: Path, out: Path, keep: str) -> None:
    """A copy of the rule file without annotations except for the alert ``keep`` (promtool compares
    annotations exactly, and the firing logic is what most cases test)."""
    data = yaml.safe_load(rules_path.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule["alert"] != keep:
                rule.pop("annotations", None)
    out.write_text(yaml.safe_dump(data, sort_keys=False))


def _drift_annotations(namespace: str, name: str) -> dict[str, str]:
    rule = next(r for r in alert_rules() if r["alert"] == "MlopsDriftDetected")
    return {key: value.replace("{{ $labels.namespace }}", namespace).replace("{{ $labels.name }}", name)
            for key, value in rule["annotations"].items()}


def alert(alertname: str, severity: str = "warning", **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"alertname": alertname, "severity": severity, **labels}}


RULE_TESTS: list[dict[str, Any]] = [
    {   # The operator stops being scraped: critical after 5 minutes; a running one never alerts.
        "interval": "1m",
        "input_series": [{"series": 'up{job="mlops-operator", instance="a"}', "values": "1x4 0x20"}],
        "alert_rule_test": [
            {"eval_time": "8m", "alertname": "MlopsOperatorDown", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "MlopsOperatorDown",
             "exp_alerts": [alert("MlopsOperatorDown", "critical")]},
        ],
    },
    {   # No target at all is "down" too.
        "interval": "1m",
        "input_series": [{"series": 'up{job="something-else"}', "values": "1x20"}],
        "alert_rule_test": [{"eval_time": "10m", "alertname": "MlopsOperatorDown",
                             "exp_alerts": [alert("MlopsOperatorDown", "critical")]}],
    },
    {   # Errors that keep coming for 15 minutes alert per kind; a kind without new errors does not.
        "interval": "1m",
        "input_series": [
            {"series": 'mlops_reconcile_errors_total{kind="ModelTraining"}', "values": "0+1x40"},
            {"series": 'mlops_reconcile_errors_total{kind="DriftMonitor"}', "values": "3x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "MlopsReconcileErrors", "exp_alerts": []},
            {"eval_time": "30m", "alertname": "MlopsReconcileErrors",
             "exp_alerts": [alert("MlopsReconcileErrors", kind="ModelTraining")]},
        ],
    },
    {   # Users' invalid specs are theirs to fix (conditions and events tell them): no operator alert fires,
        # however many there are (issue 13).
        "interval": "1m",
        "input_series": [
            {"series": 'mlops_invalid_spec_total{kind="ModelTraining"}', "values": "0+5x60"},
            {"series": 'mlops_reconcile_total{kind="ModelTraining", result="invalid"}', "values": "0+5x60"},
            {"series": 'mlops_reconcile_errors_total{kind="ModelTraining"}', "values": "0x60"},
            {"series": 'up{job="mlops-operator", instance="a"}', "values": "1x60"},
        ],
        "alert_rule_test": [{"eval_time": "45m", "alertname": name, "exp_alerts": []}
                            for name in ("MlopsReconcileErrors", "MlopsOperatorDown", "MlopsTrainingRunFailed")],
    },
    {   # The first failure creates the series at 1 (prometheus_client): still an alert, then it resolves.
        "interval": "1m",
        "input_series": [
            {"series": 'mlops_training_runs_total{result="failed"}', "values": "_x10 1x60"},
            {"series": 'mlops_training_runs_total{result="succeeded"}', "values": "0+1x70"},
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "MlopsTrainingRunFailed", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "MlopsTrainingRunFailed", "exp_alerts": [alert("MlopsTrainingRunFailed")]},
            {"eval_time": "55m", "alertname": "MlopsTrainingRunFailed", "exp_alerts": []},
        ],
    },
    {   # A later failure on an existing series alerts through increase().
        "interval": "1m",
        "input_series": [{"series": 'mlops_training_runs_total{result="failed"}', "values": "0x40 1x30"}],
        "alert_rule_test": [
            {"eval_time": "35m", "alertname": "MlopsTrainingRunFailed", "exp_alerts": []},
            {"eval_time": "45m", "alertname": "MlopsTrainingRunFailed", "exp_alerts": [alert("MlopsTrainingRunFailed")]},
        ],
    },
    {   # Two rejected models are bad luck; three within 6 hours alert.
        "interval": "10m",
        "input_series": [{"series": 'mlops_training_runs_total{result="rejected"}', "values": "1 1 2 2 2 2 3 3"}],
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": "MlopsModelValidationFailedRepeatedly", "exp_alerts": []},
            {"eval_time": "60m", "alertname": "MlopsModelValidationFailedRepeatedly",
             "exp_alerts": [alert("MlopsModelValidationFailedRepeatedly")]},
        ],
    },
    {   # A rollback alerts; promotions do not.
        "interval": "1m",
        "input_series": [
            {"series": 'mlops_rollouts_total{result="promoted"}', "values": "0+1x30"},
            {"series": 'mlops_rollouts_total{result="rolledback"}', "values": "_x20 1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "MlopsRolloutAborted", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "MlopsRolloutAborted", "exp_alerts": [alert("MlopsRolloutAborted")]},
        ],
    },
    {   # Drift that lasts 15 minutes alerts per DriftMonitor, with its name in the text.
        "interval": "1m",
        "input_series": [
            {"series": 'mlops_drift_detected{namespace="ml", name="iris", job="mlops-operator"}', "values": "0x5 1x30"},
            {"series": 'mlops_drift_detected{namespace="ml", name="wine", job="mlops-operator"}', "values": "0x35"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "MlopsDriftDetected", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "MlopsDriftDetected",
             "exp_alerts": [{**alert("MlopsDriftDetected", namespace="ml", name="iris"),
                             "exp_annotations": _drift_annotations("ml", "iris")}]},
        ],
    },
    {   # An anomaly open for 5 minutes alerts per deployment and metric; a short one does not.
        "interval": "1m",
        "input_series": [
            {"series": 'mlops_anomaly_active{namespace="ml", name="iris", metric="errorRate"}', "values": "0x5 1x10"},
            {"series": 'mlops_anomaly_active{namespace="ml", name="iris", metric="latencyP99Ms"}',
             "values": "0x5 1x3 0x7"},
        ],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "MlopsAnomalyActive", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "MlopsAnomalyActive",
             "exp_alerts": [alert("MlopsAnomalyActive", namespace="ml", name="iris", metric="errorRate")]},
        ],
    },
    {   # A ModelDeployment that does not serve for 10 minutes.
        "interval": "1m",
        "input_series": [{"series": 'mlops_deployment_ready{namespace="ml", name="iris"}', "values": "1x5 0x20"}],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "MlopsModelDeploymentNotReady", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "MlopsModelDeploymentNotReady",
             "exp_alerts": [alert("MlopsModelDeploymentNotReady", namespace="ml", name="iris")]},
        ],
    },
]


def test_alerts_fire_when_they_should(promtool: str, tmp_path: Path,
                                      exported_metrics: dict[str, set[str]]) -> None:
    for case in RULE_TESTS:  # the input series are real metric names too
        for series in case["input_series"]:
            assert series["series"].split("{")[0] in exported_metrics, series
    rules = tmp_path / "alerts.yaml"
    _without_annotations(ALERTS, rules, keep="MlopsDriftDetected")
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": RULE_TESTS},
                                    sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_test() -> None:
    tested = {t["alertname"] for case in RULE_TESTS for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == {rule["alert"] for rule in alert_rules()}
