"""The e2e tests: a real node (hack/devnode.py), the project's image built from its Dockerfile
(hack/images.py) and the operator installed by its Helm chart as a Pod.

One node per test run, started once (``node_cluster``), with its own control plane in
``<repo>/.dev-e2e`` (``MLOPS_E2E_DEV_DIR``), or the node that ``make cluster-up NODE=1`` started for
this checkout. Only one node can run per machine: if another checkout's node runs, the tests stop
with a message naming it. The node is stopped at session end when this session started it, unless
``MLOPS_E2E_KEEP_NODE=1``; ``test_zz_teardown.py`` (last) stops it itself and checks the host.

When the node cannot start here (not root, no cgroups, no apt-get for containerd) the tests are
skipped with the exact reason on a developer's machine and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest

from conftest import load_devcluster
from kube_support import REPO

SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Node bring-up, image build and import times, image sizes: printed after the run."""
    for line in SUMMARY:
        terminalreporter.write_line(line)


@dataclass
class NodeCluster:
    devcluster: ModuleType
    devnode: ModuleType
    images: ModuleType
    dev_dir: Path
    kubeconfig: str
    started_here: bool
    timings: dict[str, float] = field(default_factory=dict)
    image_refs: dict[str, Any] = field(default_factory=dict)

    def image(self, name: str) -> Any:
        """A locally built image (pause, base, operator), imported into the node's containerd."""
        if name not in self.image_refs:
            start = time.monotonic()
            img = self.images.BUILDERS[name]()
            self.timings[f"image {name} ({'built' if img.built else 'cached'})"] = time.monotonic() - start
            start = time.monotonic()
            self.devnode.import_images(self.dev_dir, [img])
            self.timings[f"import {name}"] = time.monotonic() - start
            self.image_refs[name] = img
        return self.image_refs[name]

    def stopped(self) -> bool:
        return self.devcluster.cluster_status(self.dev_dir) is None


@pytest.fixture(scope="session")
def node_cluster(request: pytest.FixtureRequest) -> Iterator[NodeCluster]:
    devcluster = load_devcluster()
    devnode = devcluster.devnode
    import images  # hack/ is on sys.path once devcluster is loaded

    reason = devnode.why_not_possible()
    if reason:
        message = f"the local node cannot start on this machine: {reason}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: the e2e tests must run in CI)", pytrace=False)
        pytest.skip(message)

    # A node that `make cluster-up NODE=1` started for this checkout is used as it is.
    rec = devnode.read_record()
    own = devcluster.dev_dir()
    if rec and Path(rec["owner"]) == own and (devcluster.cluster_status(own) or {}).get("node"):
        dev_dir = own
    else:
        dev_dir = Path(os.environ.get("MLOPS_E2E_DEV_DIR") or REPO / ".dev-e2e").resolve()
    was_running = devcluster.cluster_status(dev_dir) is not None
    start = time.monotonic()
    try:
        kubeconfig = devcluster.ensure_cluster(dev_dir, node=True)
    except (devcluster.DevClusterError, devnode.NodeError) as err:
        pytest.fail(f"the local node did not start: {err}", pytrace=False)
    cluster = NodeCluster(devcluster, devnode, images, dev_dir, str(kubeconfig), not was_running)
    cluster.timings["node up" + (" (reused)" if was_running else "")] = time.monotonic() - start
    yield cluster

    SUMMARY.append("e2e timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items()))
    for img in cluster.image_refs.values():
        SUMMARY.append(f"e2e image {img.ref}: {img.size_mib():.0f} MiB (docker-archive, uncompressed)")
    if cluster.started_here and not cluster.stopped() and os.environ.get("MLOPS_E2E_KEEP_NODE") != "1":
        devcluster.stop_cluster(dev_dir)


@pytest.fixture(scope="session")
def node_kubeconfig(node_cluster: NodeCluster) -> str:
    return node_cluster.kubeconfig


@pytest.fixture(scope="session")
def node_api(node_kubeconfig: str) -> Iterator[Any]:
    from kubernetes import config

    api = config.new_client_from_config(config_file=node_kubeconfig)
    yield api
    api.close()


@pytest.fixture
def node_namespace(node_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace under Pod Security ``restricted`` (enforced), deleted afterwards."""
    from kubernetes import client

    from conftest import _namespace_name

    core = client.CoreV1Api(node_api)
    name = _namespace_name(request.node.nodeid)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={
        "mlops.dev/test": "true",
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    })))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def s3(node_cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """MinIO on the node's bridge address: the host and the Pods reach it (bucket ``models``)."""
    from s3_support import S3Server, minio_binary

    server = S3Server(minio_binary(), tmp_path_factory.mktemp("minio"), bucket="models",
                      host=node_cluster.devnode.NODE_IP)
    server.start()
    yield server
    server.stop()
