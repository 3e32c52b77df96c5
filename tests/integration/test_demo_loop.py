"""The closed loop end to end, exactly as `make demo` drives it (hack/demo.py run_loop):
train → serve → normal traffic → shifted, labelled traffic → DriftDetected → retrain on the
labelled production window → v2 beats v1 there → canary → promoted → NoDrift against v2 while the
shifted traffic continues."""

from __future__ import annotations

import json

import pytest

from kube_support import load_demo

# The whole loop trains twice, starts model servers and waits for a canary and two drift verdicts:
# longer than the suite's default per-test timeout on a loaded 2-core machine.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1200)]


def test_drift_retrain_on_new_data_canary_promote_no_drift(operator, objects, kubeconfig, namespace, tmp_path):
    demo = load_demo()
    summary = demo.run_loop(demo.Cluster(kubeconfig, namespace), timeout=420, labels_dir=tmp_path / "labels")
    assert summary["stable"] == "2"
    assert summary["versions"][:2] == [2, 1]
    assert summary["failedRequests"] == 0

    # The shift was seen as drift against v1: the petals, and v1's live accuracy.
    assert summary["drift"], "some feature drifted"
    assert all(name.startswith(("petal", "f2", "f3")) for name in summary["drift"]), summary["drift"]
    assert summary["driftDetected"]["modelVersion"] == "1"

    # v2 learnt from labelled production rows v1 never saw, and the checks left the glitches out.
    run = summary["run"]
    assert run["trigger"].startswith("retrain requested:")
    sources = {source["name"]: source for source in run["sources"]}
    assert sources["production"]["rows"] >= 300 and len(sources["production"]["digest"]) == 64
    assert sources["production"]["rejectedRows"] == 4, sources["production"]
    assert run["retrainWindow"]["monitor"] == "iris" and run["retrainWindow"]["start"]
    assert any(f.startswith("petal") for f in run["retrainWindow"]["driftedFeatures"])

    # Both models scored on the same shifted holdout: v2 measurably better.
    comparison = run["comparison"]
    assert comparison["holdout"] == "production" and comparison["holdoutRows"] >= 50
    assert comparison["champion"]["version"] == 1
    v1_accuracy = comparison["champion"]["metrics"]["accuracy"]
    v2_accuracy = comparison["challenger"]["metrics"]["accuracy"]
    assert v2_accuracy >= 0.85 and v2_accuracy - v1_accuracy >= 0.3, comparison

    # The lineage of v2 records every source and the comparison.
    lineage = json.loads(open(run["modelUri"].removeprefix("file://").rstrip("/") + "/lineage.json").read())
    assert [s["name"] for s in lineage["sources"]] == ["base", "production"]
    assert lineage["sources"][1]["digest"] == sources["production"]["digest"]
    assert lineage["mix"]["production"] > 0 and lineage["holdout"]["source"] == "production"

    # After promotion the shifted traffic is no longer drift: it is what v2 was trained on.
    assert summary["driftAfter"]["phase"] == "NoDrift" and summary["driftAfter"]["modelVersion"] == "2"
    mt = objects.get("ModelTraining", "iris")
    assert mt["metadata"]["generation"] == 1
    md = objects.get("ModelDeployment", "iris")
    assert md["metadata"]["generation"] == 1
    assert operator.metric("mlops_rollouts_total", result="promoted") >= 1
    assert operator.metric("mlops_retrain_requests_total", name="iris") == 1
