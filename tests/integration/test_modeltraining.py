"""ModelTraining on the local control plane with the local (kfp.local) backend: real training."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import joblib
import pytest
from sklearn.datasets import load_iris

from kube_support import condition, load_example, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
RUN_TIMEOUT = 400  # generous: CI shares 2 cores with the control plane


def finished(o: dict) -> bool:
    return o.get("status", {}).get("phase") in ("Succeeded", "Failed")


def path_of(uri: str) -> Path:
    return Path(urlparse(uri).path)


def test_train_retrain_and_schedule(operator, objects):
    objects.create(load_example("training.yaml"))
    mt = objects.wait("ModelTraining", "iris", finished, timeout=RUN_TIMEOUT, what="first run")
    status = mt["status"]
    assert status["phase"] == "Succeeded", status
    assert condition(mt, "Succeeded")["status"] == "True"
    assert condition(mt, "Validated")["status"] == "True"
    run = status["latestRun"]
    assert run["trigger"] == "spec generation 1"
    assert run["metrics"]["accuracy"] >= 0.85 and 0 < run["metrics"]["rocAuc"] <= 1
    assert status["latestValidatedModel"]["version"] == 1

    # The version on disk is complete, loads and predicts.
    version_dir = path_of(status["latestValidatedModel"]["uri"])
    for name in ("model.joblib", "model-settings.json", "metrics.json", "profile.json", "lineage.json"):
        assert (version_dir / name).is_file(), name
    model = joblib.load(version_dir / "model.joblib")
    iris = load_iris(as_frame=True)
    predictions = model.predict(iris.data.head(20))
    assert (predictions == iris.target.head(20).to_numpy()).mean() >= 0.9
    lineage = json.loads((version_dir / "lineage.json").read_text())
    assert lineage["dataset"]["uri"] == "sklearn://iris"
    assert lineage["dataset"]["digest"] == run["datasetDigest"]
    assert lineage["run"]["name"] == run["name"]
    settings = json.loads((version_dir / "model-settings.json").read_text())
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert operator.metric("mlops_training_runs_total", result="succeeded") == 1
    assert operator.metric("mlops_model_validated_version", model="iris") == 1

    # A retrain request through the annotation makes version 2.
    objects.patch("ModelTraining", "iris", {"metadata": {"annotations": {
        "mlops.dev/retrain-requested": "2026-11-23T00:00:00Z by a test: fresh data"}}})
    mt = objects.wait("ModelTraining", "iris",
                      lambda o: o["status"].get("latestValidatedModel", {}).get("version") == 2,
                      timeout=RUN_TIMEOUT, what="version 2")
    assert mt["status"]["latestRun"]["trigger"].startswith("retrain requested: 2026-11-23T00:00:00Z by a test")
    assert [r["modelVersion"] for r in mt["status"]["history"]] == [2, 1]
    assert mt["status"]["observedRetrainRequest"].endswith("fresh data")

    # The schedule fires: every minute. Setting it is a spec change (generation 2), which starts a
    # run; a minute that comes while a run is active stays pending (concurrencyPolicy Forbid) and
    # starts its run once that one has finished, so version 4 is the first schedule-only run. The
    # operator sleeps until nextScheduleTime: it is woken by the time, not by polling.
    cron = "* * * * *"
    patched = datetime.now(UTC)
    objects.patch("ModelTraining", "iris", {"spec": {"schedule": cron}})
    mt = objects.wait("ModelTraining", "iris", lambda o: o["status"].get("latestValidatedModel", {}).get("version", 0) >= 4
                      and finished(o), timeout=2 * RUN_TIMEOUT + 60, what="version 4 (schedule)")
    history = {r["modelVersion"]: r for r in mt["status"]["history"]}
    assert history[3]["trigger"].startswith("spec generation 2"), history[3]  # with a due minute, if any
    trigger = history[4]["trigger"]
    assert trigger.startswith(f"schedule {cron} at "), trigger
    fired = datetime.strptime(trigger.rsplit(" at ", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert fired.second == 0 and fired > patched - timedelta(minutes=1)
    assert "-s2" in history[4]["name"]
    next_fire = datetime.strptime(mt["status"]["nextScheduleTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert next_fire.second == 0 and next_fire > fired
    # One run per trigger, no more (read the status again: the next minute may have started one).
    runs = {p.name for p in (operator.data_dir / "runs" / objects.namespace).iterdir()}
    status = objects.get("ModelTraining", "iris")["status"]
    assert runs == {r["name"] for r in status["history"]} | {status["latestRun"]["name"]}

def failing(name: str, **spec) -> dict:
    body = copy.deepcopy(load_example("training.yaml"))
    body["metadata"]["name"] = name
    body["spec"]["model"] = name
    for key, value in spec.items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return body


def test_failures_are_named(operator, objects):
    objects.create(failing("gate", validation={"thresholds": [{"metric": "accuracy", "min": 0.999}]}))
    # Missing, yet where the URI policy lets the operator read (file:///nonexistent would be refused
    # before any run: tests/integration/test_uri_policy.py).
    missing_uri = (operator.data_dir / "datasets" / objects.namespace / "nonexistent.csv").as_uri()
    objects.create(failing("missing", dataset={"uri": missing_uri, "target": "y"}))
    objects.create(failing("toosmall", dataValidation={"minRows": 1000}))
    objects.create(failing("badestimator", training={"estimator": "NoSuchForestClassifier"}))
    # Schedule only (nothing to start now): judged in the background, refused all the same.
    objects.create(failing("badschedule", training={"estimator": "LogisticRegression", "parameters": {"C": -1}},
                           schedule="0 3 * * *", runOnChange=False))

    gate = objects.wait("ModelTraining", "gate", finished, timeout=RUN_TIMEOUT)
    assert gate["status"]["phase"] == "Succeeded"
    validated = condition(gate, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "ValidationFailed")
    assert "accuracy" in validated["message"]
    assert "latestValidatedModel" not in gate["status"]
    assert gate["status"]["latestRun"]["validated"] is False

    for name, reason, text in (
        ("missing", "DatasetUnavailable", "nonexistent"),
        ("toosmall", "DataValidationFailed", "1000"),
    ):
        mt = objects.wait("ModelTraining", name, finished, timeout=RUN_TIMEOUT, what=name)
        succeeded = condition(mt, "Succeeded")
        assert (mt["status"]["phase"], succeeded["status"], succeeded["reason"]) == ("Failed", "False", reason), mt
        assert text in succeeded["message"], succeeded["message"]
        assert mt["status"]["latestRun"]["reason"] == reason
        wait_until(lambda: [e for e in objects.events(name) if e.reason == reason], what=f"{reason} event")
    # An unknown estimator is judged by the operator before any run (issue 13): Invalid, no run.
    bad = objects.wait("ModelTraining", "badestimator", lambda o: (o.get("status") or {}).get("phase") == "Invalid",
                       what="badestimator Invalid")
    succeeded = condition(bad, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "InvalidSpec")
    assert succeeded["message"].startswith("spec.training") and "NoSuchForestClassifier" in succeeded["message"]
    assert "latestRun" not in bad["status"]
    bad = objects.wait("ModelTraining", "badschedule", lambda o: (o.get("status") or {}).get("phase") == "Invalid",
                       what="badschedule Invalid")
    succeeded = condition(bad, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "InvalidSpec")
    assert succeeded["message"].startswith("spec.training.parameters") and "'C'" in succeeded["message"], succeeded
    assert "latestRun" not in bad["status"]
    assert operator.metric("mlops_training_runs_total", result="failed") == 2
    assert operator.metric("mlops_training_runs_total", result="rejected") == 1


def test_local_training_inside_an_operator_pod_is_refused(kubeconfig, namespace, crds, objects, tmp_path):
    """The operator in a Pod (the kubelet sets KUBERNETES_SERVICE_HOST) refuses backend local unless allowed."""
    from kube_support import OperatorProcess

    # Only the host: the clients' in-cluster login needs the port and a token too, so they keep using KUBECONFIG.
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator",
                              env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).start()
    try:
        objects.create(load_example("training.yaml"))
        mt = objects.wait("ModelTraining", "iris", lambda o: (o.get("status") or {}).get("phase") == "Invalid",
                          what="refused")
        succeeded = condition(mt, "Succeeded")
        assert (succeeded["status"], succeeded["reason"]) == ("False", "InvalidSpec")
        assert "inside the operator's Pod" in succeeded["message"]
        assert "MLOPS_LOCAL_TRAINING_IN_POD" in succeeded["message"] and "use backend job" in succeeded["message"]
        assert "latestRun" not in mt["status"]
        assert not (process.data_dir / "runs").exists()
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), what="deletion")
    finally:
        process.stop()
