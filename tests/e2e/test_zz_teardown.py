"""Last e2e tests: a node whose kubelet and containerd died is replaced by `up`, and `cluster-down`
stops every process of the node and undoes every host change."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from chart_support import kubectl
from kube_support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _state(node_cluster) -> dict:
    return json.loads((node_cluster.dev_dir / "state.json").read_text())


def test_up_replaces_a_node_that_died(node_cluster, node_kubeconfig):
    """kubelet and containerd killed with a Pod running (its shim and processes stay behind):
    `up` cleans the host and starts a Ready node again."""
    devcluster, devnode = node_cluster.devcluster, node_cluster.devnode
    base = node_cluster.image("base")
    kubectl("run", "sleeper", "-n", "default", f"--image={base.ref}", "--image-pull-policy=Never",
            "--restart=Never", "--", "sleep", "3600", kubeconfig=node_kubeconfig)
    wait_until(lambda: kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.phase}",
                               kubeconfig=node_kubeconfig).stdout == "Running", timeout=120, what="sleeper Running")
    assert devnode._pod_pids()
    for p in _state(node_cluster)["processes"]:
        if p["name"] in ("kubelet", "containerd"):
            os.kill(p["pid"], signal.SIGKILL)

    devcluster.ensure_cluster(node_cluster.dev_dir, node=True)

    state = _state(node_cluster)
    assert state["node"] and {p["name"] for p in state["processes"]} >= set(devnode.NODE_COMPONENTS)
    assert not devnode._pod_pids(), "the dead node's Pod processes were left running"
    node_cluster.kubeconfig = str(devcluster.kubeconfig_path(node_cluster.dev_dir))


def test_cluster_down_leaves_nothing_behind(node_cluster):
    devcluster, devnode = node_cluster.devcluster, node_cluster.devnode
    record = devnode.read_record()
    assert record and Path(record["owner"]) == node_cluster.dev_dir
    state = _state(node_cluster)
    pids = [p["pid"] for p in state["processes"]]
    assert {p["name"] for p in state["processes"]} >= set(devnode.NODE_COMPONENTS)
    assert devnode.host_snapshot()["bridge"]

    devcluster.stop_cluster(node_cluster.dev_dir)

    assert not [pid for pid in pids if _alive(pid)]
    assert not devnode._pod_pids(), "processes left in kubepods cgroups"
    assert not devnode._shim_pids(record["containerd_socket"]), "containerd shims left"
    after = devnode.host_snapshot()
    assert after["chains"] == {"iptables": [], "ip6tables": []}
    assert after["mounts"] == []
    assert after["cgroups"] == []
    assert after["netns"] == []
    assert after["bridge"] is False
    assert after["record"] is False
    assert after["sysctls"] == record["sysctls"]
    assert not [p for p in record["absent_paths"] if os.path.exists(p)]
    assert not (node_cluster.dev_dir / "node" / "containerd").exists()
    assert not node_cluster.images.storage_mounts(), "buildah left mounts"
