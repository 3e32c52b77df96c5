"""Shared fixtures for tests that need a Kubernetes API.

``kubeconfig`` uses ``$KUBECONFIG`` when set (any existing cluster), otherwise it brings up the
local dev cluster (hack/devcluster.py: real etcd, kube-apiserver, kube-controller-manager).

Session end: the dev cluster is left running, whether this session started it or found it, so
the next run starts in seconds; stop it with ``make cluster-down`` (``hack/devcluster.py down``). Set
``MLOPS_DEV_TEARDOWN=1`` to stop it at session end if this session started it (e.g. in CI).

Mark tests that use these fixtures with ``@pytest.mark.cluster``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_devcluster() -> ModuleType:
    """Import hack/devcluster.py by path (hack/ is not a package)."""
    name = "mlops_devcluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "hack" / "devcluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def devcluster() -> ModuleType:
    """The hack/devcluster.py module (ensure_cluster, stop_cluster, cluster_status, ...)."""
    return load_devcluster()


@pytest.fixture(scope="session")
def external_kubeconfig() -> str | None:
    """``$KUBECONFIG`` as it was when the session started; None means the dev cluster is used."""
    return os.environ.get("KUBECONFIG") or None


@pytest.fixture(scope="session")
def kubeconfig(external_kubeconfig: str | None, devcluster: ModuleType) -> Iterator[str]:
    """Path of a kubeconfig for a live cluster with admin rights."""
    if external_kubeconfig:
        yield external_kubeconfig
        return
    was_running = devcluster.cluster_status() is not None
    path = devcluster.ensure_cluster()
    yield str(path)
    if os.environ.get("MLOPS_DEV_TEARDOWN") == "1" and not was_running:
        devcluster.stop_cluster()


@pytest.fixture
def kubeconfig_env(kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Exports ``KUBECONFIG`` for this test only (for code that loads the default config, e.g. kopf)."""
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    return kubeconfig


@pytest.fixture(scope="session")
def kube_api(kubeconfig: str) -> Iterator["kubernetes.client.ApiClient"]:  # noqa: F821
    """A ``kubernetes.client.ApiClient`` for the session's cluster (admin)."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


def _namespace_name(nodeid: str) -> str:
    """A DNS-1123 label from the test's name plus a random suffix (unique per test run)."""
    base = re.sub(r"[^a-z0-9-]+", "-", nodeid.rsplit("::", 1)[-1].lower()).strip("-")
    return f"t-{base[:45].rstrip('-')}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(kube_api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, uniquely named namespace for one test; deleted afterwards (without waiting)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube_api)
    name = _namespace_name(request.node.nodeid)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"mlops.dev/test": "true"}))
    )
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["S3Server"]:  # noqa: F821
    """A real S3 server (MinIO from its Go module) on a free loopback port, with generated
    credentials and an empty bucket; stopped at session end. Built on first use (cached)."""
    from s3_support import S3Server, minio_binary

    binary = minio_binary()
    server = S3Server(binary, tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch) -> "S3Server":  # noqa: F821
    """The S3 server's credentials and endpoint in this test's environment (botocore/s3fs read them,
    and so do the processes the operator starts); fsspec's cached S3 filesystems are dropped so the
    next one is made with these settings."""
    from s3fs import S3FileSystem

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()
    yield s3_server
    S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def kfp_backend(kubeconfig: str, kube_api, s3_server, tmp_path_factory: pytest.TempPathFactory):
    """The real KFP API server, ScheduledWorkflow controller and persistence agent (KFP 2.17.0, built
    from source by hack/build-kfp.sh, cached) with MariaDB and the session's S3 server, against the
    session's cluster (tests/kfp_server_support.py). Skips with the reason when it cannot run here
    (no KFP source, not root), fails instead under CI=true. Everything is stopped at session end."""
    from contextlib import ExitStack

    from kfp_server_support import KfpUnavailable, in_ci, start_kfp

    with ExitStack() as stack:
        try:
            backend = start_kfp(kubeconfig, kube_api, s3_server, tmp_path_factory.mktemp("kfp"), stack)
        except KfpUnavailable as reason:
            if in_ci():
                pytest.fail(f"{reason} (CI=true: the real KFP server tests must run in CI)", pytrace=False)
            pytest.skip(str(reason))
        yield backend
