"""AIOps of a ModelDeployment, pure: anomalies into status and conditions, the post-promotion guard,
and serving cost from observed traffic.

* ``status.anomalies``: the open anomalies and the latest closed ones (bounded), each with the
  metric, version, observed value, expected band, since when and the likely cause.
* Condition ``Anomalous``: True while any anomaly is open, with the worst one in the message.
* The post-promotion guard: for ``rollout.postPromotion.bakeSeconds`` after a version became stable
  by promotion, an anomaly of one of its guarded metrics (error rate, latency) on that version rolls
  back to the previous stable version (``approval: automatic``) or asks for approval of the
  rollback (``approval: manual``), with the reason in the event.
* ``status.cost``: the monthly estimate and what 1,000 predictions cost at the observed rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlops_operator.api.modeldeployment import (
    AnomalyRecord,
    Cost,
    ModelDeploymentStatus,
    PlacementAdvice,
    RightSizing,
    ServingCost,
)
from mlops_operator.reconcile.anomaly import METRICS, Anomaly, Detector, DetectorSettings
from mlops_operator.reconcile.conditions import FALSE, TRUE, now_rfc3339, parse_rfc3339, plain, set_condition, typed
from mlops_operator.reconcile.cost import PriceTable, cost_per_thousand_predictions, estimate_monthly_cost
from mlops_operator.reconcile.events import Event
from mlops_operator.reconcile.placement import RegionOption, advise_placement
from mlops_operator.reconcile.rightsizing import Suggestion, UsageSample

ANOMALOUS = "Anomalous"
MAX_ANOMALIES = 10
GUARD_REASON = "PostPromotionAnomaly"
ROLLBACK_AWAITING_APPROVAL = "RollbackAwaitingApproval"


def detector_settings(spec_detection: Any) -> DetectorSettings:
    """Detector tuning from ``spec.anomalyDetection``."""
    return DetectorSettings(warmup=spec_detection.warmup_points, sensitivity=spec_detection.sensitivity,
                            min_duration=float(spec_detection.min_duration_seconds),
                            close_after=float(spec_detection.min_duration_seconds))


def _iso(at: float | None) -> str | None:
    return None if at is None else now_rfc3339(datetime.fromtimestamp(at, UTC))


def anomaly_record(anomaly: Anomaly, cause: str | None = None) -> dict[str, Any]:
    """One entry of ``status.anomalies``."""
    record = {"metric": anomaly.metric, "observed": round(anomaly.observed, 6),
              "expected": round(anomaly.band.expected, 6), "low": round(anomaly.band.low, 6),
              "high": round(anomaly.band.high, 6), "since": _iso(anomaly.since), "unit": anomaly.unit,
              "message": anomaly.message()[:1024]}
    if anomaly.version:
        record["version"] = anomaly.version
    if anomaly.closed is not None:
        record["closed"] = _iso(anomaly.closed)
        record["closeReason"] = (anomaly.close_reason or "")[:256]
    if cause:
        record["cause"] = cause[:1024]
    return record


def anomalies_status(previous: Sequence[Mapping[str, Any]] | None, open_records: Sequence[dict[str, Any]],
                     closed_records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open anomalies first (oldest first), then closed ones newest first, at most :data:`MAX_ANOMALIES`.

    A cause found when an anomaly opened is kept on later writes of the same anomaly.
    """
    causes = {(r.get("version"), r.get("metric"), r.get("since")): r.get("cause") for r in previous or ()}
    keep = []
    for record in open_records:
        cause = record.get("cause") or causes.get((record.get("version"), record["metric"], record["since"]))
        keep.append({**record, **({"cause": cause} if cause else {})})
    keys = {(r.get("version"), r["metric"], r["since"]) for r in keep}
    closed = [dict(r) for r in closed_records]
    for record in closed:
        cause = causes.get((record.get("version"), record["metric"], record["since"]))
        if cause and "cause" not in record:
            record["cause"] = cause
    older = [dict(r) for r in previous or () if r.get("closed")
             and (r.get("version"), r.get("metric"), r.get("since")) not in keys
             and all((r.get("version"), r.get("metric"), r.get("since")) !=
                     (c.get("version"), c["metric"], c["since"]) for c in closed)]
    history = sorted(closed + older, key=lambda r: r.get("closed") or "", reverse=True)
    return (keep + history)[:MAX_ANOMALIES]


def anomalous_condition(conditions: Sequence[dict[str, Any]] | None, open_records: Sequence[Mapping[str, Any]],
                        *, generation: int, now: datetime, enabled: bool) -> list[dict[str, Any]]:
    """Set ``Anomalous``: True with the oldest open anomaly (and how many more), else False."""
    if not enabled:
        return set_condition(conditions, ANOMALOUS, FALSE, "DetectionDisabled",
                             "Anomaly detection is off (spec.anomalyDetection.enabled).", generation=generation, now=now)
    if not open_records:
        return set_condition(conditions, ANOMALOUS, FALSE, "NoAnomaly",
                             "Serving metrics are within their expected bands.", generation=generation, now=now)
    first = open_records[0]
    more = f" ({len(open_records) - 1} more open)" if len(open_records) > 1 else ""
    message = (f"{first['message']}; since {first['since']}{more}."
               + (f" {first['cause']}" if first.get("cause") else ""))
    return set_condition(conditions, ANOMALOUS, TRUE, "AnomalyDetected", message[:4096], generation=generation,
                         now=now)


