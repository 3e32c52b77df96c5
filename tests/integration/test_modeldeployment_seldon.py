"""ModelDeployment with backend seldon, against Seldon Core's own SeldonDeployment CRD.

No Seldon controller runs on the local control plane (nor any pod): the test plays Seldon's part
by writing the SeldonDeployment's status itself through the status subresource (``state``
Available / Creating / Failed and per-predictor ``deploymentStatus``). At each rollout step it
reads the SeldonDeployment the operator wrote, which the API server accepted against Seldon's
real schema, and checks its predictors, traffic and shadow, and that nothing was pruned.

Model URIs are ``file://`` here (the operator's local artifact root), which a real Seldon cannot
load; on EKS the artifact root is ``s3://``.
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

pytestmark = [pytest.mark.cluster]

KIND = "ModelDeployment"
GROUP, VERSION, PLURAL = "machinelearning.seldon.io", "v1", "seldondeployments"


class SeldonDeployments:
    """Read SeldonDeployments and play the Seldon controller's part on their status."""

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

    def set_status(self, name: str, state: str, available: dict[str, int], description: str = "") -> None:
        """Write the status Seldon would: state and each predictor's Deployment (<sdep>-<predictor>-0-<model>)."""
        status = {"state": state, "description": description, "replicas": sum(available.values()),
                  "deploymentStatus": {f"{name}-{predictor}-0-iris": {
                      "name": f"{name}-{predictor}-0-iris", "replicas": max(replicas, 1),
                      "availableReplicas": replicas, "status": state}
                      for predictor, replicas in available.items()},
                  "address": {"url": f"http://{name}-default.{self.namespace}.svc.cluster.local:8000/v2/models/iris"}}
        self.api.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, name,
                                                       {"status": status})


def predictors(sdep: dict[str, Any]) -> list[tuple]:
    return [(p["name"], p.get("traffic"), p.get("shadow"), p.get("labels", {}).get("mlops.dev/model-version"))
            for p in sdep["spec"]["predictors"]]


def model_source(info: dict) -> dict:
    return {"uri": info["uri"], "version": str(info["version"]), "name": "iris"}


@pytest.fixture
def operator(kubeconfig, namespace, crds, tmp_path):
    """The operator, with its Seldon request-logger sink on a free port (tests may run side by side)."""
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator",
                              env={"MLOPS_SELDON_LOGGER_PORT": "0"}).start()
    yield process
    process.stop()


@pytest.fixture
def seldon(kube_api, namespace) -> SeldonDeployments:
    return SeldonDeployments(kube_api, namespace)


def test_backend_unavailable_until_seldon_is_installed(objects, operator, kube_api, seldon_crd_manifest, seldon):
    """Without Seldon's CRD the deployment says BackendUnavailable and retries; once installed it proceeds."""
    uninstall_seldon_crd(kube_api)
    try:
        v1 = publish_model((operator.data_dir / "artifacts").resolve().as_uri())
        objects.create(deployment_body("iris", model_source(v1), {"strategy": "direct"}, backend="seldon"))
        obj = objects.wait(KIND, "iris", lambda o: condition(o, "Degraded").get("reason") == "BackendUnavailable",
                           timeout=30, what="BackendUnavailable")
        assert condition(obj, "Ready") == {**condition(obj, "Ready"), "status": "False", "reason": "BackendUnavailable"}
        assert "is Seldon Core (its CRD) installed" in condition(obj, "Degraded")["message"]
        assert any(e.reason == "BackendUnavailable" and e.type == "Warning" for e in objects.events("iris"))
    finally:
        install_seldon_crd(kube_api, seldon_crd_manifest)
    seldon.wait_predictors("iris", [("stable", 100, None, "1")], timeout=60)
    seldon.set_status("iris", "Available", {"stable": 1})
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("status") == "True", timeout=30,
                       what="ready once Seldon is there")
    assert condition(obj, "Degraded")["status"] == "False"


