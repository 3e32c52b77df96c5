"""ModelDeployment with the local backend, end to end: the operator as a real process on the local
control plane, real MLServer processes behind the router, real V2 inference requests.

Model versions are tiny scikit-learn models published straight into the operator's artifact root
(what a ModelTraining run does, without the pipeline), except where a deployment follows a
ModelTraining: the operator trains that one (backend local) and writes its status. MLServer takes
~5-10 s to start on two cores, so each test starts as few model servers as it can.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from integration.deployment_support import (
    alive,
    condition,
    deployment_body,
    infer,
    metric,
    publish_model,
    recorded_pids,
    split,
)
from kube_support import OperatorProcess, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KIND = "ModelDeployment"
SERVE_TIMEOUT = 90  # a model server start, on a busy two-core machine
TRAIN_TIMEOUT = 400  # a local training run (kfp.local), generous: CI shares 2 cores with the control plane
# A ModelTraining the operator trains with the local backend (kfp.local: seconds of work per run).
TRAINING = {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": "iris"},
            "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}, "backend": "local",
                     "training": {"estimator": "RandomForestClassifier", "parameters": {"n_estimators": 20}}}}


def validated(objects, version: int) -> dict:
    """The ModelTraining's latestValidatedModel, once the operator has recorded ``version`` there."""
    return objects.wait("ModelTraining", "iris",
                        lambda o: (o.get("status") or {}).get("latestValidatedModel", {}).get("version") == version,
                        timeout=30, what=f"validated version {version}")["status"]["latestValidatedModel"]


def artifact_root(operator: OperatorProcess) -> str:
    return (operator.data_dir / "artifacts").resolve().as_uri()


def model_source(info: dict) -> dict:
    return {"uri": info["uri"], "version": str(info["version"]), "name": "iris"}


def ready_with(version: str):
    def predicate(obj):
        status = obj.get("status", {})
        return (condition(obj, "Ready").get("status") == "True" and status.get("stableVersion") == version
                and not status.get("candidateVersion") and status.get("endpoint"))
    return predicate


