"""Seldon Core v1.17.1, installed on a test cluster the way a platform team installs it from its chart.

The source tree comes from the setting ``MLOPS_SELDON_SRC`` (hack/seldon.py: the Go module proxy
refuses Seldon's module). From it:

- ``seldon_crd_manifest``: the SeldonDeployment CRD of ``operator/config/crd/bases`` with Seldon's own
  ``config/crd/patches/graph_children.yaml`` applied (the raw file is refused by kube-apiserver; the
  patched one equals the chart's CRD);
- ``SeldonInstall``: ``helm template`` of ``helm-charts/seldon-core-operator`` with our images in its
  values (executor, MLServer for SKLEARN_SERVER v2, the rclone storage initializer), from which the
  ServiceAccount, the ``seldon-config`` ConfigMap, the ClusterRoles/Roles and their bindings and the
  ValidatingWebhookConfiguration are applied; the webhook gets a certificate made here (``cryptography``)
  and points at the controller by URL, because the controller runs as a **host process** (the binary
  hack/seldon.py builds, the chart Deployment's env and flags) authenticated as the chart's ServiceAccount
  with a TokenRequest token, so it has exactly the chart's RBAC.

Without a source tree the tests that need it skip with the setting's name, and fail under ``CI=true``.
"""

from __future__ import annotations

import base64
import copy
import datetime
import importlib.util
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_support import REPO, install_crds, wait_until
from server_support import LoopbackServer, ServerError, free_ports

SELDON_CRD_NAME = "seldondeployments.machinelearning.seldon.io"
SELDON_NAMESPACE = "seldon-system"
CRD_BASE = "operator/config/crd/bases/machinelearning.seldon.io_seldondeployments.yaml"
CRD_PATCH = "operator/config/crd/patches/graph_children.yaml"
CHART = "helm-charts/seldon-core-operator"
WEBHOOK_PATH = "/validate-machinelearning-seldon-io-v1-seldondeployment"
# The chart's objects we apply: its Deployment, Service, Secret (a helm-generated certificate for the
# in-cluster Service) are replaced by the host process and our certificate.
CHART_KINDS = ("ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
               "ValidatingWebhookConfiguration")


