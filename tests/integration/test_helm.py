"""The Helm chart against real tools and the local control plane.

* ``helm lint --strict`` with the default, the namespaced and the all-options values;
* ``helm template`` of each, then ``kubectl apply --dry-run=server`` (the API server validates every
  object, the CRDs' schemas and Pod Security ``restricted`` included); the kustomize base too;
* ``helm install`` of the chart (CRDs included) and ``helm uninstall``, which keeps the CRDs;
* the chart's RBAC: what its ServiceAccount may and may not do (SubjectAccessReview), and the
  operator running with that account's token reconciles all three kinds and cannot read a Secret
  it was not granted.

No kubelet or scheduler runs on the local control plane, so the chart's pod never starts; that is
expected. The whole integration suite can run its operators as the chart's ServiceAccount too:
``PYTHONPATH=tests .venv/bin/pytest -p chart_sa_plugin tests/integration``.
"""

from __future__ import annotations

import base64
import json
import copy
import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from chart_support import CHART, ChartServiceAccount, documents, helm, kubectl, template
from kube_support import REPO, OperatorProcess, condition, load_example, wait_until

pytestmark = pytest.mark.cluster

VALUES = {
    "default": [],
    "namespaced": ["-f", str(CHART / "ci" / "namespaced-values.yaml")],
    "all-options": ["-f", str(CHART / "ci" / "all-options-values.yaml")],
}
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"


