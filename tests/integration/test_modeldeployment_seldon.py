"""ModelDeployment with backend seldon: contract tests against Seldon Core's real (patched) CRD.

No Seldon controller runs on the local control plane, and no test here writes a SeldonDeployment
status (that is the controller's): what these tests check is what we write and that the API server
accepts it against Seldon's schema, and that the operator waits for Seldon instead of pretending.
Everything that needs Seldon's status (Ready, the endpoint, shadow/canary steps, promotion,
rollback on a failing model) runs with the real controller on the real node:
tests/e2e/test_seldon.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from integration.conftest_seldon import (  # noqa: F401  (fixtures)
    install_seldon_crd,
    seldon_crd,
    seldon_crd_manifest,
    uninstall_seldon_crd,
)
from integration.deployment_support import condition, deployment_body, publish_model
from kube_support import OperatorProcess, wait_until
from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.reconcile.modeldeployment import ModelRef, PredictorPlan
from mlops_operator.reconcile.seldondeployment import build_seldon_deployment

pytestmark = [pytest.mark.cluster]

KIND = "ModelDeployment"
GROUP, VERSION, PLURAL = "machinelearning.seldon.io", "v1", "seldondeployments"


class SeldonDeployments:
    """Read the SeldonDeployments the operator wrote."""

    def __init__(self, kube_api, namespace: str):
        from kubernetes import client

        self.api = client.CustomObjectsApi(kube_api)
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def wait_predictors(self, name: str, expected: list[tuple], timeout: float = 30) -> dict[str, Any]:
        """Wait until the predictors are ``[(name, traffic, shadow, model version), ...]``."""
        def probe():
            sdep = self.get(name)
            return sdep if sdep and predictors(sdep) == expected else None
        try:
            return wait_until(probe, timeout=timeout, what=f"predictors {expected}")
        except AssertionError:
            sdep = self.get(name)
            raise AssertionError(f"predictors are {predictors(sdep) if sdep else None}, expected {expected}") from None


def predictors(sdep: dict[str, Any]) -> list[tuple]:
    return [(p["name"], p.get("traffic"), p.get("shadow"), p.get("labels", {}).get("mlops.dev/model-version"))
            for p in sdep["spec"]["predictors"]]


def model_source(info: dict) -> dict:
    return {"uri": info["uri"], "version": str(info["version"]), "name": "iris"}


@pytest.fixture
def operator(kubeconfig, namespace, crds, tmp_path):
    """The operator, with its Seldon request-logger sink on a free port (tests may run side by side), retrying
    an unreachable backend after 2 s (not 30: test_backend_unavailable_until_seldon_is_installed waits on it)."""
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator",
                              env={"MLOPS_SELDON_LOGGER_PORT": "0", "MLOPS_BACKEND_RETRY_SECONDS": "2"}).start()
    yield process
    process.stop()


@pytest.fixture
def seldon(kube_api, namespace) -> SeldonDeployments:
    return SeldonDeployments(kube_api, namespace)


def test_backend_unavailable_until_seldon_is_installed(objects, operator, kube_api, seldon_crd_manifest, seldon):
    """Without Seldon's CRD the deployment says BackendUnavailable and retries; once installed it proceeds."""
    uninstall_seldon_crd(kube_api)
    try:
        v1 = publish_model((operator.data_dir / "artifacts").resolve().as_uri(), objects.namespace)
        objects.create(deployment_body("iris", model_source(v1), {"strategy": "direct"}, backend="seldon"))
        obj = objects.wait(KIND, "iris", lambda o: condition(o, "Degraded").get("reason") == "BackendUnavailable",
                           timeout=30, what="BackendUnavailable")
        assert condition(obj, "Ready") == {**condition(obj, "Ready"), "status": "False", "reason": "BackendUnavailable"}
        assert "is Seldon Core (its CRD) installed" in condition(obj, "Degraded")["message"]
        assert any(e.reason == "BackendUnavailable" and e.type == "Warning" for e in objects.events("iris"))
    finally:
        install_seldon_crd(kube_api, seldon_crd_manifest)
    seldon.wait_predictors("iris", [("stable", 100, None, "1")], timeout=60)
    # No controller reports on it: the deployment waits for Seldon and does not claim readiness.
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("reason") == "Creating", timeout=30,
                       what="waiting for Seldon")
    assert condition(obj, "Ready")["status"] == "False" and "waiting for Seldon Core" in condition(obj, "Ready")["message"]
    assert condition(obj, "Degraded")["status"] == "False" and not obj["status"].get("endpoint")


