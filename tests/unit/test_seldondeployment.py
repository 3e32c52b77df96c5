"""The SeldonDeployment we build per rollout phase, and how we read its status (reconcile/seldondeployment.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlops_operator.api.annotations import SPEC_HASH_ANNOTATION
from mlops_operator.api.modeldeployment import ModelDeploymentSpec, Rollout
from mlops_operator.reconcile.modeldeployment import (
    AWAITING_APPROVAL,
    CANARY_PHASE,
    SHADOW_PHASE,
    DeploymentState,
    ModelRef,
    PredictorPlan,
    RolloutProgress,
    desired_predictors,
)
from mlops_operator.reconcile.seldondeployment import (
    build_seldon_deployment,
    observe_seldon_deployment,
    pod_failure_reason,
    stable_ready_replicas,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
V1, V2 = ModelRef("1", "s3://bucket/models/iris/1"), ModelRef("2", "s3://bucket/models/iris/2")


def spec(**fields) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"fromTraining": "iris"}, "backend": "seldon", **fields})


def build(plan, **fields):
    return build_seldon_deployment("iris", "ml", "uid-123", spec(**fields), "iris", plan)


def test_one_stable_predictor():
    sdep = build([PredictorPlan("stable", V1, 100)], replicas=2)
    assert sdep["apiVersion"] == "machinelearning.seldon.io/v1" and sdep["kind"] == "SeldonDeployment"
    assert sdep["metadata"]["name"] == "iris" and sdep["metadata"]["namespace"] == "ml"
    assert sdep["metadata"]["ownerReferences"] == [{
        "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelDeployment", "name": "iris", "uid": "uid-123",
        "controller": True, "blockOwnerDeletion": True}]
    assert sdep["spec"]["protocol"] == "v2"
    (predictor,) = sdep["spec"]["predictors"]
    assert predictor == {
        "name": "stable", "traffic": 100, "replicas": 2,
        "graph": {"name": "iris", "type": "MODEL", "implementation": "SKLEARN_SERVER",
                  "modelUri": "s3://bucket/models/iris/1", "children": []},
        "labels": {"mlops.dev/predictor": "stable", "mlops.dev/model-version": "1"},
        "progressDeadlineSeconds": 300,
    }


ROLLOUT = Rollout.model_validate({"strategy": "shadow", "steps": [{"weight": 25}, {"weight": 60}]})


@pytest.mark.parametrize(("phase", "step", "expected"), [
    (SHADOW_PHASE, 0, [("stable", 100, None, "1"), ("shadow", None, True, "2")]),
    (CANARY_PHASE, 0, [("stable", 75, None, "1"), ("canary", 25, None, "2")]),
    (CANARY_PHASE, 1, [("stable", 40, None, "1"), ("canary", 60, None, "2")]),
    (AWAITING_APPROVAL, 1, [("stable", 40, None, "1"), ("canary", 60, None, "2")]),
])
def test_predictors_traffic_and_shadow_per_phase(phase, step, expected):
    state = DeploymentState(stable=V1, candidate=V2, rollout=RolloutProgress(phase, T0, step, T0))
    sdep = build(desired_predictors(ROLLOUT, state))
    got = [(p["name"], p.get("traffic"), p.get("shadow"), p["graph"]["modelUri"].rsplit("/", 1)[1])
           for p in sdep["spec"]["predictors"]]
    assert got == expected
    served = [p for p in sdep["spec"]["predictors"] if not p.get("shadow")]
    assert sum(p["traffic"] for p in served) == 100


def test_resources_and_autoscaling_go_to_the_model_container():
    sdep = build([PredictorPlan("stable", V1, 100)],
                 resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
                 autoscaling={"minReplicas": 2, "maxReplicas": 5, "targetCpuUtilizationPercentage": 60})
    (predictor,) = sdep["spec"]["predictors"]
    assert "replicas" not in predictor
    (component,) = predictor["componentSpecs"]
    assert component["spec"]["containers"] == [{"name": "iris", "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}]
    assert component["hpaSpec"] == {"minReplicas": 2, "maxReplicas": 5, "metrics": [
        {"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 60}}]}


@pytest.mark.parametrize(("runtime", "implementation"), [
    ("sklearn", "SKLEARN_SERVER"), ("xgboost", "XGBOOST_SERVER"), ("mlflow", "MLFLOW_SERVER"), ("lightgbm", None)])
def test_runtimes(runtime, implementation):
    (predictor,) = build([PredictorPlan("stable", V1, 100)], runtime=runtime)["spec"]["predictors"]
    assert predictor["graph"].get("implementation") == implementation
    if runtime == "lightgbm":
        container = predictor["componentSpecs"][0]["spec"]["containers"][0]
        assert container["image"].startswith("seldonio/mlserver:") and container["name"] == "iris"
        # Only the implementation: Seldon 1.17.1 drops the whole env list of a container that sets
        # MLSERVER_MODEL_URI itself (and adds the name, ports and URI on its own).
        assert container["env"] == [{"name": "MLSERVER_MODEL_IMPLEMENTATION", "value": "mlserver_lightgbm.LightGBMModel"}]


def test_progress_deadline_per_predictor():
    plan = [PredictorPlan("stable", V1, 90), PredictorPlan("canary", V2, 10)]
    assert [p["progressDeadlineSeconds"] for p in build(plan)["spec"]["predictors"]] == [300, 300]
    sdep = build(plan, progressDeadlineSeconds=120)
    assert [p["progressDeadlineSeconds"] for p in sdep["spec"]["predictors"]] == [120, 120]
    with pytest.raises(ValueError):
        spec(progressDeadlineSeconds=5)


def test_storage_access():
    (predictor,) = build([PredictorPlan("stable", V1, 100)], serviceAccountName="model-reader",
                         storageSecretName="s3-creds")["spec"]["predictors"]
    assert predictor["graph"]["serviceAccountName"] == "model-reader"
    assert predictor["graph"]["envSecretRefName"] == "s3-creds"


def test_request_logger_per_predictor():
    plan = [PredictorPlan("stable", V1, 90), PredictorPlan("canary", V2, 10)]
    sdep = build_seldon_deployment("iris", "ml", "uid", spec(), "iris", plan,
                                   {"stable": "http://sink/v1/log/ml/iris/stable?version=1"})
    stable, canary = sdep["spec"]["predictors"]
    assert stable["graph"]["logger"] == {"url": "http://sink/v1/log/ml/iris/stable?version=1", "mode": "all"}
    assert "logger" not in canary["graph"]


def test_the_spec_hash_follows_the_spec():
    one = build([PredictorPlan("stable", V1, 100)])
    same = build([PredictorPlan("stable", V1, 100)])
    other = build([PredictorPlan("stable", V1, 90), PredictorPlan("canary", V2, 10)])
    hashes = [s["metadata"]["annotations"][SPEC_HASH_ANNOTATION] for s in (one, same, other)]
    assert hashes[0] == hashes[1] != hashes[2]


def live(state=None, deployments=None, address=None):
    status = {}
    if state:
        status["state"] = state
    if deployments is not None:
        status["deploymentStatus"] = deployments
    if address:
        status["address"] = {"url": address}
    return {"metadata": {"name": "iris"}, "status": status}


@pytest.mark.parametrize(("obj", "ready"), [
    (live(), {"stable": False, "canary": False}),
    (live("Creating"), {"stable": False, "canary": False}),
    (live("Available"), {"stable": True, "canary": True}),
    (live("Failed"), {"stable": False, "canary": False}),
    (live("Creating", {"iris-stable-0-iris": {"availableReplicas": 2}, "iris-canary-0-iris": {"replicas": 1}}),
     {"stable": True, "canary": False}),
    (live("Available", {"iris-stable-0-iris": {"availableReplicas": 1}, "iris-canary-0-iris": {"availableReplicas": 1}}),
     {"stable": True, "canary": True}),
])
def test_reading_the_status(obj, ready):
    observed = observe_seldon_deployment(obj, ["stable", "canary"])
    assert dict(observed.ready) == ready


def test_failed_by_the_progress_deadline_or_by_seldons_own_reconcile_error():
    def failed(description):
        obj = live("Failed", {"iris-stable-0-iris": {"availableReplicas": 1}, "iris-canary-0-iris": {"replicas": 1}})
        obj["status"]["description"] = description
        return observe_seldon_deployment(obj, ["stable", "canary"])

    deadline = failed("Deployment is no longer progressing and not available.")
    assert deadline.reconcile_error is None and dict(deadline.ready) == {"stable": False, "canary": False}
    erring = failed('Service "iris-canary-iris" not found')
    assert erring.reconcile_error == 'Service "iris-canary-iris" not found'
    assert dict(erring.ready) == {"stable": True, "canary": False}  # as the Deployments say
    assert failed("").reconcile_error is None


def test_ready_replicas_and_endpoint():
    observed = observe_seldon_deployment(
        live("Available", {"iris-stable-0-iris": {"availableReplicas": 3}}, "http://iris.ml:8000"), ["stable"])
    assert stable_ready_replicas(observed, 3) == 3 and observed.endpoint == "http://iris.ml:8000"
    # Seldon's address is the model's infer URL: the endpoint is its base (endpoint + "/infer" works).
    seldon = observe_seldon_deployment(
        live("Available", None, "http://iris-stable.ml.svc.cluster.local:8000/v2/models/iris/infer"), ["stable"])
    assert seldon.endpoint == "http://iris-stable.ml.svc.cluster.local:8000/v2/models/iris"
    without_detail = observe_seldon_deployment(live("Available"), ["stable"])
    assert stable_ready_replicas(without_detail, 2) == 2 and without_detail.endpoint is None
    assert stable_ready_replicas(observe_seldon_deployment(live("Creating"), ["stable"]), 2) == 0


def _pod(name, init=None, containers=None):
    return {"metadata": {"name": name, "labels": {"seldon-deployment-id": "iris"}},
            "status": {"initContainerStatuses": init or [], "containerStatuses": containers or []}}


def test_the_failure_reason_is_read_from_the_failing_container():
    crashing = {"name": "iris", "ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                                      "message": "back-off 40s restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                             "message": "ValueError: model.joblib is not a model"}}}
    healthy = {"name": "seldon-container-engine", "ready": True, "state": {"running": {}}}
    starting = {"name": "iris", "ready": False, "state": {"running": {}}}
    reason = pod_failure_reason([_pod("iris-stable-0-iris-abc", containers=[starting, healthy]),
                                 _pod("iris-canary-0-iris-def", containers=[crashing, healthy])],
                                "iris", ["stable", "canary"])
    assert reason == ("predictor canary, Pod iris-canary-0-iris-def, container iris: CrashLoopBackOff; "
                      "last exit: Error, exit code 1: ValueError: model.joblib is not a model")
    init_failed = {"name": "iris-model-initializer", "ready": False,
                   "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "directory not found"}}}
    assert pod_failure_reason([_pod("iris-stable-0-iris-x", init=[init_failed])], "iris", ["stable"]) == (
        "predictor stable, Pod iris-stable-0-iris-x, init container iris-model-initializer: "
        "last exit: Error, exit code 1: directory not found")
    never = {"name": "iris", "ready": False, "state": {"waiting": {"reason": "ErrImageNeverPull",
                                                                   "message": "image x is not present"}}}
    assert pod_failure_reason([_pod("iris-stable-0-iris-y", containers=[never])], "iris", ["stable"]) == (
        "predictor stable, Pod iris-stable-0-iris-y, container iris: ErrImageNeverPull; image x is not present")
    # MLServer 1.7.1 exits 0 when its model cannot load: a model container that exited is a failure.
    completed = {"name": "iris", "ready": False, "restartCount": 1,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert pod_failure_reason([_pod("iris-canary-0-iris-c", containers=[completed, healthy])], "iris",
                              ["stable", "canary"]) == (
        "predictor canary, Pod iris-canary-0-iris-c, container iris: last exit: Completed, exit code 0")
    succeeded_init = {"name": "iris-model-initializer", "ready": True,
                      "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    # Nothing failed yet: a model server still starting when the progress deadline passes (seen on a
    # loaded node) is named as running but not ready, a candidate's before the stable's.
    assert pod_failure_reason([_pod("iris-stable-0-iris-i", init=[succeeded_init], containers=[starting])], "iris",
                              ["stable"]) == "predictor stable, Pod iris-stable-0-iris-i, container iris: running but not ready (no exit yet)"
    loading = {"name": "iris", "ready": False, "state": {"running": {"startedAt": "2026-11-29T20:34:43Z"}}}
    assert pod_failure_reason([_pod("iris-stable-0-iris-s", containers=[starting, healthy]),
                               _pod("iris-canary-0-iris-l", containers=[loading, healthy])], "iris",
                              ["stable", "canary"]) == ("predictor canary, Pod iris-canary-0-iris-l, container iris: "
                                                        "running since 2026-11-29T20:34:43Z but not ready (no exit yet)")
    # Pods still being created, or running and ready, are no failure.
    creating = {"name": "iris", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_failure_reason([_pod("iris-stable-0-iris-z", containers=[creating, healthy])], "iris",
                              ["stable"]) is None
    assert pod_failure_reason([], "iris", ["stable"]) is None


def _sdep(resource_version: str, spec_hash: str) -> dict:
    return {"metadata": {"name": "iris", "namespace": "team", "resourceVersion": resource_version,
                         "annotations": {SPEC_HASH_ANNOTATION: spec_hash}},
            "spec": {"predictors": [{"name": "stable"}]}}


def test_a_watch_copy_older_than_the_operators_own_write_is_not_trusted():
    """The watch has not delivered our last patch yet: its copy still carries the spec hash of the write
    before. When the desired spec returns to that older spec, trusting the copy would skip a patch the
    live object needs (it carries the newer spec)."""
    from mlops_operator.backends.serving_seldon import newest_copy

    before, written = _sdep("41", "hash-a"), _sdep("57", "hash-b")
    assert newest_copy(before, written) is written
    # The watch caught up (our write, or a later one such as Seldon's status): its copy is the newest.
    caught_up, later = _sdep("57", "hash-b"), _sdep("60", "hash-b")
    assert newest_copy(caught_up, written) is caught_up
    assert newest_copy(later, written) is later
    # Only one of them known, or versions that are not integers (then only the same version is trusted).
    assert newest_copy(None, written) is written and newest_copy(before, None) is before
    assert newest_copy(None, None) is None
    assert newest_copy(_sdep("x", "hash-a"), _sdep("y", "hash-b"))["metadata"]["resourceVersion"] == "y"
    assert newest_copy(_sdep("y", "hash-b"), _sdep("y", "hash-b"))["metadata"]["resourceVersion"] == "y"
