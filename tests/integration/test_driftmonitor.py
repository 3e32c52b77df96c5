"""DriftMonitor on the local control plane, with the operator as a real process.

The serving side is real where it writes a status: the test publishes a model version (a tiny
scikit-learn model with iris's training profile, ``build_profile``) into the operator's artifact
root, and the operator serves it (ModelDeployment, backend local: a real MLServer behind the
router) and writes the deployment's status (stableVersion, stableUri) that the monitor reads. The
traffic is played: inference-log records written with the inference log's own writer into the
deployment's log, so a test chooses the rows and the predictions (a model that answers class 0
for everything, for concept drift). The training's spec is deliberately unusable for its own
reconciler (backend kfp without a host: Invalid, no run): it is only the target of the retrain
annotation.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from integration.deployment_support import deployment_body, publish_model
from kube_support import condition, wait_until
from mlops_operator.backends import artifacts
from mlops_operator.backends.serving_local.inference_log import InferenceLogWriter, LogEntry, inference_log_dir
from mlops_operator.drift import build_profile

pytestmark = pytest.mark.cluster

RETRAIN_ANNOTATION = "mlops.dev/retrain-requested"
IRIS = load_iris(as_frame=True).frame
FEATURES = [c for c in IRIS.columns if c != "target"]


# ------------------------------------------------------------------ the serving side

SERVE_TIMEOUT = 90  # a model server start, on a busy two-core machine


class Serving:
    """A model version in the operator's artifact root, a ModelDeployment the operator serves, and
    the deployment's inference log."""

    def __init__(self, objects, operator, name: str = "iris"):
        self.objects = objects
        self.operator = operator
        self.name = name
        self.root = operator.data_dir / "artifacts"
        self.root_uri = self.root.resolve().as_uri()
        self.log_dir = Path(inference_log_dir(self.root, objects.namespace, name))
        self.clock = datetime.now(UTC)

    def publish_version(self, accuracy: float = 0.96, profile: bool = True) -> dict[str, Any]:
        """The next version of the model, with iris's training profile (an empty, unusable one
        without ``profile``), as a training run publishes it."""
        return publish_model(self.root_uri, self.objects.namespace, accuracy=accuracy,
                             profile=build_profile(IRIS, exclude=("target",)) if profile else None)

    def add_profile(self, version: int) -> None:
        """Write iris's training profile into a version published without one."""
        uri = artifacts.file_uri(self.root_uri, self.objects.namespace, self.name, version, artifacts.PROFILE_FILE)
        Path(urlparse(uri).path).write_text(json.dumps(build_profile(IRIS, exclude=("target",))))

    def create_deployment(self, version: int = 1) -> None:
        """A ModelDeployment (backend local) of ``version``, which need not be published yet."""
        uri = artifacts.model_uri(self.root_uri, self.objects.namespace, self.name, version)
        self.objects.create(deployment_body(self.name, {"uri": uri, "version": str(version)}, {"strategy": "direct"},
                                            backend="local"))

    def wait_served(self, version: int = 1) -> dict[str, Any]:
        """The operator serves ``version``: its status names it stable."""
        def served(obj):
            status = obj.get("status") or {}
            return (status.get("stableVersion") == str(version) and status.get("stableUri")
                    and (condition(obj, "Ready") or {}).get("status") == "True")
        return self.objects.wait("ModelDeployment", self.name, served, timeout=SERVE_TIMEOUT,
                                 what=f"version {version} served by the operator")

    def serve(self, accuracy: float = 0.96) -> dict[str, Any]:
        """Publish version 1, deploy it and wait until the operator serves it; the deployment's status."""
        info = self.publish_version(accuracy=accuracy)
        self.create_deployment(info["version"])
        return self.wait_served(info["version"])["status"]

    def send(self, rows: pd.DataFrame, predictions: list[int] | None = None, version: str = "1") -> list[str]:
        """Log one single-row request per row, newer than everything logged before; return the ids."""
        entries, ids = [], []
        for i, values in enumerate(rows[FEATURES].itertuples(index=False)):
            self.clock += timedelta(milliseconds=1)
            request_id = str(uuid.uuid4())
            ids.append(request_id)
            prediction = predictions[i] if predictions is not None else 0
            entries.append(LogEntry(
                request_id=request_id, ts=self.clock, model=self.name, predictor="stable", model_version=version,
                shadow=False, status=200, latency_ms=2.0,
                request={"id": request_id, "inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64",
                                                        "data": [float(v) for v in values]}]},
                response_body=json.dumps({"outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64",
                                                       "data": [int(prediction)]}]}).encode(),
            ))
        InferenceLogWriter(self.log_dir).write_batch(entries)
        return ids