def test_the_first_version_is_written_as_seldon_expects(objects, operator, seldon_crd, seldon, namespace,
                                                       kubeconfig_env):
    """One stable predictor owned by the ModelDeployment, accepted by Seldon's schema as we wrote it."""
    root = (operator.data_dir / "artifacts").resolve().as_uri()
    v1 = publish_model(root, objects.namespace)
    objects.create(deployment_body(
        "iris", model_source(v1), {"strategy": "canary", "steps": [{"weight": 20, "pauseSeconds": 1}]},
        backend="seldon", autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCpuUtilizationPercentage": 75},
        resources={"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        region="us-east-1", storageSecretName="s3-creds", progressDeadlineSeconds=120))
    sdep = seldon.wait_predictors("iris", [("stable", 100, None, "1")])
    md = objects.get(KIND, "iris")
    owner = sdep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("ModelDeployment", "iris",
                                                                                md["metadata"]["uid"], True)
    assert sdep["spec"]["protocol"] == "v2"
    stable = sdep["spec"]["predictors"][0]
    logger = stable["graph"].pop("logger")
    assert stable["graph"] == {"name": "iris", "type": "MODEL", "implementation": "SKLEARN_SERVER",
                               "modelUri": v1["uri"], "children": [], "envSecretRefName": "s3-creds"}
    assert stable["progressDeadlineSeconds"] == 120
    # Requests and responses go to the operator's request-logger sink, which writes the inference log.
    # The URL carries the namespace's sink token as user info (the executor's Go client sends it as Basic auth).
    assert logger["mode"] == "all" and logger["url"].startswith(f"http://{namespace}:")
    assert logger["url"].endswith(f"/v1/log/{namespace}/iris/stable?version=1")
    assert stable["componentSpecs"] == [{
        "spec": {"containers": [{"name": "iris", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                                "limits": {"memory": "512Mi"}}}]},
        "hpaSpec": {"minReplicas": 1, "maxReplicas": 3, "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 75}}]}}]
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("reason") == "Creating", timeout=30,
                       what="waiting for Seldon")
    assert obj["status"]["seldonDeployment"] == "iris"
    assert obj["status"]["estimatedMonthlyCost"]["instanceType"] == "t3.large"
    # No mesh (MLOPS_SELDON_ROUTING=none, the default): a Service named like the ModelDeployment over
    # every predictor's Pods, owned by it, is written once Seldon has taken the SeldonDeployment on (its
    # first status), before any version is ready (tests/e2e/test_seldon.py calls it through the real Seldon
    # and measures its split on a real node). No controller reports here, so there is none: no ClusterIP is
    # held by a deployment Seldon never took on.
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from mlops_operator.backends import kube, serving_seldon
    from mlops_operator.reconcile.seldondeployment import build_routing_service

    core = client.CoreV1Api(seldon.api.api_client)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_service("iris", namespace)
    assert missing.value.status == 404 and not obj["status"].get("endpoint")
    # What the operator writes then, as the API server admits it (written here in-process).
    kube.load_config()
    serving_seldon._apply_service(build_routing_service("iris", namespace, md["metadata"]["uid"]))
    service = core.read_namespaced_service("iris", namespace)
    assert service.spec.selector == {"seldon-deployment-id": "iris"} and service.spec.type == "ClusterIP"
    assert [(o.kind, o.uid) for o in service.metadata.owner_references] == [("ModelDeployment", md["metadata"]["uid"])]

    # Deleting the ModelDeployment lets the garbage collector delete the SeldonDeployment.
    objects.delete(KIND, "iris")
    wait_until(lambda: seldon.get("iris") is None, timeout=60, what="SeldonDeployment garbage-collected")


@pytest.mark.parametrize("runtime", ["sklearn", "lightgbm"])
def test_every_rollout_layout_is_admitted_by_seldons_schema(seldon_crd, kube_api, namespace, runtime):
    """Each layout a rollout goes through (stable; stable + shadow; stable + canary), as the builder
    writes it, is accepted by the API server against Seldon's CRD (server-side dry run: nothing stored)."""
    from kubernetes import client

    api = client.CustomObjectsApi(kube_api)
    spec = ModelDeploymentSpec.model_validate({
        "model": {"fromTraining": "iris"}, "backend": "seldon", "runtime": runtime,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetCpuUtilizationPercentage": 80},
        "resources": {"requests": {"cpu": "100m"}}})
    v1, v2 = ModelRef("1", "s3://models/iris/1"), ModelRef("2", "s3://models/iris/2")
    layouts = {
        "stable": [PredictorPlan("stable", v1, 100)],
        "shadow": [PredictorPlan("stable", v1, 100), PredictorPlan("shadow", v2, 0, shadow=True)],
        "canary": [PredictorPlan("stable", v1, 80), PredictorPlan("canary", v2, 20)],
    }
    for phase, plan in layouts.items():
        manifest = build_seldon_deployment("iris", namespace, "0b8f3c1e-0000-4000-8000-000000000001", spec, "iris",
                                           plan, {p.name: f"http://10.244.0.1:9123/v1/log/{namespace}/iris/{p.name}"
                                                  for p in plan})
        admitted = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest, dry_run="All")
        # Nothing of ours was pruned by the schema.
        assert admitted["spec"] == manifest["spec"], phase


def test_shadow_without_a_mesh_is_refused_before_any_work(objects, operator, seldon_crd, seldon):
    """MLOPS_SELDON_ROUTING=none (the default): Seldon would ignore the shadow, so it is refused with
    a condition and an event naming the setting, and no SeldonDeployment is written."""
    v1 = publish_model((operator.data_dir / "artifacts").resolve().as_uri(), objects.namespace)
    objects.create(deployment_body("iris", model_source(v1), {"strategy": "shadow"}, backend="seldon"))
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("reason") == "InvalidSpec", timeout=30,
                       what="shadow refused")
    message = condition(obj, "Ready")["message"]
    assert "shadow needs a mesh" in message and "MLOPS_SELDON_ROUTING=none" in message, message
    assert obj["status"]["phase"] == "Invalid"
    wait_until(lambda: any(e.reason == "InvalidSpec" and "MLOPS_SELDON_ROUTING" in e.message
                           for e in objects.events("iris")), timeout=30, what="the InvalidSpec event")
    assert seldon.get("iris") is None


def test_shadow_with_istio_routing_is_written(objects, kubeconfig, namespace, crds, tmp_path, seldon_crd, seldon):
    """With MLOPS_SELDON_ROUTING=istio the shadow strategy is Seldon's (VirtualService mirror)."""
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator",
                              env={"MLOPS_SELDON_LOGGER_PORT": "0", "MLOPS_SELDON_ROUTING": "istio"}).start()
    try:
        v1 = publish_model((process.data_dir / "artifacts").resolve().as_uri(), namespace)
        objects.create(deployment_body("iris", model_source(v1), {"strategy": "shadow"}, backend="seldon"))
        seldon.wait_predictors("iris", [("stable", 100, None, "1")], timeout=60)
        assert condition(objects.get(KIND, "iris"), "Ready").get("reason") != "InvalidSpec"
    finally:
        process.stop()


def reconciliations(operator: OperatorProcess) -> float:
    text = operator.metrics()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('mlops_reconcile_total{kind="ModelDeployment"'))