def test_serve_canary_split_and_promotion(objects, operator, namespace):
    """Serve version 1, canary version 2 at 30 %, measure the split, promote, then delete."""
    root = artifact_root(operator)
    v1, v2 = publish_model(root, namespace), publish_model(root, namespace, c=0.1)
    objects.create(deployment_body("iris", model_source(v1), {
        "strategy": "canary", "steps": [{"weight": 30, "pauseSeconds": 600}],
        "analysis": {"minRequests": 20, "maxErrorRate": 0.05}}, region="us-east-1"))

    started = time.monotonic()
    obj = objects.wait(KIND, "iris", ready_with("1"), timeout=SERVE_TIMEOUT, what="version 1 serving")
    first_ready = time.monotonic() - started
    endpoint = obj["status"]["endpoint"]
    assert endpoint.startswith("http://127.0.0.1:") and endpoint.endswith("/v2/models/iris")
    status, headers, body = infer(endpoint, [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert status == 200, body
    assert body["outputs"][0]["shape"] == [2, 1] and body["outputs"][0]["data"] == [0, 2]
    assert headers["x-mlops-predictor"] == "stable" and headers["x-mlops-model-version"] == "1"
    assert obj["status"]["estimatedMonthlyCost"]["instanceType"] == "t3.large"
    assert obj["status"]["phase"] == "Ready"

    # Version 2 as a canary at 30 %.
    objects.patch(KIND, "iris", {"spec": {"model": model_source(v2)}})
    rollout_started = time.monotonic()
    obj = objects.wait(KIND, "iris", lambda o: (o["status"].get("rollout") or {}).get("stepStarted")
                       and any(t["predictor"] == "canary" and t["weight"] == 30 for t in o["status"]["traffic"]),
                       timeout=SERVE_TIMEOUT, what="canary step at 30%")
    canary_serving = time.monotonic() - rollout_started
    assert obj["status"]["phase"] == "Progressing" and condition(obj, "Progressing")["reason"] == "Canary"
    assert obj["status"]["candidateVersion"] == "2"
    n = 200
    predictors, statuses = split(endpoint, n)
    assert statuses == {200: n}
    observed = predictors["canary"] / n
    # The router splits by smooth weighted round-robin, exact to one request per 100.
    assert abs(observed - 0.30) <= 0.03, predictors
    print(f"\n[figures] split over {n} requests: canary {predictors['canary']} ({observed:.1%}) vs 30% expected, "
          f"stable {predictors['stable']}")

    # Shorten the pause: the analysis sees >= 20 clean canary requests and promotes.
    objects.patch(KIND, "iris", {"spec": {"rollout": {"steps": [{"weight": 30, "pauseSeconds": 1}]}}})
    obj = objects.wait(KIND, "iris", ready_with("2"), timeout=60, what="version 2 promoted")
    rollout_total = time.monotonic() - rollout_started
    assert obj["status"]["lastRollout"]["result"] == "promoted"
    analysis = obj["status"]["lastAnalysis"]
    # The analysis window starts when the canary step did: it saw every canary request sent.
    assert analysis["passed"] and analysis["source"] == "router" and analysis["requests"] == predictors["canary"]
    assert obj["status"]["previousStableVersion"] == "1"
    assert obj["status"]["traffic"] == [{"predictor": "stable", "version": "2", "weight": 100, "shadow": False}]
    status, headers, _ = infer(endpoint)
    assert status == 200 and headers["x-mlops-model-version"] == "2"
    exposed = operator.metrics()
    assert metric(exposed, "mlops_rollouts_total", result="promoted") == 1
    assert metric(exposed, "mlops_deployment_ready", namespace=namespace, name="iris") == 1
    assert metric(exposed, "mlops_deployment_traffic_weight", namespace=namespace, name="iris",
                  predictor="stable") == 100
    assert metric(exposed, "mlops_deployment_traffic_weight", namespace=namespace, name="iris",
                  predictor="canary") == 0
    reasons = [e.reason for e in objects.events("iris")]
    assert {"RolloutStarted", "Promoted"} <= set(reasons)
    # The version-1 server is stopped once version 2 is stable.
    wait_until(lambda: list(recorded_pids(operator.data_dir, namespace, "iris")) == ["model-v2", "router"]
               or sorted(recorded_pids(operator.data_dir, namespace, "iris")) == ["model-v2", "router"],
               timeout=20, what="only version 2 and the router left")
    print(f"[figures] first version ready in {first_ready:.1f}s; canary serving {canary_serving:.1f}s after the "
          f"spec change; promoted {rollout_total:.1f}s after it (incl. {n} requests)")

    # Deletion stops every process (the finalizer waits for it).
    pids = recorded_pids(operator.data_dir, namespace, "iris")
    assert pids and all(alive(pid) for pid in pids.values())
    objects.delete(KIND, "iris")
    wait_until(lambda: objects.get(KIND, "iris") is None, timeout=60, what="ModelDeployment gone")
    assert not any(alive(pid) for pid in pids.values()), pids
    assert not (operator.data_dir / "serving" / namespace / "iris").exists()


def test_an_erroring_candidate_is_rolled_back(objects, operator, namespace):
    """Version 2 was trained on 3 features: every request it gets fails, the analysis aborts."""
    root = artifact_root(operator)
    v1, v2 = publish_model(root, namespace), publish_model(root, namespace, n_features=3)
    objects.create(deployment_body("iris", model_source(v1), {
        "strategy": "canary", "steps": [{"weight": 50, "pauseSeconds": 3}, {"weight": 100, "pauseSeconds": 3}],
        "analysis": {"minRequests": 10, "maxErrorRate": 0.05}}))
    obj = objects.wait(KIND, "iris", ready_with("1"), timeout=SERVE_TIMEOUT, what="version 1 serving")
    endpoint = obj["status"]["endpoint"]

    objects.patch(KIND, "iris", {"spec": {"model": model_source(v2)}})
    objects.wait(KIND, "iris", lambda o: (o["status"].get("rollout") or {}).get("stepStarted"),
                 timeout=SERVE_TIMEOUT, what="canary step started")
    predictors, statuses = split(endpoint, 40)
    # Every canary request fails: 500 from MLServer (or, rarely, 502 when the router finds the
    # connection reset after such an answer).
    failed = sum(count for code, count in statuses.items() if code >= 500)
    assert predictors["canary"] == 20 and failed == 20 and statuses[200] == 20, (predictors, statuses)

    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Degraded").get("reason") == "RolloutAborted",
                       timeout=30, what="rollout aborted")
    degraded = condition(obj, "Degraded")
    assert degraded["status"] == "True" and "maxErrorRate" in degraded["message"]
    assert obj["status"]["stableVersion"] == "1" and not obj["status"].get("candidateVersion")
    assert obj["status"]["rejectedVersions"] == ["2"]
    assert obj["status"]["lastRollout"]["result"] == "aborted"
    assert obj["status"]["lastAnalysis"]["errorRate"] == 1.0
    assert obj["status"]["phase"] == "Degraded" and condition(obj, "Ready")["status"] == "True"
    events = [e for e in objects.events("iris") if e.reason == "RolloutAborted"]
    assert events and "error rate 100.0%" in events[0].message and events[0].type == "Warning"
    # The root-cause hint cites the version that started just before, in status and in the event.
    cause = obj["status"]["lastRollout"]["cause"]
    assert cause.startswith("Likely cause: version 2 changed just before"), cause
    assert "the rollout is on version 2" in cause and cause in events[0].message
    assert metric(operator.metrics(), "mlops_rollouts_total", result="aborted") == 1
    # Traffic is back on version 1, and version 2 is not tried again.
    _, statuses = split(endpoint, 10)
    assert statuses == {200: 10}
    time.sleep(3)
    assert not objects.get(KIND, "iris")["status"].get("candidateVersion")

    # A model URI that does not exist: ModelUnavailable, and version 1 keeps serving.
    objects.patch(KIND, "iris", {"spec": {"model": {"uri": f"{root}/models/{namespace}/iris/99", "version": "99"}}})
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Degraded").get("reason") == "ModelUnavailable",
                       timeout=30, what="ModelUnavailable")
    assert "does not exist" in condition(obj, "Degraded")["message"]
    assert obj["status"]["stableVersion"] == "1" and infer(endpoint)[0] == 200