def create_training(objects, name: str = "iris") -> None:
    objects.create({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": name},
        "spec": {"model": name, "dataset": {"uri": "sklearn://iris", "target": "target"}, "backend": "kfp"},
    })


def create_monitor(objects, name: str = "iris", **spec: Any) -> None:
    body = {
        "apiVersion": "mlops.dev/v1alpha1", "kind": "DriftMonitor", "metadata": {"name": name},
        "spec": {"deploymentRef": {"name": "iris"}, "interval": "1s", "window": {"rows": 200, "minSamples": 100},
                 "tests": [{"name": "psi", "threshold": 0.2}, {"name": "ks", "threshold": 0.05}], **spec},
    }
    objects.create(body)


def normal_traffic(n: int = 200, seed: int = 0) -> pd.DataFrame:
    # Resampled iris. A small window can drift by chance (about 1 in 200 windows of 200 rows has a
    # PSI above 0.2); the seeds used here are fixed, so the windows are known not to.
    return IRIS.sample(n, replace=True, random_state=seed).reset_index(drop=True)


def shifted_traffic(n: int = 200, seed: int = 1) -> pd.DataFrame:
    rows = normal_traffic(n, seed)
    rows["petal length (cm)"] += 2.5
    rows["petal width (cm)"] *= 2.0
    return rows


def phase_is(phase: str, after: str | None = None):
    """Predicate: the monitor's phase, from a check later than ``after`` (a lastCheckTime)."""
    def predicate(obj):
        status = obj.get("status", {})
        return status.get("phase") == phase and (after is None or status.get("lastCheckTime", "") > after)
    return predicate