def test_an_idle_deployment_waits_for_its_training_and_its_child_instead_of_polling(objects, operator, seldon_crd,
                                                                                   seldon):
    """A deployment that follows a ModelTraining is woken by the training's new model, costs no
    reconciliation while it waits for Seldon (whose status change would wake it), and a deleted
    SeldonDeployment wakes it to write it again."""
    objects.create(deployment_body("iris", {"fromTraining": "iris-train"}, {"strategy": "direct"}, backend="seldon"))
    objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("reason") == "WaitingForModel", timeout=30,
                 what="waiting for its ModelTraining")
    objects.create({"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": "iris-train"},
                    "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"},
                             "training": {"estimator": "LogisticRegression", "parameters": {"max_iter": 500}}}})
    objects.wait("ModelTraining", "iris-train", lambda o: ((o.get("status") or {}).get("latestValidatedModel") or {})
                 .get("version") == 1, timeout=300, what="version 1 trained")
    first = seldon.wait_predictors("iris", [("stable", 100, None, "1")], timeout=60)
    objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("reason") == "Creating", timeout=30,
                 what="waiting for Seldon")

    # Idle: nothing is in progress, so the operator (polling every second here) reconciles it no more.
    # What is asserted is an absence, so it is watched for a bounded window of several poll intervals
    # (from the moment the reconciliation in flight, if any, has ended).
    before = reconciliations(operator)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        now = reconciliations(operator)
        if now != before:  # the last one ends: the window starts again, once
            assert deadline - time.monotonic() > 6, "an idle deployment is reconciled again and again"
            before, deadline = now, time.monotonic() + 8
        time.sleep(0.5)

    # Its child deleted by hand: the watch event wakes it, and it writes the child again.
    seldon.api.delete_namespaced_custom_object(GROUP, VERSION, seldon.namespace, PLURAL, "iris")
    again = wait_until(lambda: (s := seldon.get("iris")) and s["metadata"]["uid"] != first["metadata"]["uid"] and s,
                       timeout=30, what="the SeldonDeployment written again")
    assert predictors(again) == [("stable", 100, None, "1")]
    assert reconciliations(operator) > before


