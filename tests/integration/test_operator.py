"""The operator process against the real API server: conditions, invalid specs, finalizers, restarts."""

from __future__ import annotations

import copy
import time

import pytest

from kube_support import OperatorProcess, condition, load_example, wait_until

pytestmark = pytest.mark.cluster

KINDS_AND_CONDITIONS = {
    "ModelTraining": {"Succeeded", "Validated"},
    "ModelDeployment": {"Ready", "Progressing", "AwaitingApproval", "Degraded"},
    "DriftMonitor": {"Ready", "DriftDetected"},
}


def has_all_conditions(obj: dict) -> bool:
    status = obj.get("status", {})
    types = {c["type"] for c in status.get("conditions", [])}
    generation = obj["metadata"]["generation"]
    return (
        KINDS_AND_CONDITIONS[obj["kind"]] <= types
        and status.get("observedGeneration") == generation
        and all(c.get("observedGeneration") == generation for c in status["conditions"])
    )


def test_examples_get_conditions_and_observed_generation(operator, objects):
    for example in ("driftmonitor.yaml", "deployment.yaml", "training.yaml"):
        objects.create(load_example(example))
    for kind in KINDS_AND_CONDITIONS:
        obj = objects.wait(kind, "iris", has_all_conditions, what=f"{kind} conditions")
        for c in obj["status"]["conditions"]:
            assert c["lastTransitionTime"].endswith("Z") and c["reason"]
    # Each object says it was taken up: Accepted, or its first reconciliation's own news (Deploying,
    # RunStarted), which says as much; Accepted at most once.
    wait_until(lambda: {e.involved_object.kind for e in objects.events("iris") if e.type == "Normal"}
               == set(KINDS_AND_CONDITIONS), what="a first event per object")
    for kind in KINDS_AND_CONDITIONS:
        accepted = [e for e in objects.events("iris") if e.involved_object.kind == kind and e.reason == "Accepted"]
        assert len(accepted) <= 1 and all((e.count or 1) == 1 for e in accepted), kind


def test_invalid_spec_is_reported_once_and_not_retried(operator, objects):
    body = copy.deepcopy(load_example("training.yaml"))
    body["spec"]["schedule"] = "99 * * * *"  # passes the schema's pattern, not croniter
    objects.create(body)
    obj = objects.wait("ModelTraining", "iris",
                       lambda o: (condition(o, "Succeeded") or {}).get("reason") == "InvalidSpec",
                       what="InvalidSpec")
    succeeded = condition(obj, "Succeeded")
    assert succeeded["status"] == "False"
    assert "spec.schedule" in succeeded["message"] and "not a valid cron" in succeeded["message"]
    assert obj["status"]["phase"] == "Invalid"
    wait_until(lambda: [e for e in objects.events("iris") if e.reason == "InvalidSpec"], what="InvalidSpec event")

    # A user's mistake, counted as such: never as an operator error (issue 13).
    invalid = operator.metric("mlops_invalid_spec_total", kind="ModelTraining")
    assert invalid >= 1 and operator.metric("mlops_reconcile_total", kind="ModelTraining", result="invalid") >= 1
    assert operator.metric("mlops_reconcile_errors_total", kind="ModelTraining") == 0
    time.sleep(4)  # four poll intervals: a retry loop would show up as more verdicts
    assert operator.metric("mlops_invalid_spec_total", kind="ModelTraining") == invalid
    assert operator.metric("mlops_reconcile_total", kind="ModelTraining", result="error") == 0
    assert not (operator.data_dir / "runs").exists() or not any((operator.data_dir / "runs").rglob("request.json"))

    # Fixing the spec clears the condition (and starts the first run).
    objects.patch("ModelTraining", "iris", {"spec": {"schedule": "0 3 * * *"}})
    objects.wait("ModelTraining", "iris",
                 lambda o: (condition(o, "Succeeded") or {}).get("reason") != "InvalidSpec"
                 and o.get("status", {}).get("phase") != "Invalid", what="InvalidSpec cleared")


def test_delete_releases_the_finalizer(operator, objects):
    objects.create(load_example("driftmonitor.yaml"))
    objects.wait("DriftMonitor", "iris", lambda o: "mlops.dev/finalizer" in o["metadata"].get("finalizers", []),
                 what="finalizer")
    objects.delete("DriftMonitor", "iris")
    wait_until(lambda: objects.get("DriftMonitor", "iris") is None, timeout=30, what="object gone")


def test_kopf_bookkeeping_lives_under_mlops_dev(operator, objects):
    objects.create(load_example("driftmonitor.yaml"))
    # kopf writes its annotation after the handler returns, so after the status may already show.
    obj = objects.wait("DriftMonitor", "iris", lambda o: has_all_conditions(o) and "mlops.dev/last-handled-configuration"
                       in o["metadata"].get("annotations", {}), what="conditions and kopf's last-handled annotation")
    annotations = obj["metadata"]["annotations"]
    assert not [key for key in annotations if key.startswith("kopf.zalando.org")]
    assert obj["metadata"]["finalizers"] == ["mlops.dev/finalizer"]


def test_sigkill_and_restart_processes_nothing_twice(operator, objects, kubeconfig, namespace):
    """Kill the operator with SIGKILL in the middle of a training run and start it again:
    the run is adopted, not started again, and no first-visit work repeats."""
    objects.create(load_example("driftmonitor.yaml"))
    objects.create(load_example("training.yaml"))
    objects.wait("ModelTraining", "iris", lambda o: o.get("status", {}).get("phase") == "Running", what="run started")
    before = objects.wait("DriftMonitor", "iris", has_all_conditions)

    operator.kill()
    restarted = OperatorProcess(kubeconfig, namespace, operator.data_dir)
    restarted.metrics_port, restarted.health_port = operator.metrics_port, operator.health_port
    operator.process = restarted.start().process  # the fixture's teardown stops this one

    trained = objects.wait("ModelTraining", "iris", lambda o: o.get("status", {}).get("phase") == "Succeeded",
                           timeout=240, what="run succeeded after restart")
    runs = list((operator.data_dir / "runs" / namespace).iterdir())
    assert [r.name for r in runs] == [trained["status"]["latestRun"]["name"]]
    assert len(trained["status"]["history"]) == 1
    assert trained["status"]["latestValidatedModel"]["version"] == 1
    started = [e for e in objects.events("iris") if e.reason == "RunStarted"]
    assert len(started) == 1
    # The first visit's event is not posted again: the monitor's Accepted; the training's RunStarted (or an
    # Accepted before it, when its first reconciliation did not start the run yet).
    for kind, most in (("ModelTraining", 1), ("DriftMonitor", 1)):
        accepted = [e for e in objects.events("iris") if e.reason == "Accepted" and e.involved_object.kind == kind]
        assert len(accepted) <= most and all((e.count or 1) == 1 for e in accepted)
    assert [e for e in objects.events("iris") if e.reason == "Accepted" and e.involved_object.kind == "DriftMonitor"]
    after = objects.get("DriftMonitor", "iris")
    assert [c["lastTransitionTime"] for c in after["status"]["conditions"]] == [
        c["lastTransitionTime"] for c in before["status"]["conditions"]
    ]