@dataclass(frozen=True)
class GuardVerdict:
    """What the post-promotion guard decided."""

    action: Literal["rollback", "await-approval"]
    stable: str
    previous: str
    message: str


def promoted_at(status: ModelDeploymentStatus) -> datetime | None:
    """When the current stable version became stable by promotion (None: not by promotion)."""
    record = status.last_rollout
    if record and record.result == "promoted" and record.version == status.stable_version and record.finished:
        return parse_rfc3339(record.finished)
    return None


def guard(status: ModelDeploymentStatus, open_anomalies: Sequence[Anomaly], *, bake_seconds: int,
          guarded: Sequence[str], approval: str, now: datetime, cause: str | None = None) -> GuardVerdict | None:
    """The post-promotion guard's decision for this reconciliation (None: nothing to do)."""
    stable, previous = status.stable_version, status.previous_stable_version
    since = promoted_at(status)
    if not bake_seconds or not stable or not previous or since is None or status.candidate_version:
        return None
    if previous in status.rejected_versions:
        return None
    elapsed = (now - since).total_seconds()
    if elapsed > bake_seconds:
        return None
    hits = [a for a in open_anomalies if a.version == stable and a.metric in guarded
            and a.since >= since.timestamp() - 1]
    if not hits:
        return None
    first = hits[0]
    why = (f"{first.message()} since {_iso(first.since)}, {elapsed:.0f}s after version {stable} was promoted "
           f"(bake period {bake_seconds}s)")
    if cause:
        why += f". {cause}"
    if approval == "manual":
        return GuardVerdict("await-approval", stable, previous,
                            f"Version {stable} is anomalous within its bake period: {why}. Approve the rollback to "
                            f"version {previous}: kubectl mlops rollback <name> (annotation "
                            f"mlops.dev/rollback={stable}).")
    return GuardVerdict("rollback", stable, previous,
                        f"Rolling back from version {stable} to version {previous} automatically: {why}.")


def cost_status(estimate: Mapping[str, Any] | None, requests_per_second: float | None,
                hours_per_month: float = 730) -> dict[str, Any] | None:
    """``status.cost``: the monthly estimate with the cost per 1,000 predictions at the observed rate."""
    if not estimate:
        return None
    result = {"monthly": estimate["amount"], "currency": estimate["currency"],
              "instanceType": estimate["instanceType"], "basis": estimate["basis"]}
    if requests_per_second is not None:
        result["requestsPerSecond"] = round(requests_per_second, 6)
        per_thousand = cost_per_thousand_predictions(estimate["amount"], requests_per_second, hours_per_month)
        if per_thousand is not None:
            result["perThousandPredictions"] = round(per_thousand, 6)
    return result


def placement_status(spec: Any, table: PriceTable) -> dict[str, Any] | None:
    """``status.placement`` from ``spec.placement``: each region's monthly cost for this deployment's
    sizing (from the price table), ranked under the latency budget."""
    placement = spec.placement
    if placement is None:
        return None
    options, unpriced = [], []
    for candidate in placement.regions:
        estimate = estimate_monthly_cost(spec.model_copy(update={"region": candidate.region}), table)
        if estimate.cost is None:
            unpriced.append(candidate)
        else:
            options.append(RegionOption(candidate.region, estimate.cost["amount"], candidate.latency_ms))
    advice = advise_placement(options, placement.latency_budget_ms, table.currency)
    budget = placement.latency_budget_ms if placement.latency_budget_ms is not None else float("inf")
    ranked = [{"region": o.region, "latencyMs": o.latency_ms, "monthlyCost": o.monthly_cost,
               "withinBudget": o.latency_ms <= budget} for o in advice.ranked]
    ranked += [{"region": c.region, "latencyMs": c.latency_ms, "withinBudget": c.latency_ms <= budget}
               for c in unpriced]
    message = advice.message if options else "No candidate region has a sourced price."
    if unpriced:
        message += (f" Not ranked (no sourced price; with AWS credentials the Price List API prices them): "
                    f"{', '.join(c.region for c in unpriced)}.")
    return {"choice": advice.choice.region if advice.choice else None, "message": message[:2048], "ranked": ranked}


def with_costs(status: ModelDeploymentStatus, spec: Any, prices: PriceTable, requests_per_second: float | None,
               suggestion: Suggestion | None) -> ModelDeploymentStatus:
    """``status`` with estimatedMonthlyCost, cost, placement and rightSizing."""
    estimate = estimate_monthly_cost(spec, prices).cost
    cost = cost_status(estimate, requests_per_second, prices.hours_per_month)
    placement = placement_status(spec, prices)
    right_sizing = None if suggestion is None else RightSizing(
        cpu=suggestion.cpu, memory=suggestion.memory, verdict=suggestion.verdict, message=suggestion.message[:2048],
        samples=suggestion.samples)
    return status.model_copy(update={
        "estimated_monthly_cost": Cost.model_validate(estimate) if estimate else None,
        "cost": ServingCost.model_validate(cost) if cost else None,
        "placement": PlacementAdvice.model_validate(placement) if placement else None,
        "right_sizing": right_sizing})