@pytest.fixture(scope="session")
def monitoring_crds(kubeconfig: str) -> None:
    """The prometheus-operator's ServiceMonitor and PrometheusRule CRDs, so the dry-run validates the
    chart's objects against their real schemas. They come from the prometheus-operator Go module
    (``go mod download``, cached like the other binaries' sources); they are left installed."""
    result = subprocess.run(["go", "mod", "download", "-json", PROMETHEUS_OPERATOR], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot fetch {PROMETHEUS_OPERATOR}: {result.stderr[-500:]}")
    crd_dir = Path(json.loads(result.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    for name in ("servicemonitors", "prometheusrules"):
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir / f"monitoring.coreos.com_{name}.yaml"),
                kubeconfig=kubeconfig)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com", kubeconfig=kubeconfig)


def restricted(kubeconfig: str, namespace: str) -> None:
    """Enforce (and warn about) Pod Security restricted in the namespace."""
    kubectl("label", "--overwrite", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted", kubeconfig=kubeconfig)


def dry_run(kubeconfig: str, manifests: str) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "--dry-run=server", "-f", "-", kubeconfig=kubeconfig, stdin=manifests, check=False)


def warnings(stderr: str) -> list[str]:
    """The API server's and kubectl's warnings, except that objects created without kubectl apply (the
    session's CRDs) lack kubectl's last-applied annotation."""
    return [line for line in stderr.splitlines()
            if line.startswith("Warning") and "last-applied-configuration" not in line]


# ---------------------------------------------------------------- lint and dry-run


@pytest.mark.parametrize("values", sorted(VALUES))
def test_lint_strict(values: str) -> None:
    result = helm("lint", "--strict", str(CHART), *VALUES[values])
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", sorted(VALUES))
def test_template_passes_server_side_dry_run(values: str, kubeconfig: str, namespace: str, crds: list[str],
                                             request: pytest.FixtureRequest) -> None:
    if values == "all-options":  # ServiceMonitor and PrometheusRule
        request.getfixturevalue("monitoring_crds")
    args = list(VALUES[values])
    if values == "namespaced":  # the Roles go into the watched namespaces, which must exist
        args += ["--set", f"watchNamespaces={{{namespace}}}"]
    rendered = template(f"dry-{values}", namespace, *args)
    kinds = sorted(doc["kind"] for doc in documents(rendered))
    restricted(kubeconfig, namespace)

    result = dry_run(kubeconfig, rendered)

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(kinds), result.stdout
    assert "violate PodSecurity" not in result.stderr, result.stderr
    assert not warnings(result.stderr)
    if values == "all-options":
        for kind in ("ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap"):
            assert kind in kinds
    if values == "namespaced":
        assert "Role" in kinds and "RoleBinding" in kinds


def test_the_pod_security_check_catches_a_violation(kubeconfig: str, namespace: str, crds: list[str]) -> None:
    """The dry-run above would notice a pod template that breaks restricted (control experiment)."""
    deployment = next(doc for doc in documents(template("ctl", namespace)) if doc["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    del broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    restricted(kubeconfig, namespace)

    result = dry_run(kubeconfig, yaml.safe_dump(broken))

    assert "would violate PodSecurity" in result.stderr
    assert "allowPrivilegeEscalation != false" in result.stderr


def test_kustomize_base_passes_server_side_dry_run(kubeconfig: str, namespace: str, crds: list[str],
                                                   tmp_path: Path) -> None:
    """manifests/ builds with kubectl's kustomize and the API server accepts it (in a test namespace)."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": [os.path.relpath(REPO / "manifests", overlay)],
    }))
    built = kubectl("kustomize", str(overlay), kubeconfig=kubeconfig).stdout
    objects = documents(built)
    assert {doc["kind"] for doc in objects} >= {"Namespace", "CustomResourceDefinition", "Deployment",
                                                 "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"}
    binding = next(doc for doc in objects if doc["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == namespace
    restricted(kubeconfig, namespace)

    result = dry_run(kubeconfig, built)

    assert result.returncode == 0, result.stderr
    assert not warnings(result.stderr)


# ---------------------------------------------------------------- install


def _adopt_crds(kubeconfig: str, release: str, namespace: str, names: list[str]) -> None:
    """Mark the CRDs the session applied with kubectl as the release's, as docs/operations.md tells
    users to do before installing the chart over CRDs applied by hand."""
    for name in names:
        kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm", kubeconfig=kubeconfig)
        kubectl("annotate", "--overwrite", "crd", name, f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}", kubeconfig=kubeconfig)


def test_helm_install_then_uninstall_keeps_the_crds(kubeconfig: str, namespace: str, crds: list[str],
                                                    kube_api) -> None:
    from kubernetes import client

    for copy_path in sorted((CHART / "files" / "crds").glob("*.yaml")):  # never install stale schemas
        assert copy_path.read_text() == (REPO / "crds" / copy_path.name).read_text(), \
            "run `python hack/gen-manifests.py write`"
    release = f"it-{uuid.uuid4().hex[:6]}"
    _adopt_crds(kubeconfig, release, namespace, crds)

    installed = helm("install", release, str(CHART), "--namespace", namespace, kubeconfig=kubeconfig)
    try:
        assert "STATUS: deployed" in installed.stdout
        assert "It watches every namespace" in installed.stdout  # NOTES.txt
        status = yaml.safe_load(helm("status", release, "-n", namespace, "-o", "yaml", kubeconfig=kubeconfig).stdout)
        assert status["info"]["status"] == "deployed"
        apps = client.AppsV1Api(kube_api)
        deployment = apps.read_namespaced_deployment(f"{release}-mlops-operator", namespace)
        # Leader election (the default) makes a rolling update safe: the new pod waits on standby.
        assert deployment.spec.replicas == 1 and deployment.spec.strategy.type == "RollingUpdate"
        ext = client.ApiextensionsV1Api(kube_api)
        for name in crds:
            crd = ext.read_custom_resource_definition(name)
            assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
            assert crd.metadata.labels["app.kubernetes.io/instance"] == release
    finally:
        helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=kubeconfig)

    for name in crds:  # kept, and so every object of the three kinds
        assert ext.read_custom_resource_definition(name).metadata.deletion_timestamp is None
    rbac = client.RbacAuthorizationV1Api(kube_api)
    assert not [r for r in rbac.list_cluster_role().items if r.metadata.name.startswith(release)]
    assert not apps.list_namespaced_deployment(namespace).items


# ---------------------------------------------------------------- RBAC


def can(kube_api, user: str, verb: str, resource: str, namespace: str | None = None, group: str = "",
        subresource: str = "", name: str = "") -> bool:
    """SubjectAccessReview: may ``user`` do ``verb`` on the resource?"""
    from kubernetes import client

    attributes = client.V1ResourceAttributes(verb=verb, group=group, resource=resource, namespace=namespace,
                                             subresource=subresource or None, name=name or None)
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace or 'x'}",
                           "system:authenticated"], resource_attributes=attributes))
    return client.AuthorizationV1Api(kube_api).create_subject_access_review(review).status.allowed


MLOPS = [("mlops.dev", plural) for plural in ("modeltrainings", "modeldeployments", "driftmonitors")]


def rbac_matrix(kube_api, user: str, namespace: str) -> dict[str, bool]:
    """What the operator's account may do in ``namespace``, as readable keys."""
    checks: dict[str, tuple] = {}
    for group, plural in MLOPS:
        for verb in ("get", "list", "watch", "patch", "update", "create", "delete"):
            checks[f"{verb} {plural}"] = (verb, plural, namespace, group)
        for verb in ("patch", "update"):
            checks[f"{verb} {plural}/status"] = (verb, plural, namespace, group, "status")
        checks[f"update {plural}/finalizers"] = ("update", plural, namespace, group, "finalizers")
    checks.update({
        "create events": ("create", "events", namespace),
        "patch events": ("patch", "events", namespace),
        "create events.k8s.io": ("create", "events", namespace, "events.k8s.io"),
        "get configmaps": ("get", "configmaps", namespace),
        "list configmaps": ("list", "configmaps", namespace),
        "get secrets": ("get", "secrets", namespace),
        "get secrets/kfp-token": ("get", "secrets", namespace, "", "", "kfp-token"),
        "list secrets": ("list", "secrets", namespace),
        "watch secrets": ("watch", "secrets", namespace),
        "create pods": ("create", "pods", namespace),
        "list pods": ("list", "pods", namespace),
        "get pods/log": ("get", "pods", namespace, "", "log"),
        "list crds": ("list", "customresourcedefinitions", None, "apiextensions.k8s.io"),
        "watch crds": ("watch", "customresourcedefinitions", None, "apiextensions.k8s.io"),
        "create crds": ("create", "customresourcedefinitions", None, "apiextensions.k8s.io"),
        "list namespaces": ("list", "namespaces", None),
        "watch namespaces": ("watch", "namespaces", None),
    })
    for verb in ("get", "list", "create", "patch", "delete", "update", "watch"):
        checks[f"{verb} jobs"] = (verb, "jobs", namespace, "batch")
    for verb in ("get", "list", "create", "patch", "delete", "update", "watch"):
        checks[f"{verb} seldondeployments"] = (verb, "seldondeployments", namespace, "machinelearning.seldon.io")
    return {key: can(kube_api, user, *args) for key, args in checks.items()}


def expected_operator_rights(scanning_namespaces: bool) -> set[str]:
    """Exactly the verbs the operator uses (README "RBAC" explains each)."""
    allowed = set()
    for _, plural in MLOPS:
        allowed |= {f"get {plural}", f"list {plural}", f"watch {plural}", f"patch {plural}", f"patch {plural}/status"}
    allowed |= {"update modeldeployments/finalizers", "create events", "get configmaps", "get secrets",
                "get secrets/kfp-token", "list crds", "watch crds"}
    allowed |= {f"{verb} seldondeployments" for verb in ("get", "list", "watch", "create", "patch", "delete")}
    allowed |= {"list pods"}  # backend seldon's failing container, backend job's termination message
    allowed |= {f"{verb} jobs" for verb in ("get", "create", "delete")}  # training backend job
    if scanning_namespaces:
        allowed |= {"list namespaces", "watch namespaces"}
    return allowed


@pytest.fixture
def cluster_wide_account(kubeconfig: str, namespace: str) -> Iterator[str]:
    """The default (cluster-wide) chart's ServiceAccount and RBAC installed; yields the user name."""
    release = f"cw-{uuid.uuid4().hex[:6]}"
    rendered = template(release, namespace, "--set", f"fullnameOverride={release}", "--show-only",
                        "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml")
    kubectl("apply", "-f", "-", kubeconfig=kubeconfig, stdin=rendered)
    try:
        yield f"system:serviceaccount:{namespace}:{release}"
    finally:
        kubectl("delete", "--ignore-not-found", "-f", "-", kubeconfig=kubeconfig, stdin=rendered)


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(kube_api, cluster_wide_account: str,
                                                             namespace: str) -> None:
    for where in (namespace, "default"):  # any namespace
        granted = rbac_matrix(kube_api, cluster_wide_account, where)
        allowed = expected_operator_rights(scanning_namespaces=False)
        assert {k for k, v in granted.items() if v} == allowed, where


def test_namespaced_rbac_stays_in_its_namespace(kube_api, kubeconfig: str, namespace: str) -> None:
    account = ChartServiceAccount(kubeconfig, namespace).install()
    try:
        granted = rbac_matrix(kube_api, account.username, namespace)
        assert {k for k, v in granted.items() if v} == expected_operator_rights(scanning_namespaces=True)
        elsewhere = rbac_matrix(kube_api, account.username, "default")
        cluster_scoped = {"list crds", "watch crds", "list namespaces", "watch namespaces"}
        assert {k for k, v in elsewhere.items() if v} == cluster_scoped
    finally:
        account.uninstall()


# ---------------------------------------------------------------- the operator as the chart's account


def _secret(kube_api, namespace: str, name: str, value: str) -> None:
    from kubernetes import client

    client.CoreV1Api(kube_api).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), data={"token": base64.b64encode(value.encode()).decode()}))


