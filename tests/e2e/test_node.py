"""The local node itself: a locally built image runs, Pods resolve Service names through CoreDNS
and reach the API server through the `kubernetes` Service, logs come back through the kubelet."""

from __future__ import annotations

import pytest

from chart_support import kubectl
from kube_support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROBE = """
import socket, sys
print("resolved", socket.gethostbyname("kubernetes.default.svc.cluster.local"), flush=True)
with socket.create_connection(("kubernetes.default", 443), timeout=10):
    print("connected to the API server through its Service", flush=True)
import time; time.sleep(3600)
"""


def test_kubectl_run_of_a_local_image_reaches_running(node_cluster, node_kubeconfig):
    base = node_cluster.image("base")
    ns = "e2e-kubectl-run"
    kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", kubeconfig=node_kubeconfig)
    kubectl("create", "namespace", ns, kubeconfig=node_kubeconfig)
    try:
        kubectl("run", "probe", "-n", ns, f"--image={base.ref}", "--image-pull-policy=Never", "--restart=Never",
                "--", "python3", "-c", PROBE, kubeconfig=node_kubeconfig)

        def phase() -> str | None:
            out = kubectl("get", "pod", "probe", "-n", ns, "-o", "jsonpath={.status.phase}",
                          kubeconfig=node_kubeconfig).stdout
            assert out not in ("Failed", "Succeeded"), kubectl("describe", "pod", "probe", "-n", ns,
                                                               kubeconfig=node_kubeconfig).stdout
            return out == "Running" or None

        wait_until(phase, timeout=120, what="pod probe Running")

        def logs() -> str | None:
            text = kubectl("logs", "probe", "-n", ns, kubeconfig=node_kubeconfig, check=False).stdout
            return text if "connected" in text else None

        text = wait_until(logs, timeout=60, what="the probe's log")
        assert "resolved 10.0.0.1" in text  # the kubernetes Service's ClusterIP, from CoreDNS
        node = kubectl("get", "pod", "probe", "-n", ns, "-o", "jsonpath={.spec.nodeName} {.status.podIP}",
                       kubeconfig=node_kubeconfig).stdout.split()
        assert node[0] == node_cluster.devnode.NODE_NAME
        assert node[1].startswith("10.244.0.")
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", kubeconfig=node_kubeconfig, check=False)