def metric(operator, sample: str, **labels: str) -> float:
    """One sample of the operator's /metrics (0 when absent); labels may include ``name``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(operator.metrics()):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


def reasons(objects, name: str) -> list[str]:
    return [event.reason for event in objects.events(name)]


@pytest.fixture
def serving(objects, operator) -> Serving:
    return Serving(objects, operator)


# ------------------------------------------------------------------ tests


def test_no_drift_then_drift_requests_a_retrain_once_within_the_cooldown(objects, operator, serving):
    create_training(objects)
    serving.serve()
    serving.send(normal_traffic())
    create_monitor(objects, onDrift={"retrain": {"trainingRef": {"name": "iris"}, "cooldown": "1h",
                                                 "maxPerDay": 3}})
    ns = objects.namespace

    # Normal traffic: no drift.
    obj = objects.wait("DriftMonitor", "iris", phase_is("NoDrift"), timeout=60, what="NoDrift on normal traffic")
    status = obj["status"]
    assert status["sampleSize"] == 200 and status["modelVersion"] == "1" and status["referenceSize"] == 150
    assert status["referenceUri"].endswith(f"/models/{ns}/iris/1/profile.json")
    assert [r["feature"] for r in status["results"]] == FEATURES
    assert all(r["verdict"] == "NoDrift" for r in status["results"])
    assert (condition(obj, "Ready")["status"], condition(obj, "DriftDetected")["reason"]) == ("True", "NoDrift")
    assert metric(operator, "mlops_drift_detected", namespace=ns, name="iris") == 0
    assert RETRAIN_ANNOTATION not in (objects.get("ModelTraining", "iris")["metadata"].get("annotations") or {})

    # Shifted traffic: drift, and the ModelTraining is asked to retrain.
    serving.send(shifted_traffic())
    obj = objects.wait("DriftMonitor", "iris", phase_is("Drift"), timeout=30, what="Drift on shifted traffic")
    status = obj["status"]
    detected = condition(obj, "DriftDetected")
    assert (detected["status"], detected["reason"]) == ("True", "DriftDetected")
    drifted = {r["feature"] for r in status["results"] if r["verdict"] == "Drift"}
    assert drifted == {"petal length (cm)", "petal width (cm)"} and status["driftedFeatures"] == 2
    psi = next(t for r in status["results"] if r["feature"] == "petal length (cm)" for t in r["tests"]
               if t["test"] == "psi")
    assert psi["drifted"] and psi["score"] > 0.2
    annotations = wait_until(
        lambda: (objects.get("ModelTraining", "iris")["metadata"].get("annotations") or {}).get(RETRAIN_ANNOTATION),
        timeout=10, what="retrain annotation")
    first_request = annotations
    assert " drift: 2/4 features drifted (" in first_request and "petal length (cm)" in first_request
    obj = objects.get("DriftMonitor", "iris")
    assert obj["status"]["retrainRequests"] == [obj["status"]["lastRetrainRequest"]]
    assert first_request.startswith(obj["status"]["lastRetrainRequest"])
    assert metric(operator, "mlops_retrain_requests_total", namespace=ns, name="iris") == 1
    assert metric(operator, "mlops_drift_detected", namespace=ns, name="iris") == 1
    assert metric(operator, "mlops_drift_score", namespace=ns, name="iris", feature="petal length (cm)",
                           test="psi") == pytest.approx(psi["score"], rel=1e-4)
    wait_until(lambda: {"DriftDetected", "RetrainRequested"} <= set(reasons(objects, "iris")), timeout=10,
               what="DriftDetected and RetrainRequested events")
    assert objects.get("ModelTraining", "iris")["spec"] == {
        "model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target", "format": "auto"},
        **{k: v for k, v in objects.get("ModelTraining", "iris")["spec"].items() if k not in ("model", "dataset")},
    }, "only an annotation changes"

    # Back to normal, then drift again within the cooldown: no second request.
    serving.send(normal_traffic(seed=2))
    objects.wait("DriftMonitor", "iris", phase_is("NoDrift"), timeout=30, what="NoDrift again")
    wait_until(lambda: "DriftResolved" in reasons(objects, "iris"), timeout=10, what="DriftResolved event")
    serving.send(shifted_traffic(seed=3))
    obj = objects.wait("DriftMonitor", "iris", phase_is("Drift"), timeout=30, what="second drift")
    later = obj["status"]["lastCheckTime"]
    obj = objects.wait("DriftMonitor", "iris", phase_is("Drift", after=later), timeout=30,
                       what="another check during the cooldown")
    assert "retrain not requested: cooldown 1h" in condition(obj, "DriftDetected")["message"]
    assert len(obj["status"]["retrainRequests"]) == 1
    training = objects.get("ModelTraining", "iris")
    assert training["metadata"]["annotations"][RETRAIN_ANNOTATION] == first_request
    assert metric(operator, "mlops_retrain_requests_total", namespace=ns, name="iris") == 1
    assert metric(operator, "mlops_drift_checks_total", result="drift") >= 3
    assert metric(operator, "mlops_drift_checks_total", result="nodrift") >= 2


def test_drift_report_on_a_changed_verdict_and_on_request(objects, operator, serving, kubeconfig, tmp_path):
    import fsspec

    from mlops_operator import cli

    serving.serve()
    serving.send(normal_traffic())
    create_monitor(objects, interval="1h")

    # The first check writes a report; status links it.
    obj = objects.wait("DriftMonitor", "iris", lambda o: (o.get("status") or {}).get("report"), timeout=60,
                       what="a report after the first check")
    report = obj["status"]["report"]
    assert report["verdict"] == obj["status"]["phase"] == "NoDrift" and report["time"] == obj["status"]["lastCheckTime"]
    assert f"/drift-reports/{objects.namespace}/iris/" in report["uri"] and report["latestUri"].endswith("latest.html")
    with fsspec.open(report["uri"], "rt", encoding="utf-8") as handle:
        page = handle.read()
    assert page.count('<svg class="chart"') == 4 and all(f'data-feature="{name}"' in page for name in FEATURES)
    assert "model version</dt><dd>1</dd>" in page and "200 rows" in page

    # On request (kubectl mlops report): a check now, despite the 1h interval, and its report copied here.
    serving.send(shifted_traffic())
    target = tmp_path / "report.html"
    out = io.StringIO()
    code = cli.main(["--kubeconfig", kubeconfig, "-n", objects.namespace, "report", "iris", "-o", str(target),
                     "--timeout", "60"], out=out)
    assert code == 0, out.getvalue()
    obj = objects.get("DriftMonitor", "iris")
    report = obj["status"]["report"]
    assert obj["status"]["phase"] == report["verdict"] == "Drift" and report["request"]
    assert obj["metadata"]["annotations"]["mlops.dev/report-requested"] == report["request"]
    page = target.read_text(encoding="utf-8")
    assert 'badge drift">Drift</span></h1>' in page and page.count('<svg class="chart"') == 4
    assert "wrote " + str(target) in out.getvalue()


def test_too_few_samples_is_insufficient_data(objects, operator, serving):
    create_training(objects)
    serving.serve()
    serving.send(shifted_traffic(n=40))
    create_monitor(objects, onDrift={"retrain": {"trainingRef": {"name": "iris"}}})

    obj = objects.wait("DriftMonitor", "iris", phase_is("InsufficientData"), timeout=60, what="InsufficientData")
    detected = condition(obj, "DriftDetected")
    assert (detected["status"], detected["reason"]) == ("False", "InsufficientData")
    assert detected["message"] == "40 requests in the window, 100 needed for a verdict"
    assert condition(obj, "Ready")["status"] == "True"
    assert obj["status"]["sampleSize"] == 40
    assert all(r["verdict"] == "InsufficientData" for r in obj["status"]["results"])
    assert metric(operator, "mlops_drift_detected", namespace=objects.namespace, name="iris") == 0
    assert metric(operator, "mlops_drift_checks_total", result="insufficient") >= 1
    assert RETRAIN_ANNOTATION not in (objects.get("ModelTraining", "iris")["metadata"].get("annotations") or {})


def test_missing_deployment_model_reference_and_log_are_reported_then_recovered(objects, operator, serving):
    create_monitor(objects)

    def ready_reason(reason: str):
        return lambda obj: (condition(obj, "Ready") or {}).get("reason") == reason

    # Each failed check backs the monitor off, from its 1s interval (1s, 2s, 4s, 4s...; from 10s with a longer
    # interval): the waits allow for far more.
    backoff = 90

    obj = objects.wait("DriftMonitor", "iris", ready_reason("DeploymentNotFound"), timeout=60,
                       what="DeploymentNotFound")
    assert obj["status"]["phase"] == "Error" and condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "DriftDetected")["status"] == "Unknown"

    # A deployment of a version not published yet: the operator serves nothing (ModelUnavailable).
    serving.create_deployment(1)
    obj = objects.wait("DriftMonitor", "iris", ready_reason("NoServedModel"), timeout=backoff, what="NoServedModel")
    assert obj["status"]["phase"] == "Pending"  # waiting, not failing: it resolves by itself

    # The version appears without a training profile; the operator serves it.
    assert serving.publish_version(profile=False)["version"] == 1
    serving.wait_served(1)
    obj = objects.wait("DriftMonitor", "iris", ready_reason("ReferenceUnavailable"), timeout=backoff,
                       what="ReferenceUnavailable")
    assert "profile.json" in condition(obj, "Ready")["message"]

    serving.add_profile(1)
    obj = objects.wait("DriftMonitor", "iris", ready_reason("NoRequestsYet"), timeout=backoff, what="NoRequestsYet")
    assert obj["status"]["phase"] == "Pending"

    serving.send(normal_traffic())
    obj = objects.wait("DriftMonitor", "iris", phase_is("NoDrift"), timeout=backoff, what="recovery")
    assert condition(obj, "Ready")["status"] == "True"
    assert metric(operator, "mlops_drift_checks_total", result="error") >= 4
    assert "Traceback" not in operator.logs()


def test_ground_truth_labels_reveal_concept_drift(objects, operator, serving):
    serving.serve(accuracy=0.96)
    rows = normal_traffic(n=200, seed=4)
    # The inputs look like training data, but the model answers class 0 for everything.
    ids = serving.send(rows, predictions=[0] * len(rows))
    labels = serving.root / "labels.csv"
    pd.DataFrame({"id": ids, "label": rows["target"]}).to_csv(labels, index=False)
    create_monitor(objects, performance={"labelsUri": labels.resolve().as_uri(), "metric": "accuracy",
                                         "maxDegradation": 0.1})

    obj = objects.wait("DriftMonitor", "iris", phase_is("Drift"), timeout=60, what="concept drift")
    performance = obj["status"]["performance"]
    assert performance["samples"] == 200 and performance["training"] == 0.96 and performance["degraded"]
    assert performance["live"] == pytest.approx((rows["target"] == 0).mean(), abs=1e-5)
    detected = condition(obj, "DriftDetected")
    assert detected["reason"] == "PerformanceDegraded"
    assert detected["message"].startswith("0/4 features drifted; accuracy ")


SINK_TOKEN_KEY = "test-sink-key"


@pytest.fixture
def operator_with_sink(kubeconfig, namespace, crds, objects, tmp_path):
    """(operator, sink URL): the operator with its Seldon request-logger sink started at once."""
    from kube_support import OperatorProcess, free_port

    port = free_port()
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator",
                              env={"MLOPS_SELDON_LOGGER_MODE": "always", "MLOPS_SELDON_LOGGER_PORT": str(port),
                                   "MLOPS_SELDON_LOGGER_TOKEN_KEY": SINK_TOKEN_KEY,
                                   # Batches of 256 records only (and what a retrain request flushes).
                                   "MLOPS_SELDON_LOGGER_FLUSH_INTERVAL_SECONDS": "3600"})
    process.start()
    yield process, f"http://127.0.0.1:{port}"
    if process.process is not None and process.process.poll() is None:
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=60, what="deletion of the test's objects")
    process.stop()


def logged_records(log_dir: Path) -> int:
    """How many records a deployment's inference log holds (local files: one line each)."""
    return sum(len(path.read_text().splitlines()) for path in log_dir.rglob("*.jsonl"))