def _hack(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"mlops_hack_{name}", REPO / "hack" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


seldon_build = _hack("seldon")


def source_or_skip() -> Path:
    """The Seldon source tree; skip with the setting's name when absent (fail under CI=true)."""
    try:
        return seldon_build.source_dir()
    except seldon_build.SeldonSourceMissing as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{err} (CI=true: the Seldon tests must run in CI)", pytrace=False)
        pytest.skip(str(err))


def _json_pointer_replace(doc: Any, path: str, value: Any) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    target = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        if last not in target:
            raise KeyError(f"JSON6902 replace: {path} does not exist")
        target[last] = value


def patched_crd(src: Path) -> dict[str, Any]:
    """Seldon's CRD with its graph_children.yaml JSON6902 patch applied (what its kustomize and chart do)."""
    crd = next(d for d in yaml.safe_load_all((src / CRD_BASE).read_text())
               if d and d.get("metadata", {}).get("name") == SELDON_CRD_NAME)
    for op in yaml.safe_load((src / CRD_PATCH).read_text()):
        assert op["op"] == "replace", op["op"]
        _json_pointer_replace(crd, op["path"], op["value"])
    crd.get("metadata", {}).pop("creationTimestamp", None)
    crd.get("metadata", {}).pop("annotations", None)  # cert-manager CA injection: not used
    crd.pop("status", None)
    return crd


def install_seldon_crd(kube_api: Any, manifest: dict[str, Any]) -> None:
    """Create (or replace) the CRD and wait until it is Established and served. The same CRD installed
    already (a digest in an annotation) is left alone: replacing 1 MB of schema takes seconds."""
    import hashlib

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    manifest = copy.deepcopy(manifest)
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    manifest.setdefault("metadata", {}).setdefault("annotations", {})["mlops.dev/manifest-hash"] = digest
    try:
        live = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(SELDON_CRD_NAME)
        same = (live.metadata.annotations or {}).get("mlops.dev/manifest-hash") == digest
    except ApiException as err:
        if err.status != 404:
            raise
        same = False
    if not same:
        install_crds(kube_api, [manifest], what="Seldon CRD")

    custom = client.CustomObjectsApi(kube_api)

    def served() -> bool:
        try:
            custom.list_cluster_custom_object("machinelearning.seldon.io", "v1", "seldondeployments", limit=1)
            return True
        except client.exceptions.ApiException:
            return False

    wait_until(served, timeout=60, interval=0.2, what="SeldonDeployments served")


# ---------------------------------------------------------------- the webhook certificate


def webhook_certificate(directory: Path) -> bytes:
    """A CA and a serving certificate for 127.0.0.1 in controller-runtime's cert dir; returns the CA PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seldon-webhook-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seldon-webhook-service")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()))
    (directory / "tls.key").chmod(0o600)
    return ca.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------- the chart


def chart_values(images: dict[str, str], extra: dict[str, str] | None = None) -> list[str]:
    """``helm --set`` values that point seldon-config at our images (refs ``name:tag``), and ``extra``
    values (e.g. ``istio.enabled``)."""
    executor_repo, executor_tag = images["executor"].rsplit(":", 1)
    registry, repository = executor_repo.split("/", 1)
    mlserver_image, mlserver_tag = images["mlserver"].rsplit(":", 1)
    values = {
        "executor.image.registry": registry, "executor.image.repository": repository,
        "executor.image.tag": executor_tag, "executor.image.pullPolicy": "Never",
        # Frugal requests on a 2-core node (the chart's default is 500m/512Mi per executor).
        "executor.resources.cpuRequest": "50m", "executor.resources.memoryRequest": "64Mi",
        "storageInitializer.image": images["rclone"], "storageInitializer.cpuRequest": "10m",
        "predictor_servers.SKLEARN_SERVER.protocols.v2.image": mlserver_image,
        "predictor_servers.SKLEARN_SERVER.protocols.v2.defaultImageVersion": mlserver_tag,
        "certManager.enabled": "false", "usageMetrics.enabled": "false",
        **(extra or {}),
    }
    return [a for k, v in values.items() for a in ("--set-string", f"{k}={v}")]


def render_chart(src: Path, helm: Path, images: dict[str, str], extra: dict[str, str] | None = None
                 ) -> list[dict[str, Any]]:
    out = subprocess.run([str(helm), "template", "seldon-core", str(src / CHART), "-n", SELDON_NAMESPACE,
                          *chart_values(images, extra)], capture_output=True, text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise ServerError(f"helm template {src / CHART} failed: {out.stderr[-2000:]}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class SeldonInstall(LoopbackServer):
    """Seldon Core's chart objects applied to a cluster and its controller running as a host process."""

    name = "seldon-manager"
    error = ServerError

    def __init__(self, kube_api: Any, kubeconfig: str, workdir: Path, images: dict[str, str], helm: Path,
                 values: dict[str, str] | None = None):
        self.src = source_or_skip()
        self.bin_dir = seldon_build.build(self.src)
        super().__init__(self.bin_dir / "manager", workdir)
        self.kube_api = kube_api
        self.kubeconfig = kubeconfig
        self.images = images
        self.helm = helm
        self.values = dict(values or {})
        self.objects = render_chart(self.src, helm, images, self.values)
        self.deployment = next(d for d in self.objects if d["kind"] == "Deployment")

    def apply_chart(self, webhook_port: int, ca_pem: bytes) -> None:
        from kubernetes import client, utils
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.kube_api)
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SELDON_NAMESPACE)))
        except ApiException as err:
            if err.status != 409:
                raise
        install_seldon_crd(self.kube_api, patched_crd(self.src))
        for doc in self.objects:
            if doc["kind"] not in CHART_KINDS:
                continue
            doc = copy.deepcopy(doc)
            if doc["kind"] == "ValidatingWebhookConfiguration":
                for hook in doc["webhooks"]:
                    hook["clientConfig"] = {"url": f"https://127.0.0.1:{webhook_port}{WEBHOOK_PATH}",
                                            "caBundle": base64.b64encode(ca_pem).decode()}
                admission = client.AdmissionregistrationV1Api(self.kube_api)
                try:
                    admission.delete_validating_webhook_configuration(doc["metadata"]["name"])
                except ApiException as err:
                    if err.status != 404:
                        raise
                admission.create_validating_webhook_configuration(doc)
                continue
            try:
                utils.create_from_dict(self.kube_api, doc, namespace=SELDON_NAMESPACE)
            except utils.FailToCreateError as err:
                if any(e.status != 409 for e in err.api_exceptions):
                    raise

    def token_kubeconfig(self) -> Path:
        """A kubeconfig for the chart's ServiceAccount (a bound token from the TokenRequest API)."""
        from kubernetes import client

        sa = self.deployment["spec"]["template"]["spec"]["serviceAccountName"]
        token = client.CoreV1Api(self.kube_api).create_namespaced_service_account_token(
            sa, SELDON_NAMESPACE, client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=6 * 3600))).status.token
        admin = yaml.safe_load(Path(self.kubeconfig).read_text())
        context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
        cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
        path = self.workdir / "seldon-manager.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
            "current-context": sa}))
        path.chmod(0o600)
        return path

    def env(self) -> dict[str, str]:
        """The chart Deployment's env, with the values its fieldRefs would give a Pod."""
        container = self.deployment["spec"]["template"]["spec"]["containers"][0]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[item["name"]] = SELDON_NAMESPACE
        return env

    def start(self, timeout: float = 120) -> "SeldonInstall":
        self.workdir.mkdir(parents=True, exist_ok=True)
        webhook_port, metrics_port = free_ports(2)
        tmp = self.workdir / "tmp"
        # controller-runtime 0.11 reads the serving certificate from $TMPDIR/k8s-webhook-server/serving-certs.
        ca_pem = webhook_certificate(tmp / "k8s-webhook-server" / "serving-certs")
        self.apply_chart(webhook_port, ca_pem)
        env = {**self.env(), "KUBECONFIG": str(self.token_kubeconfig()), "TMPDIR": str(tmp)}
        # The chart's flags without leader election (one controller) and with loopback ports.
        self.spawn([str(self.binary), f"--webhook-port={webhook_port}", f"--metrics-addr=127.0.0.1:{metrics_port}",
                    "--create-resources=false", f"--log-level={env.get('MANAGER_LOG_LEVEL', 'INFO')}"], env=env)
        self.port = webhook_port
        try:
            self.wait_ok(f"http://127.0.0.1:{metrics_port}/metrics", timeout)
            self._wait_webhook(ca_pem, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_webhook(self, ca_pem: bytes, timeout: float) -> None:
        context = ssl.create_default_context(cadata=ca_pem.decode())
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    with context.wrap_socket(sock, server_hostname="127.0.0.1"):
                        return
            except OSError:
                if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                    raise ServerError(f"Seldon's webhook did not answer on {self.port}:\n{self.log_tail()}") from None
                time.sleep(0.2)

    def config(self) -> dict[str, Any]:
        """The seldon-config ConfigMap as applied (JSON values decoded)."""
        cm = next(d for d in self.objects if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "seldon-config")
        return {k: json.loads(v) for k, v in cm["data"].items()}

    def uninstall(self) -> None:
        """Stop the controller and remove the cluster-scoped objects the chart made (CRD stays)."""
        self.stop()
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        for doc in self.objects:
            kind, name = doc["kind"], doc["metadata"]["name"]
            try:
                if kind == "ValidatingWebhookConfiguration":
                    client.AdmissionregistrationV1Api(self.kube_api).delete_validating_webhook_configuration(name)
                elif kind == "ClusterRole":
                    client.RbacAuthorizationV1Api(self.kube_api).delete_cluster_role(name)
                elif kind == "ClusterRoleBinding":
                    client.RbacAuthorizationV1Api(self.kube_api).delete_cluster_role_binding(name)
            except ApiException as err:
                if err.status != 404:
                    raise
        try:
            client.CoreV1Api(self.kube_api).delete_namespace(SELDON_NAMESPACE)
        except ApiException as err:
            if err.status != 404:
                raise


__all__ = ["REPO", "SeldonInstall", "install_seldon_crd", "patched_crd", "source_or_skip", "SELDON_CRD_NAME"]
