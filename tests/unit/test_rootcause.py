"""Root-cause hints (reconcile/rootcause.py) on recorded scenarios (rootcause_scenarios.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_operator.reconcile.rootcause import (
    Errors,
    Facts,
    FeatureDrift,
    Incident,
    Restart,
    Traffic,
    VersionChange,
    root_cause_hints,
    summarise,
)

SCENARIOS = yaml.safe_load((Path(__file__).parent / "rootcause_scenarios.yaml").read_text())
AT = 1_767_225_600.0


def facts(recorded: dict) -> Facts:
    shift = lambda items: [{**item, "at": AT + item["at"]} for item in items]  # noqa: E731
    return Facts(
        version_changes=[VersionChange(**c) for c in shift(recorded.get("version_changes", []))],
        drift=[FeatureDrift(**d) for d in shift(recorded.get("drift", []))],
        traffic=Traffic(**recorded["traffic"]) if "traffic" in recorded else None,
        errors=Errors(**recorded["errors"]) if "errors" in recorded else None,
        restarts=[Restart(**r) for r in shift(recorded.get("restarts", []))],
        unreachable=recorded.get("unreachable", {}),
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_the_first_hint_of_each_recorded_scenario_and_its_evidence(scenario):
    hints = root_cause_hints(Incident(at=AT, **scenario["incident"]), facts(scenario["facts"]))
    if scenario["first"] is None:
        assert hints == []
        assert summarise(hints).startswith("Likely cause: nothing the operator observed explains it")
        return
    assert hints[0].cause == scenario["first"]
    assert list(hints[0].evidence) == scenario["evidence"]
    assert summarise(hints).startswith(f"Likely cause: {scenario['first']} (evidence: {scenario['evidence'][0]}")


def test_every_hint_cites_evidence_and_the_summary_names_the_runner_up():
    scenario = SCENARIOS[3]
    hints = root_cause_hints(Incident(at=AT, **scenario["incident"]), facts(scenario["facts"]))
    assert [h.cause for h in hints] == ["errors are client-side (4xx): the requests changed, not the server",
                                        "the input changed: 1 feature(s) drifted at the same time"]
    assert all(h.evidence for h in hints)
    assert "feature petal_length drifted (psi 0.41 > 0.2) 60s before the anomaly" in hints[1].evidence
    assert summarise(hints).endswith("Also possible: the input changed: 1 feature(s) drifted at the same time.")


def test_a_version_change_long_ago_or_after_the_incident_is_not_blamed():
    later = Facts(version_changes=[VersionChange(AT + 60, "6", "5", "promoted")])
    assert root_cause_hints(Incident("anomaly", AT, "errorRate"), later) == []
    near, far = (root_cause_hints(Incident("anomaly", AT, "errorRate"),
                                  Facts(version_changes=[VersionChange(AT - ago, "6", "5", "promoted")]))[0].score
                 for ago in (30, 1500))
    assert near > far


def test_a_drift_verdict_cites_a_promotion_just_before_and_its_features_reach_the_deployments_facts():
    from datetime import UTC, datetime, timedelta

    from mlops_operator.api.driftmonitor import DriftMonitorStatus
    from mlops_operator.api.modeldeployment import ModelDeploymentStatus
    from mlops_operator.backends import telemetry
    from mlops_operator.handlers import driftmonitor as handler

    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    deployment_status = ModelDeploymentStatus.model_validate({
        "stableVersion": "3", "previousStableVersion": "2", "lastRollout": {
            "version": "3", "result": "promoted", "started": (now - timedelta(minutes=9)).isoformat(),
            "finished": (now - timedelta(minutes=4)).isoformat()}})
    results = [{"feature": "petal_length", "kind": "numeric", "verdict": "Drift", "samples": 300, "tests": [
        {"test": "psi", "drifted": True, "score": 0.41, "threshold": 0.2},
        {"test": "ks", "drifted": False, "score": 0.05, "threshold": 0.1}]}]
    checked = DriftMonitorStatus.model_validate({"results": results})
    try:
        cause = handler._drift_cause("ns", "iris", deployment_status, checked, now)
        assert cause.startswith("Likely cause: version 3 changed just before"), cause
        assert "(previously 2)" in cause and "4 min before the drift" in cause
        # The drifted feature is now a fact of the deployment: an anomaly there cites it.
        drifted = telemetry.recent_drift("ns", "iris")
        assert [(d.feature, d.test, d.score) for d in drifted] == [("petal_length", "psi", 0.41)]
        facts = telemetry.facts(ModelDeploymentStatus(), None, drifted)
        hints = root_cause_hints(Incident("anomaly", now.timestamp() + 30, "errorRate", "3"), facts)
        assert hints[0].cause == "the input changed: 1 feature(s) drifted at the same time"
        # Nothing to cite: no sentence at all.
        assert handler._drift_cause("ns", "other", ModelDeploymentStatus(), checked, now) is None
    finally:
        telemetry.forget("ns", "iris")
        telemetry.forget("ns", "other")
    assert telemetry.recent_drift("ns", "iris") == []
