"""AIOps status of a ModelDeployment (reconcile/aiops.py): anomalies in status, the Anomalous
condition, the post-promotion guard and the cost per 1,000 predictions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.api.modeldeployment import ModelDeploymentStatus
from mlops_operator.reconcile import aiops
from mlops_operator.reconcile.anomaly import METRICS, Series
from mlops_operator.reconcile.conditions import find_condition

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def open_anomaly(version: str = "2", metric: str = "errorRate", since: datetime = NOW - timedelta(seconds=90)):
    series = Series(METRICS[metric], version=version)
    start = since.timestamp() - 40 * 30
    for i in range(40):
        series.observe(start + i * 30, 0.001, samples=500)
    opened = None
    for i in range(4):
        opened = opened or series.observe(since.timestamp() + 30 * i, 0.4, samples=500).opened
    return opened


def promoted(version: str = "2", previous: str = "1", ago: int = 120, **extra) -> ModelDeploymentStatus:
    finished = (NOW - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ModelDeploymentStatus.model_validate({
        "stableVersion": version, "previousStableVersion": previous, "rejectedVersions": [],
        "lastRollout": {"version": version, "result": "promoted", "started": finished, "finished": finished},
        **extra})


def test_an_anomaly_after_a_promotion_rolls_back_or_asks_for_approval():
    anomaly = open_anomaly()
    verdict = aiops.guard(promoted(), [anomaly], bake_seconds=600, guarded=["errorRate"], approval="automatic",
                          now=NOW, cause="Likely cause: a model server restarted (evidence: ...).")
    assert verdict.action == "rollback" and (verdict.stable, verdict.previous) == ("2", "1")
    assert verdict.message.startswith("Rolling back from version 2 to version 1 automatically: version 2 errorRate 40%")
    assert "120s after version 2 was promoted (bake period 600s)" in verdict.message
    assert verdict.message.endswith("Likely cause: a model server restarted (evidence: ...)..")
    manual = aiops.guard(promoted(), [anomaly], bake_seconds=600, guarded=["errorRate"], approval="manual", now=NOW)
    assert manual.action == "await-approval" and "mlops.dev/rollback=2" in manual.message


@pytest.mark.parametrize(("status", "kwargs"), [
    (promoted(ago=700), {}),                                      # after the bake period
    (promoted(), {"bake_seconds": 0}),                            # guard off
    (promoted(), {"guarded": ["latencyP99Ms"]}),                  # another metric
    (promoted(candidateVersion="3"), {}),                         # a rollout in flight decides itself
    (promoted(previous=None), {}),                                # nothing to return to
    (promoted(rejectedVersions=["1"]), {}),                       # the previous version was rejected
    (promoted().model_copy(update={"last_rollout": promoted().last_rollout.model_copy(update={"result": "rolledback"})}),
     {}),                                                         # not a promotion
])
def test_the_guard_stays_out_of_it(status, kwargs):
    args = {"bake_seconds": 600, "guarded": ["errorRate"], "approval": "automatic", "now": NOW, **kwargs}
    assert aiops.guard(status, [open_anomaly()], **args) is None


def test_an_anomaly_of_another_version_or_from_before_the_promotion_is_not_the_new_versions_fault():
    args = {"bake_seconds": 600, "guarded": ["errorRate"], "approval": "automatic", "now": NOW}
    assert aiops.guard(promoted(), [open_anomaly(version="1")], **args) is None
    assert aiops.guard(promoted(), [open_anomaly(since=NOW - timedelta(seconds=300))], **args) is None


def test_anomalies_in_status_are_bounded_keep_their_cause_and_the_condition_names_the_first():
    anomaly = open_anomaly()
    first = aiops.anomaly_record(anomaly, "Likely cause: version 2 changed just before (evidence: x).")
    assert first["metric"] == "errorRate" and first["version"] == "2" and first["observed"] == 0.4
    assert first["low"] < first["expected"] < first["high"] < 0.4 and first["since"].endswith("Z")
    # A later write without the cause keeps it.
    again = aiops.anomalies_status([first], [aiops.anomaly_record(anomaly)], [])
    assert again[0]["cause"] == first["cause"]
    conditions = aiops.anomalous_condition([], again, generation=3, now=NOW, enabled=True)
    anomalous = find_condition(conditions, "Anomalous")
    assert anomalous["status"] == "True" and anomalous["reason"] == "AnomalyDetected"
    assert anomalous["message"].startswith("version 2 errorRate 40% is above its band: expected 0.1% (at most 2.1%;")
    assert anomalous["message"].endswith("Likely cause: version 2 changed just before (evidence: x).")
    # Closed ones follow, newest first, and the list stays bounded.
    closed = [{**first, "since": f"2026-11-29T09:{i:02d}:00Z", "closed": f"2026-11-29T09:{i:02d}:30Z"}
              for i in range(15)]
    listed = aiops.anomalies_status(closed, [first], [])
    assert len(listed) == aiops.MAX_ANOMALIES and listed[0] == first
    assert [r["closed"] for r in listed[1:3]] == ["2026-11-29T09:14:30Z", "2026-11-29T09:13:30Z"]
    quiet = find_condition(aiops.anomalous_condition(conditions, [], generation=3, now=NOW, enabled=True), "Anomalous")
    assert quiet["status"] == "False" and quiet["reason"] == "NoAnomaly"


def test_cost_per_thousand_predictions_from_the_observed_rate():
    estimate = {"amount": 60.74, "currency": "USD", "instanceType": "t3.large", "basis": "b"}
    cost = aiops.cost_status(estimate, 2.0)
    assert cost["monthly"] == 60.74 and cost["requestsPerSecond"] == 2.0
    assert cost["perThousandPredictions"] == pytest.approx(60.74 / (2 * 3600 * 730) * 1000, abs=1e-6)
    assert "perThousandPredictions" not in aiops.cost_status(estimate, 0.0)
    assert aiops.cost_status(None, 2.0) is None


def test_placement_advice_prices_each_candidate_region_for_this_deployment():
    from mlops_operator.api.modeldeployment import ModelDeploymentSpec
    from mlops_operator.reconcile.cost import parse_price_table

    sources = {"s": {"what": "test prices", "url": "https://example.org/prices", "date": "2026-11-01"}}
    table = parse_price_table({
        "sources": sources, "instanceTypes": {"m5.large": {"vcpu": 2, "memoryGiB": 8, "source": "s"}},
        "regions": {r: {"m5.large": {"usdPerHour": price, "source": "s"}}
                    for r, price in (("us-east-2", 0.096), ("eu-central-1", 0.115), ("ap-south-1", 0.101))}})
    spec = ModelDeploymentSpec.model_validate({
        "model": {"fromTraining": "iris"}, "replicas": 2,
        "placement": {"latencyBudgetMs": 150, "regions": [
            {"region": "us-east-2", "latencyMs": 255}, {"region": "eu-central-1", "latencyMs": 186},
            {"region": "ap-south-1", "latencyMs": 122}, {"region": "me-south-1", "latencyMs": 40}]}})
    advice = aiops.placement_status(spec, table)
    assert advice["choice"] == "ap-south-1"
    assert [r["region"] for r in advice["ranked"]] == ["ap-south-1", "eu-central-1", "us-east-2", "me-south-1"]
    assert advice["ranked"][0] == {"region": "ap-south-1", "latencyMs": 122, "monthlyCost": 147.46,
                                   "withinBudget": True}
    assert "monthlyCost" not in advice["ranked"][3] and "Not ranked (no sourced price" in advice["message"]
    assert "meeting the budget costs $7.30/month" in advice["message"]
    assert aiops.placement_status(ModelDeploymentSpec.model_validate({"model": {"fromTraining": "iris"}}), table) is None
    # Into the typed status, with the monthly estimate for spec.region and no right-sizing yet.
    typed = aiops.with_costs(ModelDeploymentStatus(), spec.model_copy(update={"region": "ap-south-1"}), table, 2.0,
                             None)
    assert typed.placement.choice == "ap-south-1" and typed.placement.ranked[3].monthly_cost is None
    assert typed.estimated_monthly_cost.amount == 147.46 and typed.cost.monthly == 147.46
    assert typed.cost.requests_per_second == 2.0 and typed.right_sizing is None
    assert aiops.with_costs(ModelDeploymentStatus(), ModelDeploymentSpec.model_validate(
        {"model": {"fromTraining": "iris"}}), table, None, None).to_status()["cost"] is None


def test_health_into_status_and_its_events():
    anomaly = open_anomaly()
    record = aiops.anomaly_record(anomaly, "Likely cause: x.")
    health = aiops.ServingHealth(enabled=True, open=[record], opened=[record],
                                 awaiting_rollback="Version 2 is anomalous within its bake period: ...")
    before = promoted()
    after = aiops.with_health(before, before, health, generation=2, now=NOW)
    assert [a.metric for a in after.anomalies] == ["errorRate"] and after.anomalies[0].cause == "Likely cause: x."
    assert after.condition("Anomalous").status == "True" and after.phase == "AwaitingApproval"
    assert after.condition("AwaitingApproval").reason == aiops.ROLLBACK_AWAITING_APPROVAL
    events = aiops.health_events(before, after, health)
    assert [(e.reason, e.warning, incident) for e, incident in events] == [
        ("AnomalyOpened", True, "2/errorRate"), (aiops.ROLLBACK_AWAITING_APPROVAL, True, "2")]
    assert events[0][0].message.endswith("Likely cause: x.")
    # Once: the same wait is not announced again; detection off clears the anomalies.
    assert aiops.health_events(after, after, aiops.ServingHealth(enabled=True)) == []
    off = aiops.with_health(after, after, aiops.ServingHealth(), generation=2, now=NOW)
    assert off.anomalies == [] and off.condition("Anomalous").reason == "DetectionDisabled"


def test_judging_the_telemetry_names_open_and_learning_metrics_and_asks_the_guard():
    from mlops_operator.api.modeldeployment import PostPromotion
    from mlops_operator.reconcile.anomaly import Detector, DetectorSettings, Point

    detector = Detector(DetectorSettings(warmup=20, min_duration=60, close_after=60))
    start = NOW.timestamp() - 40 * 30
    for i in range(40):  # version 2's error rate learned at 0.1%
        detector.observe(Point(start + i * 30, "2", {"errorRate": 0.001}, samples=500))
    opened = []
    for i in range(4):  # then 40% for two minutes, since 90 s ago
        for update in detector.observe(Point(NOW.timestamp() - 90 + 30 * i, "2", {"errorRate": 0.4}, samples=500)):
            opened += [update.opened] if update.opened else []
    assert [a.metric for a in opened] == ["errorRate"]
    health = aiops.judge_health(promoted(), detector, opened, [], {("2", "errorRate"): "Likely cause: x."},
                                requests_per_second=3.0, usage=[], post_promotion=PostPromotion(), approval="automatic",
                                now=NOW)
    assert health.enabled and health.open_metrics == {"errorRate"} and health.opened[0]["cause"] == "Likely cause: x."
    assert "errorRate" not in health.learning and {"latencyP99Ms", "requestRate"} <= health.learning
    assert (health.rollback, health.awaiting_rollback) == ("2", None)
    assert health.rollback_reason.startswith("Rolling back from version 2 to version 1 automatically")
    manual = aiops.judge_health(promoted(), detector, [], [], {}, requests_per_second=None, usage=[],
                                post_promotion=PostPromotion(), approval="manual", now=NOW)
    assert manual.rollback is None and "kubectl mlops rollback" in manual.awaiting_rollback