def test_manual_approval_gate(objects, operator, namespace, kubeconfig):
    """A direct rollout with manual approval waits until `kubectl mlops approve` names the version."""
    from mlops_operator import cli

    root = artifact_root(operator)
    v1, v2 = publish_model(root, namespace), publish_model(root, namespace, c=0.1)
    objects.create(deployment_body("gated", model_source(v1), {"strategy": "direct", "approval": "manual"}))
    obj = objects.wait(KIND, "gated", ready_with("1"), timeout=SERVE_TIMEOUT, what="version 1 serving")
    endpoint = obj["status"]["endpoint"]

    objects.patch(KIND, "gated", {"spec": {"model": model_source(v2)}})
    obj = objects.wait(KIND, "gated", lambda o: condition(o, "AwaitingApproval").get("status") == "True",
                       timeout=30, what="awaiting approval")
    assert obj["status"]["phase"] == "AwaitingApproval" and obj["status"]["candidateVersion"] == "2"
    assert "kubectl mlops approve" in condition(obj, "AwaitingApproval")["message"]
    # It keeps waiting (the candidate's server starts meanwhile, with no traffic).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        obj = objects.get(KIND, "gated")
        assert obj["status"]["stableVersion"] == "1" and condition(obj, "AwaitingApproval")["status"] == "True"
        assert infer(endpoint)[1]["x-mlops-model-version"] == "1"
        time.sleep(0.5)
    assert [(t["predictor"], t["weight"]) for t in obj["status"]["traffic"]][0] == ("stable", 100)

    assert cli.main(["--kubeconfig", kubeconfig, "-n", namespace, "approve", "gated"]) == 0
    approved = time.monotonic()
    obj = objects.wait(KIND, "gated", ready_with("2"), timeout=SERVE_TIMEOUT, what="promoted after approval")
    assert obj["metadata"]["annotations"]["mlops.dev/approve"] == "2"
    assert condition(obj, "AwaitingApproval")["status"] == "False"
    assert infer(endpoint)[1]["x-mlops-model-version"] == "2"
    print(f"\n[figures] promoted {time.monotonic() - approved:.1f}s after approval")