def test_seldon_request_logger_events_feed_the_monitor_and_the_retrain(objects, operator_with_sink):
    """Seldon's request-logger messages, through the operator's sink, are what the monitor checks; and what
    the sink still holds when the monitor asks for a retrain is written before the request, so the run
    reads the whole window (the sink writes a batch every 256 records here, and on its timer only hourly)."""
    import requests

    from mlops_operator.backends.seldon_logger_sink import REQUEST_TYPE, RESPONSE_TYPE, logger_url, namespace_token

    operator, sink_url = operator_with_sink
    serving = Serving(objects, operator)
    serving.serve()
    url = logger_url(sink_url, objects.namespace, "iris", "stable", "1")
    rows = shifted_traffic(n=300, seed=5)
    with requests.Session() as http:
        # The sink authenticates its callers: without the namespace's token nothing is written.
        refused = http.post(url, json={"inputs": []}, headers={"Ce-Type": REQUEST_TYPE, "Ce-Id": "x"}, timeout=10)
        assert refused.status_code == 401
        url = logger_url(sink_url, objects.namespace, "iris", "stable", "1",
                         token=namespace_token(SINK_TOKEN_KEY, objects.namespace))
        for i, values in enumerate(rows[FEATURES].itertuples(index=False)):
            common = {"Ce-Specversion": "1.0", "Ce-Requestid": f"req-{i}", "Ce-Modelid": "iris",
                      "Ce-Source": "http://executor:8000/", "Content-Type": "application/json"}
            request = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64", "data": list(values)}]}
            response = {"outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [2]}]}
            for event_type, body in ((REQUEST_TYPE, request), (RESPONSE_TYPE, response)):
                answer = http.post(url, json=body, headers={**common, "Ce-Type": event_type, "Ce-Id": f"{i}"},
                                   timeout=10)
                assert answer.status_code == 202, answer.text
    # One batch of 256 is written; the other 44 records wait in the sink.
    wait_until(lambda: logged_records(serving.log_dir) == 256, timeout=30, what="the sink's first batch")

    create_training(objects)
    create_monitor(objects, onDrift={"retrain": {"trainingRef": {"name": "iris"}}})
    obj = objects.wait("DriftMonitor", "iris", phase_is("Drift"), timeout=60, what="drift from Seldon events")
    assert obj["status"]["sampleSize"] == 200  # the window's rows, of the 256 written
    assert {r["feature"] for r in obj["status"]["results"] if r["verdict"] == "Drift"} == {
        "petal length (cm)", "petal width (cm)"}
    wait_until(lambda: (objects.get("ModelTraining", "iris")["metadata"].get("annotations") or {}).get(
        RETRAIN_ANNOTATION), timeout=30, what="retrain annotation")
    assert logged_records(serving.log_dir) == 300, "the sink's records are written before the retrain request"