def test_operator_as_chart_service_account(kubeconfig: str, namespace: str, crds: list[str], objects, kube_api,
                                           tmp_path: Path) -> None:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    account = ChartServiceAccount(kubeconfig, namespace, values=["--set", "rbac.secrets.names={kfp-token}"]).install()
    _secret(kube_api, namespace, "kfp-token", "granted-value")
    _secret(kube_api, namespace, "other", "not-granted-value-1234")
    sa_kubeconfig = account.write_kubeconfig(tmp_path / "sa.kubeconfig")

    # The account itself: the granted Secret by name only; no listing, no other Secret.
    sa_api = config.new_client_from_config(config_file=sa_kubeconfig)
    core = client.CoreV1Api(sa_api)
    assert core.read_namespaced_secret("kfp-token", namespace).data["token"]
    for call in (lambda: core.read_namespaced_secret("other", namespace),
                 lambda: core.list_namespaced_secret(namespace),
                 lambda: core.read_namespaced_secret("kfp-token", "default")):
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.status == 403
    sa_api.close()

    # With leader election as the chart runs it: the account may create and renew only its own Lease.
    election = {"MLOPS_LEADER_ELECTION": "true", "MLOPS_LEADER_ELECTION_NAMESPACE": namespace,
                "MLOPS_LEADER_ELECTION_LEASE_NAME": account.name, "MLOPS_KFP_HOST": "http://127.0.0.1:9"}
    operator = OperatorProcess(sa_kubeconfig, namespace, tmp_path / "operator", env=election).start()
    try:
        lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(account.name, namespace)
        assert lease.spec.holder_identity.endswith(f"-{operator.process.pid}")
        training = load_example("training.yaml")
        objects.create(training)
        monitor = load_example("driftmonitor.yaml")
        objects.create(monitor)
        # Backend seldon without Seldon installed: telling "no such CRD" from "no such object" takes
        # the list on seldondeployments the chart grants.
        model_dir = tmp_path / "model"
        model_dir.mkdir()
        (model_dir / "model-settings.json").write_text("{}")
        deployment = {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelDeployment",
                      "metadata": {"name": "seldon-served"},
                      "spec": {"model": {"uri": model_dir.as_uri(), "version": "1"}, "backend": "seldon",
                               "rollout": {"strategy": "direct"}}}
        objects.create(deployment)
        # A KFP training whose token Secret the account may not read.
        refused_training = {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining",
                            "metadata": {"name": "kfp-refused"},
                            "spec": {**training["spec"], "backend": "kfp",
                                     "kfp": {"tokenSecretRef": {"name": "other", "key": "token"}}}}
        objects.create(refused_training)

        for kind, name, types in (("ModelTraining", "iris", ("Succeeded", "Validated")),
                                  ("DriftMonitor", "iris", ("Ready", "DriftDetected")),
                                  ("ModelDeployment", "seldon-served", ("Ready", "Progressing", "Degraded"))):
            obj = objects.wait(kind, name, lambda o, t=types: all(condition(o, c) for c in t), timeout=90,
                               what=f"{kind}/{name} conditions")
            assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
            if kind == "DriftMonitor":
                assert "mlops.dev/finalizer" in obj["metadata"]["finalizers"]  # kopf's patch went through
            elif kind == "ModelDeployment":  # backend seldon: its children are owned, deletion needs no finalizer
                assert "mlops.dev/finalizer" not in obj["metadata"].get("finalizers", [])
            else:  # a local training holds the finalizer exactly while its run is active (kopf follows the status)
                objects.wait(kind, name, lambda o: ("mlops.dev/finalizer" in o["metadata"].get("finalizers", [])) == (
                    (o["status"].get("latestRun") or {}).get("state") in ("Pending", "Running")), timeout=30,
                    what="the training's finalizer following its run")

        served = objects.wait("ModelDeployment", "seldon-served",
                              lambda o: (condition(o, "Ready") or {}).get("reason") == "BackendUnavailable", timeout=90)
        assert "is Seldon Core (its CRD) installed?" in condition(served, "Ready")["message"]

        refused = objects.wait("ModelTraining", "kfp-refused",
                               lambda o: (condition(o, "Succeeded") or {}).get("reason") == "InvalidSpec", timeout=90)
        message = condition(refused, "Succeeded")["message"]
        assert "spec.kfp.tokenSecretRef: the operator may not read Secret other (RBAC: forbidden)" in message
        assert "not-granted-value" not in yaml.safe_dump(refused)
        assert "mlops.dev/finalizer" in refused["metadata"]["finalizers"]  # backend kfp: its recurring run, its runs
        wait_until(lambda: any(e.reason == "Accepted" for e in objects.events("iris")), timeout=30,
                   what="the Accepted event (events: create)")

        logs = operator.logs()
        assert "Not enough permissions" not in logs  # kopf's scanning needs are granted
        assert "Forbidden" not in logs  # the refused read is reported in the condition, not as a raw ApiException
    finally:
        if operator.process is not None and operator.process.poll() is None:
            remaining = objects.delete_all()  # finalizers are released by the account's patch
            wait_until(lambda: not objects.list_all(), timeout=60, what=f"deletion of {remaining}")
        operator.stop()
        account.uninstall()
