"""A corpus of malformed objects of the three kinds, each with where it must be stopped.

``admission``: the API server refuses it (schema or CEL rule) and nothing is stored.
``invalid``: admission accepts it, and the operator marks it ``InvalidSpec`` before any work starts.

Built from the examples with one mistake each, the way a user makes them: wrong types, out-of-range
numbers, malformed names and references, control characters, impossible thresholds, contradictions,
oversized values. tests/integration/test_malformed_corpus.py applies them all to a real API server
and operator.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from kube_support import load_example

Where = Literal["admission", "invalid"]
Entry = tuple[str, dict[str, Any], Where]

BIG = "x" * 200_000  # a 200 KB value: over the operator's 16 KiB cap, near the 256 KiB annotation limit


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """body with spec.<path> (dotted; "-" deletes) set to value."""
    node = body["spec"]
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return body


_DELETE = object()


def _variant(example: str, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(load_example(example))
    body["metadata"] = {"name": name}
    for path, value in changes.items():
        if path == "metadata.name":
            body["metadata"]["name"] = value
        else:
            _set(body, path, value)
    return body


# ModelTraining: (changes, where). The example trains iris with a small random forest.
TRAINING: list[tuple[dict[str, Any], Where]] = [
    ({"model": ""}, "admission"),
    ({"model": "Iris"}, "admission"),
    ({"model": "iris_model"}, "admission"),
    ({"model": "-iris"}, "admission"),
    ({"model": "m" * 64}, "admission"),
    ({"model": 5}, "admission"),
    ({"dataset": _DELETE}, "admission"),
    ({"dataset.uri": ""}, "admission"),
    ({"dataset.uri": "s3://bucket/my data.csv"}, "admission"),
    ({"dataset.uri": "file:///data.csv\n"}, "admission"),
    ({"dataset.target": ""}, "admission"),
    ({"dataset.target": "tar\x01get"}, "admission"),
    ({"dataset.features": ["a", "a"]}, "admission"),
    ({"dataset.features": [""]}, "admission"),
    ({"dataset.features": [f"f{i}" for i in range(513)]}, "admission"),
    ({"dataset.features": ["f" * 300]}, "admission"),
    ({"dataset.format": "xml"}, "admission"),
    ({"dataset.credentialsSecretRef": {"name": "kube-system/creds"}}, "admission"),
    ({"training.testSize": 0}, "admission"),
    ({"training.testSize": 1}, "admission"),
    ({"training.testSize": "a quarter"}, "admission"),
    ({"training.seed": -1}, "admission"),
    ({"training.seed": 2**31}, "admission"),
    ({"training.estimator": ""}, "admission"),
    ({"training.estimator": "1Forest"}, "admission"),
    ({"training.estimator": "Random Forest"}, "admission"),
    ({"training.estimator": "E" * 129}, "admission"),
    ({"training.task": "clustering"}, "admission"),
    ({"training.parameters": {f"p{i}": i for i in range(65)}}, "admission"),
    ({"dataValidation.minRows": 0}, "admission"),
    ({"dataValidation.maxMissingFraction": 1.5}, "admission"),
    ({"dataValidation.columns": [{"name": "a"}, {"name": "a"}]}, "admission"),
    ({"dataValidation.columns": [{"name": ""}]}, "admission"),
    ({"dataValidation.columns": [{"name": "a", "type": "date"}]}, "admission"),
    ({"dataValidation.columns": [{"name": "a", "allowedValues": ["v" * 300]}]}, "admission"),
    ({"dataValidation.columns": [{"name": "a", "maxMissingFraction": -0.1}]}, "admission"),
    ({"validation.thresholds": [{"metric": "auc", "min": 0.5}]}, "admission"),
    ({"validation.thresholds": [{"metric": "accuracy"}]}, "admission"),
    ({"validation.thresholds": [{"metric": "accuracy", "min": 0.9, "max": 0.8}]}, "admission"),
    ({"validation.thresholds": [{"metric": "accuracy", "min": 2}]}, "admission"),
    ({"validation.thresholds": [{"metric": "accuracy", "max": -1}]}, "admission"),
    ({"validation.thresholds": [{"metric": "f1", "min": 1.5}]}, "admission"),
    ({"validation.thresholds": [{"metric": "rocAuc", "max": 3}]}, "admission"),
    ({"validation.thresholds": [{"metric": "rmse", "max": 0}]}, "admission"),
    ({"validation.thresholds": [{"metric": "mae", "min": -1}]}, "admission"),
    ({"validation.thresholds": [{"metric": "r2", "min": 2}]}, "admission"),
    ({"validation.thresholds": [{"metric": "accuracy", "min": 0.5}, {"metric": "accuracy", "max": 0.4}]},
     "admission"),
    ({"validation.maxRegression": 2}, "admission"),
    ({"validation.maxRegression": -0.1}, "admission"),
    ({"backend": "spark"}, "admission"),
    ({"kfp": {"host": "http://kfp:8888"}}, "admission"),
    ({"backend": "kfp", "kfp": {"host": "ftp://kfp:21"}}, "admission"),
    ({"backend": "kfp", "kfp": {"host": "kfp.example.com"}}, "admission"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp:8888", "namespace": "Team_A"}}, "admission"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp:8888", "experiment": ""}}, "admission"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp:8888", "tokenSecretRef": {"name": "a/b", "key": "t"}}},
     "admission"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp:8888", "tokenSecretRef": {"name": "tok", "key": "a b"}}},
     "admission"),
    ({"schedule": "every day"}, "admission"),
    ({"schedule": "* * * *"}, "admission"),
    ({"concurrencyPolicy": "Allow"}, "admission"),
    ({"historyLimit": 0}, "admission"),
    ({"historyLimit": 11}, "admission"),
    ({"pipeline": {"template": "tabular", "uri": "file:///p.yaml"}}, "admission"),
    ({"pipeline": {"template": "deep"}}, "admission"),
    ({"pipeline": {"configMapRef": {"name": "../etc", "key": "p"}}}, "admission"),
    ({"pipeline": {"uri": "file:///my pipeline.yaml"}}, "admission"),
    ({"metadata.name": "t" * 49}, "admission"),
    # Judged by the operator, before any run.
    ({"schedule": "0 0 31 2 *"}, "invalid"),
    ({"schedule": "0 0 30 2 *"}, "invalid"),
    ({"schedule": "61 * * * *"}, "invalid"),  # the pattern checks the shape; croniter the ranges
    ({"backend": "kfp"}, "invalid"),
    ({"backend": "kfp", "kfp": {"host": "http://[::1"}}, "invalid"),
    ({"training.estimator": "NotAnEstimator"}, "invalid"),
    ({"training.estimator": "RandomForestClassifer"}, "invalid"),
    ({"training.estimator": "os.system"}, "invalid"),
    ({"training.estimator": "sklearn.cluster.KMeans"}, "invalid"),
    ({"training.estimator": "XGBRanker"}, "invalid"),
    ({"training.parameters": {"n_trees": 5}}, "invalid"),
    ({"training.parameters": {"n_estimators": -5}}, "invalid"),
    ({"training.parameters": {"max_depth": "deep"}}, "invalid"),
    ({"training.parameters": {"criterion": "chaos"}}, "invalid"),
    ({"training.parameters": {"note": BIG}}, "invalid"),
    ({"training.parameters": {"n_estimators": 5, "blob": "y" * 20_000}}, "invalid"),
    ({"pipeline.parameters": {"blob": BIG}}, "invalid"),
    ({"pipeline.parameters": {"artifact_root": "file:///tmp/elsewhere"}}, "invalid"),  # moves the registry
    ({"pipeline.parameters": {"dataset_uri": "file:///etc/passwd"}}, "invalid"),  # around the URI policy
    ({"training.estimator": "RandomForestRegressor", "training.task": "classification"}, "invalid"),
    ({"training.estimator": "LogisticRegression", "training.task": "regression"}, "invalid"),
    ({"training.estimator": "LogisticRegression", "training.parameters": {},
      "validation.thresholds": [{"metric": "rmse", "max": 1.0}]}, "invalid"),
    ({"training.estimator": "RandomForestRegressor", "training.parameters": {},
      "validation.thresholds": [{"metric": "accuracy", "min": 0.5}]}, "invalid"),
    ({"dataset.uri": "ftp://data/iris.csv"}, "invalid"),
    ({"dataset.features": ["target", "sepal length (cm)"]}, "invalid"),
    ({"dataValidation.columns": [{"name": "a", "min": 5, "max": 1}]}, "invalid"),
    ({"pipeline": {"configMapRef": {"name": "no-such-pipeline", "key": "pipeline.yaml"}}}, "invalid"),
]

# ModelDeployment. The example follows the iris ModelTraining with a canary rollout.
DEPLOYMENT: list[tuple[dict[str, Any], Where]] = [
    ({"model": {"uri": "file:///m/iris/1", "version": "1", "fromTraining": "iris"}}, "admission"),
    ({"model": {}}, "admission"),
    ({"model": {"uri": "file:///m/iris/1"}}, "admission"),
    ({"model": {"fromTraining": ""}}, "admission"),
    ({"model": {"fromTraining": "kube-system/iris"}}, "admission"),
    ({"model": {"fromTraining": "iris..v2"}}, "admission"),
    ({"model": {"fromTraining": "Iris"}}, "admission"),
    ({"model": {"fromTraining": "iris\x07"}}, "admission"),
    ({"model": {"fromTraining": ".."}}, "admission"),
    ({"model": {"uri": "file:///m/iris/1", "version": "bad version"}}, "admission"),
    ({"model": {"uri": "file:///m/iris 1", "version": "1"}}, "admission"),
    ({"model": {"fromTraining": "iris", "name": "Bad_Name"}}, "admission"),
    ({"runtime": "tensorflow"}, "admission"),
    ({"backend": "kserve"}, "admission"),
    ({"replicas": -1}, "admission"),
    ({"replicas": 101}, "admission"),
    ({"autoscaling": {"maxReplicas": 3}}, "admission"),
    ({"replicas": _DELETE, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "admission"),
    ({"replicas": _DELETE, "autoscaling": {"maxReplicas": 0}}, "admission"),
    ({"replicas": _DELETE, "autoscaling": {"maxReplicas": 3, "targetCpuUtilizationPercentage": 0}}, "admission"),
    ({"resources.requests.cpu": "1.2.3"}, "admission"),
    ({"resources.requests.cpu": "5mm"}, "admission"),
    ({"resources.requests.cpu": "-1"}, "admission"),
    ({"resources.requests.cpu": "0"}, "admission"),
    ({"resources.requests.cpu": "2000"}, "admission"),
    ({"resources.requests.cpu": "1e9"}, "admission"),
    ({"resources.limits.cpu": "two"}, "admission"),
    ({"resources.requests.memory": "100Ti"}, "admission"),
    ({"resources.requests.memory": "0"}, "admission"),
    ({"resources.requests.memory": "lots"}, "admission"),
    ({"resources.requests.memory": "1.5.2Gi"}, "admission"),
    ({"rollout.strategy": "bluegreen"}, "admission"),
    ({"rollout.steps": [{"weight": 50}, {"weight": 10}]}, "admission"),
    ({"rollout.steps": [{"weight": 10}, {"weight": 10}]}, "admission"),
    ({"rollout.steps": [{"weight": 0}]}, "admission"),
    ({"rollout.steps": [{"weight": 101}]}, "admission"),
    ({"rollout.steps": [{"weight": 10, "pauseSeconds": -1}]}, "admission"),
    ({"rollout.steps": [{"weight": 10, "pauseSeconds": 86401}]}, "admission"),
    ({"rollout.steps": []}, "admission"),
    ({"rollout.steps": [{"weight": w} for w in range(1, 12)]}, "admission"),
    ({"rollout.shadow": {"mirrorPercent": 0}}, "admission"),
    ({"rollout.analysis.maxErrorRate": 2}, "admission"),
    ({"rollout.analysis.maxErrorRate": -0.1}, "admission"),
    ({"rollout.analysis.maxLatencyP99Ms": 0}, "admission"),
    ({"rollout.analysis.minRequests": -1}, "admission"),
    ({"rollout.analysis.modelMetric": {"name": "accuracy"}}, "admission"),
    ({"rollout.analysis.modelMetric": {"name": "accuracy", "min": 0.9, "max": 0.5}}, "admission"),
    ({"rollout.analysis.modelMetric": {"name": "accuracy", "min": 2}}, "admission"),
    ({"rollout.analysis.modelMetric": {"name": "rmse", "max": -1}}, "admission"),
    ({"rollout.analysis.modelMetric": {"name": "acc uracy", "min": 0.5}}, "admission"),
    ({"rollout.analysis.prometheusUrl": "ftp://prometheus:9090"}, "admission"),
    ({"rollout.analysis.prometheusUrl": "prometheus:9090"}, "admission"),
    ({"rollout.analysis.prometheusUrl": "http://prom etheus:9090"}, "admission"),
    ({"rollout.approval": "sometimes"}, "admission"),
    ({"region": "mars-1"}, "admission"),
    ({"region": _DELETE, "instanceType": "m5.large"}, "admission"),
    ({"instanceType": "M5 Large"}, "admission"),
    ({"serviceAccountName": "Bad_Account"}, "admission"),
    ({"storageSecretName": "a/b"}, "admission"),
    ({"metadata.name": "d" * 49}, "admission"),
    # Judged by the operator.
    ({"runtime": "xgboost"}, "invalid"),
    ({"runtime": "mlflow"}, "invalid"),
    ({"model": {"uri": "ftp://models/iris/1", "version": "1"}}, "invalid"),
    ({"model": {"uri": "gopher://models/iris/1", "version": "1"}}, "invalid"),
    ({"instanceType": "z9.huge"}, "invalid"),
    ({"rollout.analysis.prometheusUrl": "http://[::1"}, "invalid"),
    ({"rollout.analysis.prometheusUrl": "http://prometheus:port"}, "invalid"),
]

# DriftMonitor. The example watches the iris deployment with psi and ks.
MONITOR: list[tuple[dict[str, Any], Where]] = [
    ({"deploymentRef": _DELETE}, "admission"),
    ({"deploymentRef": {"name": ""}}, "admission"),
    ({"deploymentRef": {"name": "kube-system/iris"}}, "admission"),
    ({"deploymentRef": {"name": "Iris"}}, "admission"),
    ({"deploymentRef": {"name": "iris\n"}}, "admission"),
    ({"deploymentRef": {"name": "iris", "namespace": "Other_NS"}}, "admission"),
    ({"reference": {"profileUri": "file:///p.json", "datasetUri": "sklearn://iris"}}, "admission"),
    ({"reference": {"profileUri": "file:///my profile.json"}}, "admission"),
    ({"reference": {"datasetUri": "sklearn://iris", "target": "t\x00"}}, "admission"),
    ({"window.rows": 0}, "admission"),
    ({"window.minSamples": 0}, "admission"),
    ({"window.duration": "forever"}, "admission"),
    ({"window.duration": "1y"}, "admission"),
    ({"window.duration": "1234567d"}, "admission"),
    ({"interval": "5 minutes"}, "admission"),
    ({"interval": "0.5m"}, "admission"),
    ({"interval": ""}, "admission"),
    ({"interval": "99999999999d"}, "admission"),
    ({"features": ["a", "a"]}, "admission"),
    ({"features": [""]}, "admission"),
    ({"features": [f"f{i}" for i in range(513)]}, "admission"),
    ({"tests": []}, "admission"),
    ({"tests": [{"name": "mmd", "threshold": 0.1}]}, "admission"),
    ({"tests": [{"name": "psi", "threshold": -1}]}, "admission"),
    ({"tests": [{"name": "psi", "threshold": 101}]}, "admission"),
    ({"tests": [{"name": "ks", "threshold": 1}]}, "admission"),
    ({"tests": [{"name": "ks", "threshold": 5}]}, "admission"),
    ({"tests": [{"name": "chi2", "threshold": 1.5}]}, "admission"),
    ({"tests": [{"name": "js", "threshold": 1}]}, "admission"),
    ({"tests": [{"name": "js", "threshold": 2}]}, "admission"),
    ({"tests": [{"name": "psi", "threshold": 0.2}, {"name": "psi", "threshold": 0.3}]}, "admission"),
    ({"tests": [{"name": "psi"}]}, "admission"),
    ({"correction": "holm"}, "admission"),
    ({"driftShare": 2}, "admission"),
    ({"performance": {"labelsUri": ""}}, "admission"),
    ({"performance": {"labelsUri": "file:///labels.csv", "metric": "auc"}}, "admission"),
    ({"performance": {"labelsUri": "file:///labels.csv", "maxDegradation": -1}}, "admission"),
    ({"performance": {"labelsUri": "file:///labels.csv", "minSamples": 0}}, "admission"),
    ({"onDrift": {"retrain": {}}}, "admission"),
    ({"onDrift": {"retrain": {"trainingRef": {"name": "a/b"}}}}, "admission"),
    ({"onDrift": {"retrain": {"trainingRef": {"name": "iris"}, "cooldown": "soon"}}}, "admission"),
    ({"onDrift": {"retrain": {"trainingRef": {"name": "iris"}, "maxPerDay": 0}}}, "admission"),
    ({"metadata.name": "m" * 49}, "admission"),
    # Judged by the operator.
    ({"deploymentRef": {"name": "iris", "namespace": "other"}}, "invalid"),
    ({"interval": "0s"}, "invalid"),
    ({"interval": "3651d"}, "invalid"),
    ({"interval": "999999d"}, "invalid"),
    ({"window.duration": "0m"}, "invalid"),
    ({"window.duration": "999999d999999h"}, "invalid"),
    ({"onDrift": {"retrain": {"trainingRef": {"name": "iris"}, "cooldown": "999999d"}}}, "invalid"),
]


def corpus() -> list[tuple[str, str, dict[str, Any], Where]]:
    """(id, kind, body, where) of every entry; ids are the object names."""
    entries = []
    for prefix, kind, example, table in (("mt", "ModelTraining", "training.yaml", TRAINING),
                                         ("md", "ModelDeployment", "deployment.yaml", DEPLOYMENT),
                                         ("dm", "DriftMonitor", "driftmonitor.yaml", MONITOR)):
        for index, (changes, where) in enumerate(table):
            name = f"bad-{prefix}-{index:03d}"
            entries.append((name, kind, _variant(example, name, changes), where))
    return entries