@dataclass
class ServingHealth:
    """What the serving telemetry said at this reconciliation."""

    enabled: bool = False
    open: list[dict[str, Any]] = field(default_factory=list)
    """status.anomalies records of the open anomalies."""
    opened: list[dict[str, Any]] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)
    open_metrics: set[str] = field(default_factory=set)
    learning: set[str] = field(default_factory=set)
    """Metrics whose stable-version series has no baseline yet (the detector learns, does not judge)."""
    requests_per_second: float | None = None
    rollback: str | None = None
    rollback_reason: str | None = None
    awaiting_rollback: str | None = None
    """The guard's message when the rollback waits for approval."""
    usage: list[UsageSample] = field(default_factory=list)
    """CPU and memory samples of the stable version's model servers."""


def judge_health(status: ModelDeploymentStatus, detector: Detector, opened: Sequence[Anomaly],
                 closed: Sequence[Anomaly], causes: Mapping[tuple[str | None, str], str], *,
                 requests_per_second: float | None, usage: list[UsageSample], post_promotion: Any, approval: str,
                 now: datetime) -> ServingHealth:
    """What the telemetry says after the detector saw this reconciliation's point: the open anomalies
    (with the ``causes`` found for those that just opened, by (version, metric)), the metrics still
    learning their baseline, and the post-promotion guard's decision."""
    open_anomalies = detector.open_anomalies()
    health = ServingHealth(enabled=True, requests_per_second=requests_per_second, usage=usage)
    health.open = [anomaly_record(a, causes.get((a.version, a.metric))) for a in open_anomalies]
    health.open_metrics = {a.metric for a in open_anomalies}
    for metric in METRICS:
        series = detector.series.get((None if metric == "requestRate" else status.stable_version, metric))
        if series is None or series.state == "learning":
            health.learning.add(metric)
    health.opened = [anomaly_record(a, causes.get((a.version, a.metric))) for a in opened]
    health.closed = [anomaly_record(a) for a in closed]
    cause = next((r.get("cause") for r in anomalies_status(plain(status.anomalies), health.open, [])
                  if r.get("cause")), None)
    verdict = guard(status, open_anomalies, bake_seconds=post_promotion.bake_seconds, guarded=post_promotion.metrics,
                    approval=approval, now=now, cause=cause)
    if verdict and verdict.action == "rollback":
        health.rollback, health.rollback_reason = verdict.stable, verdict.message
    elif verdict:
        health.awaiting_rollback = verdict.message
    return health


def with_health(status: ModelDeploymentStatus, previous: ModelDeploymentStatus, health: ServingHealth, *,
                generation: int, now: datetime) -> ModelDeploymentStatus:
    """``status`` with the anomalies, the Anomalous condition, and a rollback the guard wants approved."""
    anomalies = anomalies_status(plain(previous.anomalies), health.open, health.closed) if health.enabled else []
    conditions = anomalous_condition(plain(status.conditions), anomalies[:len(health.open)], generation=generation,
                                     now=now, enabled=health.enabled)
    phase = status.phase
    if health.awaiting_rollback and not status.rollout:
        conditions = set_condition(conditions, "AwaitingApproval", TRUE, ROLLBACK_AWAITING_APPROVAL,
                                   health.awaiting_rollback[:4096], generation=generation, now=now)
        phase = "AwaitingApproval"
    return status.model_copy(update={"anomalies": [AnomalyRecord.model_validate(a) for a in anomalies],
                                     "conditions": typed(conditions), "phase": phase})


def health_events(before: ModelDeploymentStatus, after: ModelDeploymentStatus, health: ServingHealth
                  ) -> list[tuple[Event, str]]:
    """The events of anomalies that opened or closed, and of a rollback that now waits for approval,
    each with the incident it is about (``<version>/<metric>`` or the version)."""
    events = []
    for record in health.opened:
        cause = f" {record['cause']}" if record.get("cause") else ""
        events.append((Event("AnomalyOpened", f"{record['message']}; since {record['since']}.{cause}", warning=True),
                       f"{record.get('version') or '-'}/{record['metric']}"))
    for record in health.closed:
        events.append((Event("AnomalyClosed", f"{record['metric']} of version {record.get('version') or '-'}: "
                                              f"{record.get('closeReason') or 'closed'}."),
                       f"{record.get('version') or '-'}/{record['metric']}"))
    old, new = before.condition("AwaitingApproval"), after.condition("AwaitingApproval")
    if new and new.reason == ROLLBACK_AWAITING_APPROVAL and (old is None or old.reason != new.reason):
        events.append((Event(ROLLBACK_AWAITING_APPROVAL, new.message, warning=True), str(after.stable_version)))
    return events
