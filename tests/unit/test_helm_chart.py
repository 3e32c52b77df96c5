"""The Helm chart as rendered by ``helm template`` (no cluster needed): the generated copies are current,
the pod is restricted, RBAC has exactly the documented rules in both modes, optional objects hide
behind values, and values.schema.json refuses bad values. The chart against a real API server is
tests/integration/test_helm.py.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_support import CHART, documents, helm, template

REPO = Path(__file__).resolve().parents[2]
ALL_OPTIONS = ["-f", str(CHART / "ci" / "all-options-values.yaml")]
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart")


@functools.cache
def _rendered(*args: str) -> str:
    return template("mlops-operator", "mlops-system", *args)


def render(*args: str) -> list[dict[str, Any]]:
    """The chart's objects as release mlops-operator in mlops-system (fresh copies of a cached render)."""
    return documents(_rendered(*args))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_manifests", REPO / "hack" / "gen-manifests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_manifests", module)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_current() -> None:
    """manifests/, the chart's CRD copies and argocd-cm.yaml match their sources
    (fix: python hack/gen-manifests.py write)."""
    generator = load_generator()
    from chart_support import bin_dir

    files, owned = generator.generated_files(str(bin_dir() / "helm"))
    assert generator.stale(files, owned) == []


def test_stale_files_are_noticed(tmp_path: Path) -> None:
    generator = load_generator()
    target = tmp_path / "x.yaml"
    target.write_text("old\n")
    extra = tmp_path / "gone.yaml"
    extra.write_text("")
    problems = generator.stale({target: "new\n"}, [tmp_path])
    assert any("-old" in p and "+new" in p for p in problems)
    assert any("gone.yaml" in p for p in problems)


def test_app_version_is_the_operators() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    from mlops_operator import __version__

    assert chart["appVersion"] == project["version"] == __version__


# ---------------------------------------------------------------- CRDs


