"""The closed loop end to end, exactly as `make demo` drives it (hack/demo.py run_loop):
train → serve → normal traffic → shifted traffic → DriftDetected → retrain → canary → promoted."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from kube_support import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def load_demo():
    spec = importlib.util.spec_from_file_location("mlops_demo", REPO / "hack" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlops_demo"] = module
    spec.loader.exec_module(module)
    return module


def test_drift_retrain_canary_promote(operator, objects, kubeconfig, namespace):
    demo = load_demo()
    summary = demo.run_loop(demo.Cluster(kubeconfig, namespace), timeout=420)
    assert summary["stable"] == "2"
    assert summary["versions"][:2] == [2, 1]
    assert summary["drift"], "some feature drifted"
    assert all(name.startswith(("petal", "f2", "f3")) for name in summary["drift"]), summary["drift"]
    assert summary["retrainRequest"]
    assert summary["failedRequests"] == 0
    mt = objects.get("ModelTraining", "iris")
    assert mt["status"]["latestRun"]["trigger"].startswith("retrain requested:")
    assert mt["metadata"]["generation"] == 1
    md = objects.get("ModelDeployment", "iris")
    assert md["metadata"]["generation"] == 1
    assert operator.metric("mlops_rollouts_total", result="promoted") >= 1
    assert operator.metric("mlops_retrain_requests_total", name="iris") == 1
