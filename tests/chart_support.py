"""Test support for the Helm chart: the helm and kubectl binaries, rendering, and running as the
chart's ServiceAccount.

``ChartServiceAccount`` installs the chart's ServiceAccount and RBAC (nothing else) for one watched
namespace, asks the TokenRequest API for a token of that account and writes a kubeconfig that
authenticates with it, so the operator (or a test) can act with exactly the chart's permissions.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Any, Iterable

import yaml

from kube_support import REPO

CHART = REPO / "helm" / "mlops-operator"
# helm template assumes Kubernetes 1.20 unless told; the chart needs 1.28+ (as hack/gen-manifests.py).
KUBE_VERSION = "v1.34.0"


@functools.cache
def bin_dir() -> Path:
    """The directory with helm, kubectl (and promtool once built), from hack/build-binaries.sh."""
    out = subprocess.run([str(REPO / "hack" / "build-binaries.sh"), "helm", "kubectl"], check=True,
                         capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def helm(*args: str, kubeconfig: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(bin_dir() / "helm"), *args]
    if kubeconfig:
        cmd += ["--kubeconfig", kubeconfig]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def kubectl(*args: str, kubeconfig: str, stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    cmd = [str(bin_dir() / "kubectl"), "--kubeconfig", kubeconfig, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def template(release: str, namespace: str, *args: str) -> str:
    """``helm template`` of the chart."""
    return helm("template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                *args).stdout


def documents(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def token_kubeconfig(admin_kubeconfig: str, token: str, namespace: str) -> str:
    """A kubeconfig for the admin kubeconfig's cluster that authenticates with a bearer token."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == current["cluster"])
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "chart-service-account", "user": {"token": token}}],
        "contexts": [{"name": "chart", "context": {"cluster": cluster["name"], "user": "chart-service-account",
                                                    "namespace": namespace}}],
        "current-context": "chart",
    })


class ChartServiceAccount:
    """The chart's ServiceAccount and RBAC for one watched namespace (and its leader election Role for the
    Lease named ``name``), and a kubeconfig acting as it.

    The release lives in the watched namespace (so deleting the namespace removes the Role, RoleBinding
    and account); the cluster-scoped scanning ClusterRole and binding get a per-namespace name and are
    deleted by ``uninstall``.
    """

    def __init__(self, admin_kubeconfig: str, namespace: str, values: Iterable[str] = ()):
        self.admin_kubeconfig = admin_kubeconfig
        self.namespace = namespace
        # Release and object names: short, valid and distinct per namespace (test namespaces are long).
        self.release = f"sa-{hashlib.sha256(namespace.encode()).hexdigest()[:12]}"
        self.values = list(values)
        self.name = self.release  # fullnameOverride: the ServiceAccount and every role are called so

    def rendered(self) -> str:
        """ServiceAccount and RBAC objects of the chart, watching only this namespace."""
        return template(self.release, self.namespace, "--set", f"watchNamespaces={{{self.namespace}}}",
                        "--set", f"fullnameOverride={self.release}",
                        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
                        "--show-only", "templates/leader-election.yaml",
                        *self.values)

    def install(self) -> "ChartServiceAccount":
        kubectl("apply", "-f", "-", kubeconfig=self.admin_kubeconfig, stdin=self.rendered())
        return self

    def uninstall(self) -> None:
        kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", kubeconfig=self.admin_kubeconfig,
                stdin=self.rendered())

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def token(self, seconds: int = 3600) -> str:
        """A bound token of the account from the TokenRequest API."""
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=self.admin_kubeconfig)
        try:
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds))
            response = client.CoreV1Api(api).create_namespaced_service_account_token(self.name, self.namespace, request)
            return response.status.token
        finally:
            api.close()

    def write_kubeconfig(self, path: Path) -> str:
        """Write a kubeconfig authenticating as the account; return its path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token_kubeconfig(self.admin_kubeconfig, self.token(), self.namespace))
        path.chmod(0o600)
        return str(path)