def test_deleting_needs_no_finalizer_and_an_older_one_is_released(objects, operator, seldon_crd, seldon, kube_api,
                                                                   kubeconfig_env):
    """Backend seldon leaves nothing the garbage collector does not remove (the SeldonDeployment and the
    routing Service are owned), so kopf holds no finalizer on it: the object goes at once, its children
    after it. One that an older operator version gave the finalizer is released, not left undeletable."""
    from kubernetes import client

    from mlops_operator.backends import kube, serving_seldon
    from mlops_operator.reconcile.seldondeployment import build_routing_service

    kube.load_config()
    root = (operator.data_dir / "artifacts").resolve().as_uri()
    v1 = publish_model(root, objects.namespace)
    for name in ("fresh", "older"):
        objects.create(deployment_body(name, model_source(v1), {"strategy": "direct"}, backend="seldon"))
        seldon.wait_predictors(name, [("stable", 100, None, "1")])
        md = objects.wait(KIND, name, lambda o: condition(o, "Ready").get("reason") == "Creating", timeout=30,
                          what="waiting for Seldon")
        # Its routing Service, as the operator writes it once Seldon reports (no controller here).
        serving_seldon._apply_service(build_routing_service(name, objects.namespace, md["metadata"]["uid"]))
    assert not objects.get(KIND, "fresh")["metadata"].get("finalizers")
    # What an older version left: its finalizer. The next event of the object releases it.
    objects.patch(KIND, "older", {"metadata": {"finalizers": ["mlops.dev/finalizer"]}})
    objects.wait(KIND, "older", lambda o: not o["metadata"].get("finalizers"), timeout=30,
                 what="the older finalizer released")
    core = client.CoreV1Api(kube_api)
    for name in ("fresh", "older"):
        objects.delete(KIND, name)
        wait_until(lambda: objects.get(KIND, name) is None, timeout=30, what=f"{name} gone")
        wait_until(lambda: seldon.get(name) is None and not [
            s for s in core.list_namespaced_service(objects.namespace).items if s.metadata.name == name],
            timeout=60, what=f"{name}'s SeldonDeployment and routing Service removed by the garbage collector")
    assert operator.metric("mlops_reconcile_total", kind=KIND, result="error") == 0


def test_a_deletion_while_the_finalizer_is_held_is_not_stuck(objects, operator, seldon_crd, seldon):
    """A deployment deleted while an older finalizer is still on it: kopf releases it (no handler needs
    it), the object is not left Terminating."""
    root = (operator.data_dir / "artifacts").resolve().as_uri()
    v1 = publish_model(root, objects.namespace)
    body = deployment_body("held", model_source(v1), {"strategy": "direct"}, backend="seldon")
    body["metadata"]["finalizers"] = ["mlops.dev/finalizer"]
    objects.create(body)
    objects.delete(KIND, "held")
    wait_until(lambda: objects.get(KIND, "held") is None, timeout=30, what="held gone")
