"""Helpers for the ModelDeployment integration tests: tiny model versions, V2 requests, process checks."""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlops_operator.backends import artifacts

MODEL = "iris"
ROWS = load_iris().data[:8].tolist()


def publish_model(artifact_root: str, namespace: str, n_features: int = 4, c: float = 1.0, accuracy: float = 0.95,
                  profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a tiny iris classifier on the first ``n_features`` columns and publish it as the next
    version of ``iris`` of ``namespace`` under ``artifact_root`` (what a ModelTraining run would do, in 0.1 s)."""
    data = load_iris()
    model = LogisticRegression(C=c, max_iter=500).fit(data.data[:, :n_features], data.target)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.joblib"
        joblib.dump(model, path)
        version = artifacts.allocate_version(artifact_root, namespace, MODEL)
        return artifacts.publish_model_version(
            artifact_root, namespace, MODEL, version, model_file=path, metrics={"accuracy": accuracy}, validated=True,
            reasons=[], profile=profile or {}, lineage={"test": True, "features": n_features})


def infer(endpoint: str, rows: list[list[float]] | None = None, timeout: float = 10) -> tuple[int, dict, dict]:
    """POST a V2 inference request to ``<endpoint>/infer``: (HTTP status, headers, body)."""
    rows = rows or ROWS[:1]
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                        "data": [x for row in rows for x in row]}]}
    request = urllib.request.Request(f"{endpoint}/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), {"error": error.read().decode(errors="replace")}


def split(endpoint: str, n: int) -> tuple[Counter, Counter]:
    """Send ``n`` requests: counts per answering predictor and per HTTP status."""
    predictors, statuses = Counter(), Counter()
    for i in range(n):
        status, headers, _ = infer(endpoint, [ROWS[i % len(ROWS)]])
        predictors[headers.get("x-mlops-predictor", "?")] += 1
        statuses[status] += 1
    return predictors, statuses


def recorded_pids(data_dir: Path, namespace: str, deployment: str) -> dict[str, int]:
    """Pids of the deployment's servers as their state files record them (workdir name -> pid)."""
    pids = {}
    for state in sorted((data_dir / "serving" / namespace / deployment).glob("*/state.json")):
        pid = json.loads(state.read_text()).get("pid")
        if pid:
            pids[state.parent.name] = pid
    return pids


def alive(pid: int, marker: str = "") -> bool:
    """Whether the process runs (not a zombie) and, with ``marker``, has it in its command line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] in "ZX":
            return False
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False


def metric(metrics_text: str, sample_name: str, **labels: str) -> float:
    """One sample from a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def deployment_body(name: str, model: dict[str, Any], rollout: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": model, "rollout": rollout, **spec}}
