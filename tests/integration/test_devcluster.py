"""The local control plane is a real cluster: version, garbage collection, RBAC, idempotent up, clean down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]


def _poll(condition, timeout: float, what: str, interval: float = 0.25):
    """Return condition()'s first truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def dev_only(external_kubeconfig):
    if external_kubeconfig:
        pytest.skip("KUBECONFIG points at an external cluster; this checks the local dev cluster")


def test_discovery_reports_the_built_version(kube_api, dev_only):
    assert client.VersionApi(kube_api).get_code().git_version == "v1.34.4"


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref]))
    )
    unrelated = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="unrelated"))
    )

    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    _poll(dependent_gone, timeout=60, what="the garbage collector to delete the dependent ConfigMap")
    assert core.read_namespaced_config_map("unrelated", namespace).metadata.uid == unrelated.metadata.uid


def _client_with_token(admin: client.ApiClient, token: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = admin.configuration.host
    cfg.ssl_ca_cert = admin.configuration.ssl_ca_cert
    cfg.verify_ssl = admin.configuration.verify_ssl
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(cfg)


def test_rbac_refuses_a_service_account_without_bindings(kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody")))
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    ).status.token

    with _client_with_token(kube_api, token) as as_sa:
        # Authenticated (so a refusal below is authorization, not a bad token) ...
        review = client.AuthenticationV1Api(as_sa).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"

        # ... but not allowed to list secrets.
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(as_sa).list_namespaced_secret(namespace)
        assert refused.value.status == 403

        # A RoleBinding grants exactly that, proving the refusal came from RBAC.
        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(namespace, client.V1Role(
            metadata=client.V1ObjectMeta(name="read-secrets"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
        ))
        rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="nobody-reads-secrets"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-secrets"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace=namespace)],
        ))

        def allowed() -> bool:
            try:
                client.CoreV1Api(as_sa).list_namespaced_secret(namespace)
            except ApiException as err:
                if err.status == 403:
                    return False
                raise
            return True

        _poll(allowed, timeout=30, what="the RoleBinding to take effect")
        with pytest.raises(ApiException) as still_refused:
            client.CoreV1Api(as_sa).list_namespaced_secret("default")
        assert still_refused.value.status == 403


def _cli(command: str, dev_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["MLOPS_DEV_DIR"] = str(dev_dir)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "hack" / "devcluster.py"), command],
        env=env, capture_output=True, text=True, timeout=300,
    )


def _pids(status: dict) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in status["processes"]}


def test_up_again_keeps_the_running_cluster(kubeconfig, devcluster, dev_only):
    before = devcluster.cluster_status()
    assert before["ready"]

    t0 = time.monotonic()
    result = _cli("up", devcluster.dev_dir())
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr
    assert "started " not in result.stderr  # no process was (re)started

    after = devcluster.cluster_status()
    assert _pids(after) == _pids(before)
    assert all(p["running"] for p in after["processes"])
    assert devcluster.ensure_cluster() == Path(kubeconfig)
    print(f"second up took {elapsed:.2f}s")


def _gone(proc: dict) -> bool:
    """The recorded process no longer exists (or its pid now belongs to something else)."""
    try:
        argv0 = Path(f"/proc/{proc['pid']}/cmdline").read_bytes().split(b"\0")[0]
    except FileNotFoundError:
        return True
    return argv0.decode() != proc["binary"]


@pytest.mark.slow
def test_second_cluster_recovers_from_a_dead_process_and_down_leaves_nothing(devcluster, tmp_path, dev_only):
    """Runs a separate cluster in its own state dir, so the session cluster is untouched."""
    d = tmp_path / "dev"
    try:
        kubeconfig = devcluster.ensure_cluster(d)
        assert kubeconfig == d / "kubeconfig"
        first = devcluster.cluster_status(d)
        assert first["ready"]

        # A partly dead cluster (controller-manager killed) is replaced on the next up.
        kcm = next(p for p in first["processes"] if p["name"] == "kube-controller-manager")
        os.kill(kcm["pid"], 9)
        _poll(lambda: (devcluster._reap(kcm["pid"]), _gone(kcm))[1], timeout=10, what="kcm to die")
        devcluster.ensure_cluster(d)
        second = devcluster.cluster_status(d)
        assert second["ready"]
        assert set(_pids(second).values()).isdisjoint(_pids(first).values())
        assert all(_gone(p) for p in first["processes"])

        assert devcluster.stop_cluster(d) is True
    finally:
        status = devcluster.cluster_status(d)
        if status:
            devcluster.stop_cluster(d)

    assert all(_gone(p) for p in second["processes"])
    assert not (d / "state.json").exists()
    assert not (d / "etcd").exists()
    assert (d / "pki" / "ca.crt").exists()  # certificates are kept for the next up
    assert devcluster.stop_cluster(d) is False
