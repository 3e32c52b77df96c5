"""Approval is an authorization decision, on the real API server: the chart's ValidatingAdmissionPolicy
lets only subjects with the verb ``approve`` on modeldeployments.mlops.dev set the approve and rollback
annotations. Two users: one who may patch ModelDeployments (refused, with a readable message, also
through ``kubectl mlops``), one who may also approve (allowed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chart_support import kubectl, template, token_kubeconfig
from kube_support import load_example, wait_until

pytestmark = pytest.mark.cluster

APPROVE, ROLLBACK = "mlops.dev/approve", "mlops.dev/rollback"


def user(kube_api, admin_kubeconfig: str, namespace: str, name: str, tmp_path: Path) -> str:
    """A ServiceAccount's kubeconfig (bound token from the TokenRequest API)."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    token = core.create_namespaced_service_account_token(
        name, namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[],
                                                                                           expiration_seconds=3600)))
    path = tmp_path / f"{name}.kubeconfig"
    path.write_text(token_kubeconfig(admin_kubeconfig, token.status.token, namespace))
    path.chmod(0o600)
    return str(path)


def rbac(namespace: str, release: str) -> str:
    editor_role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": "modeldeployment-editor", "namespace": namespace},
                   "rules": [{"apiGroups": ["mlops.dev"], "resources": ["modeldeployments"],
                              "verbs": ["get", "list", "watch", "patch", "update"]}]}

    def binding(name: str, subject: str, kind: str, role: str) -> dict:
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": namespace},
                "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": namespace}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}}

    return yaml.safe_dump_all([
        editor_role,
        binding("editor-edits", "editor", "Role", "modeldeployment-editor"),
        binding("approver-edits", "approver", "Role", "modeldeployment-editor"),
        binding("approver-approves", "approver", "ClusterRole", f"{release}-approver"),
    ])


def annotate(kubeconfig: str, namespace: str, key: str, value: str, dry_run: bool = False
             ) -> subprocess.CompletedProcess[str]:
    return kubectl("annotate", "--overwrite", "-n", namespace, "modeldeployments.mlops.dev", "iris", f"{key}={value}",
                   *(["--dry-run=server"] if dry_run else []), kubeconfig=kubeconfig, check=False)


def kubectl_mlops(kubeconfig: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops_operator.cli", "--kubeconfig", kubeconfig, *args,
                           "-n", namespace], capture_output=True, text=True, timeout=120)


def test_only_approvers_may_approve_or_roll_back(kube_api, kubeconfig, namespace, crds, objects, tmp_path):
    release = f"ap-{namespace[-6:]}"
    policy = template(release, namespace, "--set", f"fullnameOverride={release}",
                      "--set", f"watchNamespaces={{{namespace}}}", "--show-only", "templates/approval-policy.yaml")
    kubectl("apply", "-f", "-", kubeconfig=kubeconfig, stdin=policy)
    try:
        kubectl("apply", "-f", "-", kubeconfig=kubeconfig, stdin=rbac(namespace, release))
        editor = user(kube_api, kubeconfig, namespace, "editor", tmp_path)
        approver = user(kube_api, kubeconfig, namespace, "approver", tmp_path)
        objects.create(load_example("deployment.yaml"))

        # The policy takes effect once the API server has loaded it: probe with a server-side dry run.
        wait_until(lambda: annotate(editor, namespace, APPROVE, "probe", dry_run=True).returncode != 0,
                   timeout=60, what="the approval policy in force")

        refused = annotate(editor, namespace, APPROVE, "2")
        assert refused.returncode != 0
        assert (f"system:serviceaccount:{namespace}:editor may not set {APPROVE} on ModelDeployment "
                f"{namespace}/iris") in refused.stderr
        assert "needs the verb approve on modeldeployments.mlops.dev" in refused.stderr
        assert f"ClusterRole {release}-approver" in refused.stderr

        cli = kubectl_mlops(editor, namespace, "rollback", "iris", "--version", "1")
        assert cli.returncode == 1, cli
        assert cli.stderr.startswith("error: Forbidden (403): ") and f"may not set {ROLLBACK}" in cli.stderr
        assert "you are not allowed to rollback this ModelDeployment" in cli.stderr
        annotations = objects.get("ModelDeployment", "iris")["metadata"].get("annotations") or {}
        assert APPROVE not in annotations and ROLLBACK not in annotations

        # Patch rights still cover everything else.
        assert annotate(editor, namespace, "example.com/owner", "team-a").returncode == 0

        allowed = kubectl_mlops(approver, namespace, "rollback", "iris", "--version", "1")
        assert allowed.returncode == 0, allowed
        assert "version 1 rolled back" in allowed.stdout
        assert annotate(approver, namespace, APPROVE, "2").returncode == 0
        annotations = objects.get("ModelDeployment", "iris")["metadata"]["annotations"]
        assert annotations[ROLLBACK] == "1" and annotations[APPROVE] == "2"

        # Removing an approval is a decision too; an unchanged value is not.
        assert annotate(editor, namespace, "example.com/owner", "team-b").returncode == 0
        assert kubectl("annotate", "-n", namespace, "modeldeployments.mlops.dev", "iris", f"{APPROVE}-",
                       kubeconfig=editor, check=False).returncode != 0
    finally:
        kubectl("delete", "--ignore-not-found", "-f", "-", kubeconfig=kubeconfig, stdin=policy)