def test_rollout_steps_are_written_as_seldon_predictors(objects, operator, seldon_crd, seldon, namespace):
    """Shadow, then canary 20 % and 60 %, manual approval, promotion; then a failing candidate."""
    root = (operator.data_dir / "artifacts").resolve().as_uri()
    v1, v2, v3 = publish_model(root), publish_model(root, c=0.1), publish_model(root, c=0.01)
    objects.create(deployment_body("iris", model_source(v1), {
        "strategy": "shadow", "shadow": {"durationSeconds": 1},
        "steps": [{"weight": 20, "pauseSeconds": 1}, {"weight": 60, "pauseSeconds": 1}],
        "approval": "manual"},
        backend="seldon", autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCpuUtilizationPercentage": 75},
        resources={"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        region="us-east-1"))
    timings: dict[str, float] = {}

    # 1. The first version: one stable predictor, owned by the ModelDeployment, nothing pruned.
    sdep = seldon.wait_predictors("iris", [("stable", 100, None, "1")])
    md = objects.get(KIND, "iris")
    owner = sdep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("ModelDeployment", "iris",
                                                                                md["metadata"]["uid"], True)
    assert sdep["spec"]["protocol"] == "v2"
    stable = sdep["spec"]["predictors"][0]
    logger = stable["graph"].pop("logger")
    assert stable["graph"] == {"name": "iris", "type": "MODEL", "implementation": "SKLEARN_SERVER",
                               "modelUri": v1["uri"], "children": []}
    # Requests and responses go to the operator's request-logger sink, which writes the inference log.
    assert logger["mode"] == "all" and logger["url"].startswith("http://127.0.0.1:")
    assert logger["url"].endswith(f"/v1/log/{namespace}/iris/stable?version=1")
    assert stable["componentSpecs"] == [{
        "spec": {"containers": [{"name": "iris", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                                "limits": {"memory": "512Mi"}}}]},
        "hpaSpec": {"minReplicas": 1, "maxReplicas": 3, "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 75}}]}}]
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("reason") == "Creating", timeout=30,
                       what="waiting for Seldon")
    assert obj["status"]["seldonDeployment"] == "iris"
    seldon.set_status("iris", "Available", {"stable": 1})
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("status") == "True", timeout=30,
                       what="ready")
    assert obj["status"]["readyReplicas"] == 1 and obj["status"]["endpoint"].endswith("/v2/models/iris")
    assert obj["status"]["estimatedMonthlyCost"]["instanceType"] == "t3.large"

    # 2. Version 2: a shadow predictor first.
    objects.patch(KIND, "iris", {"spec": {"model": model_source(v2)}})
    started = time.monotonic()
    seldon.wait_predictors("iris", [("stable", 100, None, "1"), ("shadow", None, True, "2")])
    obj = objects.get(KIND, "iris")
    assert obj["status"]["rollout"]["phase"] == "Shadow" and "stepStarted" not in obj["status"]["rollout"]
    seldon.set_status("iris", "Creating", {"stable": 1, "shadow": 0})
    time.sleep(2)  # the shadow is not up: its clock does not start
    obj = objects.get(KIND, "iris")
    assert "stepStarted" not in obj["status"]["rollout"] and condition(obj, "Ready")["status"] == "True"
    seldon.set_status("iris", "Available", {"stable": 1, "shadow": 1})

    # 3. Canary 20 %, then 60 % (no Prometheus here: each step passes on its pause).
    seldon.wait_predictors("iris", [("stable", 80, None, "1"), ("canary", 20, None, "2")])
    timings["shadow passed"] = time.monotonic() - started
    obj = objects.get(KIND, "iris")
    assert obj["status"]["lastAnalysis"]["source"] == "none" and obj["status"]["lastAnalysis"]["passed"]
    seldon.set_status("iris", "Available", {"stable": 1, "canary": 1})
    seldon.wait_predictors("iris", [("stable", 40, None, "1"), ("canary", 60, None, "2")])
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "AwaitingApproval").get("status") == "True",
                       timeout=30, what="awaiting approval")
    timings["awaiting approval"] = time.monotonic() - started
    assert [(t["predictor"], t["weight"]) for t in obj["status"]["traffic"]] == [("stable", 40), ("canary", 60)]
    assert seldon.get("iris")["spec"]["predictors"][1]["graph"]["modelUri"] == v2["uri"]

    # 4. Approval: version 2 becomes the stable predictor.
    objects.patch(KIND, "iris", {"metadata": {"annotations": {"mlops.dev/approve": "2"}}})
    sdep = seldon.wait_predictors("iris", [("stable", 100, None, "2")])
    assert sdep["spec"]["predictors"][0]["graph"]["modelUri"] == v2["uri"]
    obj = objects.wait(KIND, "iris", lambda o: o["status"].get("stableVersion") == "2", timeout=30, what="promoted")
    timings["promoted"] = time.monotonic() - started
    assert obj["status"]["lastRollout"]["result"] == "promoted" and not obj["status"].get("candidateVersion")

    # 5. Version 3 fails to load in its shadow: rolled back, rejected, stable keeps serving.
    objects.patch(KIND, "iris", {"spec": {"model": model_source(v3)}})
    seldon.wait_predictors("iris", [("stable", 100, None, "2"), ("shadow", None, True, "3")])
    seldon.set_status("iris", "Failed", {"stable": 1, "shadow": 0},
                      description="Deployment iris-shadow-0-iris: model iris failed to load")
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Degraded").get("reason") == "ModelUnavailable",
                       timeout=30, what="ModelUnavailable")
    assert "failed to load" in condition(obj, "Degraded")["message"]
    assert obj["status"]["rejectedVersions"] == ["3"] and obj["status"]["stableVersion"] == "2"
    seldon.wait_predictors("iris", [("stable", 100, None, "2")])
    seldon.set_status("iris", "Available", {"stable": 1})
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("status") == "True", timeout=30,
                       what="ready again")
    assert condition(obj, "Degraded")["reason"] == "ModelUnavailable"  # the source still names version 3

    # 6. Deleting the ModelDeployment lets the garbage collector delete the SeldonDeployment.
    objects.delete(KIND, "iris")
    wait_until(lambda: seldon.get("iris") is None, timeout=60, what="SeldonDeployment garbage-collected")
    print("\n[figures] seldon rollout: " + ", ".join(f"{k} after {v:.1f}s" for k, v in timings.items()))