def test_follows_training_and_survives_operator_restarts(objects, operator, namespace, kubeconfig):
    """fromTraining follows status.latestValidatedModel of a ModelTraining the operator trains; a
    restarted operator adopts the servers, and one that finds a deployment gone stops its servers."""
    objects.create(TRAINING)
    objects.create(deployment_body("follower", {"fromTraining": "iris"}, {"strategy": "direct"}))
    obj = objects.wait(KIND, "follower", lambda o: condition(o, "Ready").get("reason") == "WaitingForModel",
                       timeout=30, what="waiting for a validated model")
    assert condition(obj, "Degraded")["status"] == "False"

    obj = objects.wait(KIND, "follower", ready_with("1"), timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT,
                       what="version 1 from training")
    assert obj["status"]["stableUri"] == validated(objects, 1)["uri"]
    # A retrain request: the operator trains version 2, and the deployment follows it.
    objects.patch("ModelTraining", "iris", {"metadata": {"annotations": {
        "mlops.dev/retrain-requested": "2026-11-29T00:00:00Z by a test: version 2"}}})
    obj = objects.wait(KIND, "follower", ready_with("2"), timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT,
                       what="version 2 from training")
    assert obj["status"]["stableUri"] == validated(objects, 2)["uri"]
    endpoint = obj["status"]["endpoint"]
    pids = recorded_pids(operator.data_dir, namespace, "follower")
    assert sorted(pids) == ["model-v2", "router"]

    # A model server that dies is restarted (with backoff), and the conditions say so meanwhile.
    os.kill(pids["model-v2"], signal.SIGKILL)
    wait_until(lambda: any(e.reason == "ServerRestarting" for e in objects.events("follower")), timeout=30,
               what="ServerRestarting event")
    obj = objects.wait(KIND, "follower", lambda o: condition(o, "Ready").get("status") == "True"
                       and condition(o, "Degraded").get("status") == "False", timeout=SERVE_TIMEOUT,
                       what="serving again after the crash")
    pids = recorded_pids(operator.data_dir, namespace, "follower")
    assert infer(obj["status"]["endpoint"])[0] == 200

    # Restart: the running servers are adopted, not restarted.
    operator.kill()
    second = OperatorProcess(kubeconfig, namespace, operator.data_dir).start()
    try:
        wait_until(lambda: "adopted 2 local server process" in second.logs(), timeout=60, what="adoption logged")
        assert recorded_pids(operator.data_dir, namespace, "follower") == pids
        assert all(alive(pid) for pid in pids.values())
        assert infer(endpoint)[0] == 200
        time.sleep(2)  # a few reconciliations of the new operator
        obj = objects.get(KIND, "follower")
        assert condition(obj, "Ready")["status"] == "True" and obj["status"]["endpoint"] == endpoint
    finally:
        second.kill()

    # Gone while no operator runs (finalizer removed by hand): the next operator stops the orphans.
    objects.patch(KIND, "follower", {"metadata": {"finalizers": None}})
    objects.delete(KIND, "follower")
    wait_until(lambda: objects.get(KIND, "follower") is None, timeout=30, what="deleted without the operator")
    assert all(alive(pid) for pid in pids.values())
    third = OperatorProcess(kubeconfig, namespace, operator.data_dir).start()
    try:
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout=30, what="orphans stopped")
        assert not (operator.data_dir / "serving" / namespace / "follower").exists()
    finally:
        third.stop()