def test_crds_are_the_generated_ones_kept_on_uninstall() -> None:
    rendered = {doc["metadata"]["name"]: doc for doc in of_kind(render(), "CustomResourceDefinition")}
    generated = {path.name: yaml.safe_load(path.read_text()) for path in sorted((REPO / "crds").glob("*.yaml"))}
    assert len(rendered) == len(generated) == 3
    for crd in generated.values():
        ours = rendered[crd["metadata"]["name"]]
        assert ours["spec"] == crd["spec"]
        assert ours["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert "Prune=false" in ours["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
        assert int(ours["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) < 0


def test_crds_can_be_skipped_or_not_kept() -> None:
    assert not of_kind(render("--set", "crds.install=false"), "CustomResourceDefinition")
    for crd in of_kind(render("--set", "crds.keep=false"), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"]["annotations"]
        assert "Prune=false" not in crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]


# ---------------------------------------------------------------- the pod


def test_one_restricted_operator_pod() -> None:
    (deployment,) = of_kind(render(), "Deployment")
    spec = deployment["spec"]
    # One replica by default, leading through its Lease: a rolling update is safe (the new pod waits on standby).
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # A standby answers them too (alive and ready: a rolling update proceeds); the leader labels its Pod.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "seldon-logger": 9180}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MLOPS_METRICS_HOST"] == "0.0.0.0" and env["MLOPS_NAMESPACES"] == ""
    assert env["MLOPS_HEALTH_PORT"] == "8081" and env["MLOPS_DATA_DIR"] == "/var/lib/mlops-operator"
    assert env["MLOPS_LOCAL_TRAINING_IN_POD"] == "false"  # local training inside the operator Pod: refused
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert set(mounts) == {"/var/lib/mlops-operator", "/tmp"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())


def test_one_setting_for_models_and_inference_logs_and_s3_credentials_by_reference() -> None:
    (deployment,) = of_kind(render(*ALL_OPTIONS), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["MLOPS_ARTIFACT_ROOT"]["value"] == "s3://mlops-artifacts/models"
    assert not [name for name in env if "INFERENCE" in name], "the inference log follows the artifact root"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"
    assert env["AWS_REGION"]["value"] == "eu-central-1"
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.internal:3128"  # extraEnv comes on top
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlops-s3"
    plain = {item["name"] for item in container["env"]}
    (default,) = of_kind(render(), "Deployment")
    default_env = {item["name"] for item in default["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {n for n in default_env if n.startswith("AWS_")} and "MLOPS_ARTIFACT_ROOT" not in default_env
    assert plain >= {"MLOPS_ARTIFACT_ROOT", "AWS_ACCESS_KEY_ID"}


def test_every_object_has_the_standard_labels() -> None:
    for doc in render(*ALL_OPTIONS):
        labels = doc["metadata"].get("labels", {})
        assert all(label in labels for label in STANDARD_LABELS), (doc["kind"], doc["metadata"]["name"])
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    (deployment,) = of_kind(render(), "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_metrics_service_and_optional_objects() -> None:
    default = {doc["kind"] for doc in render()}
    assert default == {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
                       "Deployment", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                       "Role", "RoleBinding"}  # the Role and RoleBinding of the leader election's Lease
    assert "ValidatingAdmissionPolicy" not in {doc["kind"] for doc in render("--set", "approvalPolicy.enabled=false")}
    everything = render(*ALL_OPTIONS)
    kinds = {doc["kind"] for doc in everything}
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap"} <= kinds

    (monitor,) = of_kind(everything, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    metrics_service = next(s for s in of_kind(everything, "Service")
                           if s["metadata"]["labels"].get("app.kubernetes.io/component") == "metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()

    (rule,) = of_kind(everything, "PrometheusRule")
    alerts = yaml.safe_load((CHART / "files" / "prometheus" / "alerts.yaml").read_text())
    # The rules as written, with each runbook link under prometheusRule.runbookBaseUrl.
    base = "https://git.example.com/ml/mlops-operator/-/blob/v0.1.0/"
    for group in alerts["groups"]:
        for alert in group["rules"]:
            alert["annotations"]["runbook_url"] = base + alert["annotations"]["runbook_url"]
    assert rule["spec"]["groups"] == alerts["groups"]
    (dashboard,) = of_kind(everything, "ConfigMap")
    assert json.loads(dashboard["data"]["mlops-operator.json"]) == json.loads(
        (CHART / "files" / "grafana" / "mlops-operator.json").read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"

    (policy,) = of_kind(everything, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {"metrics", "seldon-logger"}
    assert {"port": 53, "protocol": "UDP"} in policy["spec"]["egress"][0]["ports"]
    # Only serving Pods (Seldon labels them seldon-deployment-id) may post to the request-logger sink.
    (sink_rule,) = [rule for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == "seldon-logger"]
    assert sink_rule["from"] == [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
        {"key": "seldon-deployment-id", "operator": "Exists"}]}}]


def test_the_sink_token_key_comes_from_a_secret() -> None:
    (deployment,) = of_kind(render("--set", "seldonLogger.tokenSecret=logger-key"), "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLOPS_SELDON_LOGGER_TOKEN_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "logger-key", "key": "token-key"}}
    (deployment,) = of_kind(render(), "Deployment")
    assert "MLOPS_SELDON_LOGGER_TOKEN_KEY" not in {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_operator_down_alert_follows_the_chart_name() -> None:
    (rule,) = of_kind(render("--set", "prometheusRule.enabled=true", "--set", "nameOverride=mlops"), "PrometheusRule")
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert 'absent(up{job="mlops"} == 1)' in exprs


# ---------------------------------------------------------------- RBAC


def rules_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for doc in of_kind(docs, kind) for rule in doc["rules"]]


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


OPERATOR_GRANTS = (
    {("mlops.dev", plural, verb) for plural in ("modeltrainings", "modeldeployments", "driftmonitors")
     for verb in ("get", "list", "watch", "patch")}
    | {("mlops.dev", f"{plural}/status", "patch") for plural in ("modeltrainings", "modeldeployments", "driftmonitors")}
    | {("mlops.dev", "modeldeployments/finalizers", "update"), ("", "events", "create"), ("", "configmaps", "get"),
       ("", "secrets", "get")}
    | {("machinelearning.seldon.io", "seldondeployments", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")}
    # backend seldon: the failing container's reason when Seldon's message is generic; backend job: the
    # failed run's termination message
    | {("", "pods", "list")}
    | {("batch", "jobs", verb) for verb in ("get", "create", "delete")}  # training backend job
    # backend seldon without a mesh: the routing Service named like the ModelDeployment
    | {("", "services", verb) for verb in ("get", "create", "patch", "delete")}
)


def test_cluster_wide_rbac() -> None:
    docs = render()
    cluster_roles = {doc["metadata"]["name"]: grants(doc["rules"]) for doc in of_kind(docs, "ClusterRole")}
    assert cluster_roles == {
        "mlops-operator": OPERATOR_GRANTS,
        "mlops-operator-scanning": {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                                    ("apiextensions.k8s.io", "customresourcedefinitions", "watch")},
        # For people who approve rollouts (bound by the cluster's admins), not for the operator.
        "mlops-operator-approver": {("mlops.dev", "modeldeployments", "approve")},
    }
    assert [role["metadata"]["name"] for role in of_kind(docs, "Role")] == ["mlops-operator-leader-election"]
    for binding in of_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlops-operator", "namespace": "mlops-system"}]


def test_namespaced_rbac() -> None:
    docs = [d for d in render("--set", "watchNamespaces={team-a,team-b}")
            if not d["metadata"]["name"].endswith("-leader-election")]
    roles = of_kind(docs, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert all(grants(role["rules"]) == OPERATOR_GRANTS for role in roles)
    assert sorted(b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    # Only kopf's scanning is cluster-wide: CRDs, and namespaces to follow the watched ones (the approver
    # ClusterRole is for people, bound by the cluster's admins).
    docs = [d for d in docs if not d["metadata"]["name"].endswith("-approver")]
    assert grants(rules_of(docs, "ClusterRole")) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"), ("", "namespaces", "watch")}
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLOPS_NAMESPACES"] == "team-a,team-b"


def test_secrets_are_never_listed_and_can_be_narrowed() -> None:
    for args in ([], ["--set", "watchNamespaces={a}"]):
        for rule in rules_of(render(*args), "ClusterRole") + rules_of(render(*args), "Role"):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"]
    narrowed = rules_of(render("--set", "rbac.secrets.names={kfp-token}"), "ClusterRole")
    (secret_rule,) = [rule for rule in narrowed if "secrets" in rule["resources"]]
    assert secret_rule["resourceNames"] == ["kfp-token"]
    without = grants(rules_of(render("--set", "rbac.secrets.enabled=false", "--set", "rbac.seldon=false",
                                     "--set", "rbac.trainingJobs=false"),
                              "ClusterRole"))
    assert not {g for g in without if g[1] in ("secrets", "seldondeployments", "pods", "jobs")}
    assert not [d for d in render("--set", "rbac.scanning=false") if d["metadata"]["name"].endswith("-scanning")]
    assert not of_kind(render("--set", "rbac.create=false"), "ClusterRole")


# ---------------------------------------------------------------- high availability


def test_the_lease_is_the_only_thing_the_replicas_may_write_in_the_release_namespace() -> None:
    docs = render()
    (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == "mlops-operator-leader-election"]
    assert role["metadata"]["namespace"] == "mlops-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["mlops-operator"],
         "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]  # the leader label on its own Pod
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    pod_name = next(e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                    if e["name"] == "MLOPS_POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The Seldon logger sink runs in the leader only: its Service selects the leader's label.
    sink = next(s for s in of_kind(docs, "Service") if s["metadata"]["labels"]["app.kubernetes.io/component"]
                == "seldon-logger")
    assert sink["spec"]["selector"]["mlops.dev/leader"] == "true"
    metrics = next(s for s in of_kind(docs, "Service") if s["metadata"]["labels"]["app.kubernetes.io/component"]
                   == "metrics")
    assert "mlops.dev/leader" not in metrics["spec"]["selector"]  # every replica's metrics (mlops_leader 0 or 1)
    assert env["MLOPS_LEADER_ELECTION"] == "true"
    assert env["MLOPS_LEADER_ELECTION_NAMESPACE"] == "mlops-system"
    assert env["MLOPS_LEADER_ELECTION_LEASE_NAME"] == "mlops-operator"
    assert (env["MLOPS_LEADER_ELECTION_LEASE_SECONDS"], env["MLOPS_LEADER_ELECTION_RENEW_DEADLINE_SECONDS"],
            env["MLOPS_LEADER_ELECTION_RETRY_SECONDS"]) == ("15", "10", "2")
    assert not of_kind(docs, "PodDisruptionBudget")  # one replica: a PDB would only block drains


def test_replicas_get_a_disruption_budget_and_spread_over_nodes() -> None:
    docs = render("--set", "replicas=2")
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    (budget,) = of_kind(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # A platform team's own affinity wins.
    (mine,) = of_kind(render("--set", "replicas=2", "--set", "affinity.nodeAffinity.x=y"), "Deployment")
    assert mine["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {"x": "y"}}


def test_without_leader_election_there_is_one_replica_replaced_not_rolled() -> None:
    docs = render("--set", "leaderElection.enabled=false")
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {name for name in env if name.startswith("MLOPS_LEADER_ELECTION")}
    assert not of_kind(docs, "Role")
    result = helm("template", "x", str(CHART), "--kube-version", "v1.34.0", "--set", "replicas=2",
                  "--set", "leaderElection.enabled=false", check=False)
    assert result.returncode != 0 and "replicas > 1 needs leaderElection.enabled" in result.stderr


# ---------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(("value", "complaint"), [
    ("securityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation"),
    ("securityContext.readOnlyRootFilesystem=false", "readOnlyRootFilesystem"),
    ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
    ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
    ("operator.logFormat=xml", "logFormat"),
    ("seldonLogger.mode=sometimes", "mode"),
    ("replicas=0", "replicas"),
    ("leaderElection.leaseSeconds=0", "leaseSeconds"),
    ("operator.artifactRoot=bucket/no-scheme", "artifactRoot"),
    ("operator.s3.endpointUrl=minio:9000", "endpointUrl"),
    ("operator.endpointPrefixes={prometheus:9090}", "endpointPrefixes"),
])
def test_schema_refuses_bad_values(value: str, complaint: str) -> None:
    result = helm("template", "x", str(CHART), "--kube-version", "v1.34.0", "--set", value, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


def test_lint_strict_passes() -> None:
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART), *ALL_OPTIONS).stdout


def test_local_training_in_the_operator_pod_is_a_chart_value() -> None:
    (deployment,) = of_kind(render("--set", "operator.localTrainingInPod=true"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MLOPS_LOCAL_TRAINING_IN_POD"] == "true"
    from mlops_operator.settings import Settings

    assert Settings(local_training_in_pod=env["MLOPS_LOCAL_TRAINING_IN_POD"]).local_training_in_pod is True


def test_the_training_jobs_service_account_is_a_chart_value() -> None:
    (deployment,) = of_kind(render(*ALL_OPTIONS), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MLOPS_TRAINING_SERVICE_ACCOUNT"] == "training-runner"
    (default,) = of_kind(render(), "Deployment")
    assert "MLOPS_TRAINING_SERVICE_ACCOUNT" not in {item["name"] for item in
                                                     default["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_endpoint_allow_list_is_a_chart_value() -> None:
    prefixes = "{http://prometheus.team-a.svc:9090,https://kfp.example.com/team-a/}"
    (deployment,) = of_kind(render("--set", f"operator.endpointPrefixes={prefixes}"), "Deployment")
    env = {item["name"]: item.get("value") for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    from mlops_operator.settings import Settings

    assert Settings(endpoint_prefixes=env["MLOPS_ENDPOINT_PREFIXES"]).endpoint_prefixes == [
        "http://prometheus.team-a.svc:9090", "https://kfp.example.com/team-a/"]
    (default,) = of_kind(render(), "Deployment")
    assert "MLOPS_ENDPOINT_PREFIXES" not in {item["name"] for item in default["spec"]["template"]["spec"]["containers"][0]["env"]}
