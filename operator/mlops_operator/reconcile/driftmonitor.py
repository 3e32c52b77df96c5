"""DriftMonitor, pure: when a check is due, the window, engine results → status, verdict → phase and
conditions, concept drift from labels, and the retrain policy (cooldown, maxPerDay, the request).

A check compares the deployment's recent, successful, non-shadow requests (every predictor: the
input distribution does not depend on which model answered) with the reference. Its verdict is

- ``Drift`` when more than ``spec.driftShare`` of the features with a verdict drifted (any one
  with the default 0), or when the live model metric from ground-truth labels is worse than the
  training metric by more than ``spec.performance.maxDegradation``;
- ``InsufficientData`` when no feature had ``spec.window.minSamples`` values (never drift);
- ``NoDrift`` otherwise.

A check that cannot run (no deployment, no served model, no reference, no inference log) leaves
phase ``Error`` with ``Ready=False`` and the reason, and is retried after
:func:`retry_after_failure` (each further failure doubles the wait, up to four times that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlops_operator import drift
from mlops_operator.api.annotations import RETRAIN_ANNOTATION, RETRAIN_WINDOW_ANNOTATION
from mlops_operator.api.driftmonitor import (
    DriftMonitorSpec,
    DriftMonitorStatus,
    FeatureResult,
    Performance,
    PerformanceResult,
    ReportStatus,
    RetrainPolicy,
    Window,
)
from mlops_operator.drift import report as drift_report
from mlops_operator.reconcile.conditions import (
    FALSE,
    RECONCILING,
    TRUE,
    UNKNOWN,
    now_rfc3339,
    parse_rfc3339,
    plain,
    set_condition,
    typed,
)
from mlops_operator.reconcile.durations import parse_duration
from mlops_operator.reconcile.events import Event

if TYPE_CHECKING:  # loaded on first use (see mlops_operator.drift)
    import numpy as np
    import pandas as pd

READY = "Ready"
DRIFT_DETECTED = "DriftDetected"
CONDITIONS = DriftMonitorStatus.condition_types

# Phases.
PENDING = "Pending"
NO_DRIFT = "NoDrift"
DRIFT = "Drift"
INSUFFICIENT_DATA = "InsufficientData"
ERROR = "Error"

# Condition reasons.
CHECKED = "Checked"
DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
NO_SERVED_MODEL = "NoServedModel"
NO_REQUESTS_YET = "NoRequestsYet"
REFERENCE_UNAVAILABLE = "ReferenceUnavailable"
INFERENCE_LOG_UNAVAILABLE = "InferenceLogUnavailable"
FEATURE_MISMATCH = "FeatureMismatch"
LABELS_UNAVAILABLE = "LabelsUnavailable"
TRAINING_NOT_FOUND = "TrainingNotFound"
PERFORMANCE_DEGRADED = "PerformanceDegraded"
CHECK_FAILED = "CheckFailed"

RETRY_AFTER_FAILURE = timedelta(seconds=10)
"""A failed check is retried this soon (or after spec.interval, if shorter)."""
RETRAIN_WINDOW = timedelta(hours=24)
"""spec.onDrift.retrain.maxPerDay counts the requests of this sliding window."""
MAX_ANNOTATION_LENGTH = 1000
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "rmse": False, "mae": False}
_SUMMARY_FEATURES = 5
MAX_RESULTS = 512
"""status.results holds at most this many features (the schema's bound); drifted ones are kept first."""


# ---------------------------------------------------------------------------------------------
# When and what


def check_due(spec: DriftMonitorSpec, status: DriftMonitorStatus, generation: int, now: datetime,
              report_request: str | None = None) -> bool:
    """Whether a check should run now.

    Due on a first visit, after a spec change (Ready was last set for another generation), on a new
    ``mlops.dev/report-requested`` value (``report_request``), and once ``spec.interval`` has passed
    since ``status.lastCheckTime`` (after a failed check, at most :data:`RETRY_AFTER_FAILURE`).
    """
    if report_pending(status, report_request):
        return True
    ready = status.condition(READY)
    if ready is None or ready.reason == RECONCILING or ready.observed_generation != generation:
        return True
    last = status.last_check_time
    if not last:
        return True
    interval = retry_after_failure(spec) if status.phase == ERROR else parse_duration(spec.interval)
    return now - parse_rfc3339(last) >= interval


def retry_after_failure(spec: DriftMonitorSpec) -> timedelta:
    """How soon a failed check is retried: :data:`RETRY_AFTER_FAILURE`, or ``spec.interval`` if shorter
    (a monitor asked to check every few seconds is not left waiting longer after a failure)."""
    return min(parse_duration(spec.interval), RETRY_AFTER_FAILURE)


def report_pending(status: DriftMonitorStatus, report_request: str | None) -> bool:
    """Whether the annotation asks for a report that status.report has not answered yet."""
    return bool(report_request) and report_request != (status.report.request if status.report else None)


def report_due(previous_phase: str | None, verdict: Verdict, status: DriftMonitorStatus,
               report_request: str | None) -> bool:
    """A check writes a report when its verdict differs from the last one, on request, and on the
    first check (there is no report to link yet)."""
    return verdict.phase != previous_phase or report_pending(status, report_request) or not status.report


def report_context(status: DriftMonitorStatus, verdict: Verdict, monitor: str, namespace: str,
                   history: Sequence[Mapping[str, Any]] = ()) -> drift_report.ReportContext:
    """What the report's header says, from the status the check just wrote."""
    points = [(str(item.get("time")), float(item["live"])) for item in history if item.get("live") is not None]
    return drift_report.ReportContext(
        title=f"DriftMonitor {namespace}/{monitor}", generated=str(status.last_check_time), verdict=verdict.phase,
        summary=verdict.summary, model_version=status.model_version, reference_uri=status.reference_uri,
        reference_rows=status.reference_size, window_start=status.window_start, window_end=status.window_end,
        window_rows=status.sample_size, alpha=status.alpha,
        performance=status.performance.to_api() if status.performance else None, performance_history=points)


def history_entry(status: DriftMonitorStatus, verdict: Verdict) -> dict[str, Any]:
    """One line of the monitor's check history (history.jsonl beside its reports)."""
    performance = status.performance
    return {"time": status.last_check_time, "verdict": verdict.phase, "drifted": len(verdict.drifted),
            "evaluated": verdict.evaluated, "live": performance.live if performance else None,
            "metric": performance.metric if performance else None}


def with_report(status: DriftMonitorStatus, uri: str, latest_uri: str, verdict: Verdict,
                report_request: str | None) -> DriftMonitorStatus:
    """status.report after a report was written."""
    report = ReportStatus(uri=uri, latest_uri=latest_uri, time=status.last_check_time, verdict=verdict.phase,
                          request=report_request[:1024] if report_request else None)
    return status.model_copy(update={"report": report})


def window_since(window: Window, now: datetime) -> datetime | None:
    """The oldest request time the window takes (None: no duration limit)."""
    return now - parse_duration(window.duration) if window.duration else None


def engine_tests(spec: DriftMonitorSpec) -> dict[str, float]:
    """spec.tests as the engine's ``tests`` argument (name → effect-size threshold)."""
    return {test.name: float(test.threshold) for test in spec.tests}


def engine_correction(spec: DriftMonitorSpec) -> str:
    """spec.correction as the engine names it."""
    return {"fdr": "benjamini-hochberg"}.get(spec.correction, spec.correction)


def missing_features(spec: DriftMonitorSpec, reference_features: Sequence[str]) -> list[str]:
    """spec.features the reference does not have."""
    known = set(reference_features)
    return [name for name in spec.features if name not in known]


def feature_mismatch(reference_features: Sequence[str], window_columns: Sequence[str], rows: int) -> str | None:
    """A message when the window has rows but none of the reference's features (names disagree)."""
    if rows == 0 or set(reference_features) & set(window_columns):
        return None
    return (f"the inference log's features ({', '.join(list(window_columns)[:8]) or 'none'}) match none of the "
            f"reference's ({', '.join(list(reference_features)[:8])})")


# ---------------------------------------------------------------------------------------------
# Engine results → status


def _number(value: float | None) -> float | None:
    """A float the API can store: 6 significant digits, infinities capped, NaN dropped."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        value = math.copysign(1e300, value)
    return float(f"{value:.6g}")


def feature_results(report: drift.DriftReport) -> list[dict[str, Any]]:
    """status.results of an engine report: one entry per feature (in the reference's order), its
    tests inside; beyond :data:`MAX_RESULTS` features the drifted ones are kept first."""
    results = []
    for feature in report.features.values():
        tests = []
        for name, result in feature.tests.items():
            entry: dict[str, Any] = {
                "test": name,
                "verdict": result.status,
                "threshold": _number(result.threshold),
                "drifted": bool(result.drifted),
            }
            for key, value in (("score", result.score), ("pValue", result.p_value),
                               ("adjustedPValue", result.adjusted_p_value), ("alpha", result.alpha)):
                if _number(value) is not None:
                    entry[key] = _number(value)
            if result.method:
                entry["pValueMethod"] = result.method
            if result.message:
                entry["message"] = result.message[:256]
            tests.append(entry)
        results.append({"feature": feature.name, "kind": feature.kind, "verdict": feature.status,
                        "samples": int(feature.sample_size), "referenceSamples": int(feature.reference_size),
                        "tests": tests})
    if len(results) > MAX_RESULTS:
        results.sort(key=lambda result: result["verdict"] != drift.DRIFT)  # stable: order kept within groups
        results = results[:MAX_RESULTS]
    return results


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check."""

    phase: str
    """Drift, NoDrift or InsufficientData."""
    data_drift: bool
    performance_degraded: bool
    drifted: list[str] = field(default_factory=list)
    """Features that drifted."""
    evaluated: int = 0
    """Features with a verdict."""
    summary: str = ""
    """One line for events, conditions and the retrain request."""


def verdict_of(
    report: drift.DriftReport,
    drift_share: float,
    sample_size: int,
    min_samples: int,
    performance: Mapping[str, Any] | None = None,
) -> Verdict:
    """The check's verdict from the engine report and the optional performance result."""
    evaluated = [f for f in report.features.values() if f.status != drift.INSUFFICIENT_DATA]
    drifted = [f.name for f in evaluated if f.drifted]
    data_drift = bool(evaluated) and len(drifted) / len(evaluated) > drift_share
    degraded = bool(performance and performance.get("degraded"))
    if data_drift or degraded:
        phase = DRIFT
    elif evaluated:
        phase = NO_DRIFT
    else:
        phase = INSUFFICIENT_DATA
    parts = []
    if phase == INSUFFICIENT_DATA:
        smallest_reference = min((f.reference_size for f in report.features.values()), default=0)
        if sample_size < min_samples:
            parts.append(f"{sample_size} requests in the window, {min_samples} needed for a verdict")
        elif report.features and smallest_reference < min_samples:
            parts.append(f"the reference has {smallest_reference} values of a feature, fewer than the "
                         f"{min_samples} needed for a verdict")
        else:
            first = next((f.message for f in report.features.values() if f.message), "")
            parts.append(f"no feature had enough non-missing values in {sample_size} requests"
                         + (f" ({first})" if first else ""))
    else:
        parts.append(f"{len(drifted)}/{len(evaluated)} features drifted" + _drift_details(report, drifted))
    if performance and performance.get("live") is not None and performance.get("training") is not None:
        parts.append(f"{performance['metric']} {performance['live']:.4g} live vs {performance['training']:.4g} "
                     f"at training{' (degraded)' if degraded else ''}")
    return Verdict(phase, data_drift, degraded, drifted, len(evaluated), "; ".join(parts))


def _drift_details(report: drift.DriftReport, drifted: list[str]) -> str:
    if not drifted:
        return ""
    details = []
    for name in drifted[:_SUMMARY_FEATURES]:
        for test, result in report.features[name].tests.items():
            if result.drifted:
                details.append(f"{test} {name}={result.score:.3g} p={result.adjusted_p_value:.2g}")
    more = ", ..." if len(drifted) > _SUMMARY_FEATURES else ""
    return f" ({', '.join(details)}{more})"


def window_bounds(frame: pd.DataFrame) -> tuple[str | None, str | None]:
    """RFC 3339 times of the oldest and newest request in a window frame."""
    import pandas as pd
    if frame.empty or "ts" not in frame:
        return None, None
    stamps = pd.to_datetime(frame["ts"], utc=True)
    return now_rfc3339(stamps.min().to_pydatetime()), now_rfc3339(stamps.max().to_pydatetime())


# ---------------------------------------------------------------------------------------------
# Concept drift


def join_labels(window: pd.DataFrame, labels: pd.DataFrame, model_version: str | None) -> tuple[pd.Series, pd.Series]:
    """(label, prediction) of the window's labelled rows.

    Labels are keyed by ``id`` (the request id) and, when present, ``row``; without ``row`` a
    label belongs to row 0 of its request. With ``model_version``, only rows that version served
    count (the training metric is that version's). The last label of a repeated key wins.
    """
    import numpy as np
    import pandas as pd
    for column in ("id", "label"):
        if column not in labels.columns:
            raise ValueError(f"labels need the columns id and label (found {', '.join(map(str, labels.columns))})")
    predictions = [c for c in window.attrs.get("prediction_columns") or [] if c in window.columns]
    if not predictions and "prediction" in window.columns:
        predictions = ["prediction"]
    if not predictions or window.empty:
        return pd.Series([], dtype=object), pd.Series([], dtype=object)
    rows = window
    if model_version is not None:
        rows = rows[rows["model_version"].astype(str) == str(model_version)]
    keys = ["request_id", "row"]
    table = labels.rename(columns={"id": "request_id"})
    table["request_id"] = table["request_id"].astype(str)
    if "row" in table.columns:
        table["row"] = pd.to_numeric(table["row"], errors="coerce").fillna(0).astype(np.int64)
    else:
        table = table.assign(row=0)
    table = table.drop_duplicates(keys, keep="last")[keys + ["label"]]
    current = rows[keys + [predictions[0]]].assign(request_id=rows["request_id"].astype(str),
                                                   row=rows["row"].astype(np.int64))
    joined = current.merge(table, on=keys, how="inner")
    joined = joined[joined["label"].notna() & joined[predictions[0]].notna()]
    return joined["label"].reset_index(drop=True), joined[predictions[0]].reset_index(drop=True)


def live_metric(metric: str, labels: pd.Series, predictions: pd.Series) -> float:
    """The metric of the predictions against the labels (f1 is macro-averaged, as at training)."""
    import numpy as np
    import pandas as pd
    from sklearn import metrics as skm

    if metric in ("accuracy", "f1"):
        y_true, y_pred = _class_labels(labels), _class_labels(predictions)
        if metric == "accuracy":
            return float(skm.accuracy_score(y_true, y_pred))
        return float(skm.f1_score(y_true, y_pred, average="macro"))
    y_true = pd.to_numeric(labels, errors="coerce").to_numpy(dtype=np.float64)
    y_pred = pd.to_numeric(predictions, errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(y_true) & np.isfinite(y_pred)
    y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.size == 0:
        raise ValueError("no numeric labels and predictions")
    if metric == "rmse":
        return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))
    if metric == "mae":
        return float(np.mean(np.abs(y_true - y_pred)))
    raise ValueError(f"unknown metric {metric!r}")


def _class_labels(values: pd.Series) -> np.ndarray:
    """Class labels as comparable strings: a column that is all numbers (even as text, as CSV
    labels may be) is read as numbers first, so 1, 1.0 and "1.0" are one class."""
    import pandas as pd
    numbers = pd.to_numeric(values, errors="coerce")
    source = numbers if numbers.notna().all() else values
    return source.map(drift.category_label).to_numpy()


def performance_result(
    spec: Performance, labels: pd.Series, predictions: pd.Series, training_metrics: Mapping[str, Any] | None
) -> dict[str, Any]:
    """status.performance: the live metric, the training metric and whether it degraded."""
    samples = int(len(labels))
    result: dict[str, Any] = {"metric": spec.metric, "samples": samples, "degraded": False, "message": ""}
    training = (training_metrics or {}).get(spec.metric)
    if training is not None:
        result["training"] = _number(training)
    if samples < spec.min_samples:
        result["message"] = f"{samples} labelled requests in the window, {spec.min_samples} needed for a verdict"
        if samples == 0:
            return result
    try:
        live = live_metric(spec.metric, labels, predictions)
    except ValueError as error:
        result["message"] = f"cannot compute {spec.metric}: {error}"
        return result
    result["live"] = _number(live)
    if training is None:
        result["message"] = f"the model version's metrics.json has no {spec.metric}"
        return result
    if samples >= spec.min_samples:
        worse = float(training) - live if HIGHER_IS_BETTER[spec.metric] else live - float(training)
        result["degraded"] = bool(worse > spec.max_degradation)
    return result


# ---------------------------------------------------------------------------------------------
# Status


def checked_status(
    status: DriftMonitorStatus,
    verdict: Verdict,
    *,
    results: list[dict[str, Any]],
    sample_size: int,
    window: tuple[str | None, str | None],
    reference_uri: str,
    reference_description: str,
    reference_size: int | None,
    model_version: str | None,
    performance: Mapping[str, Any] | None,
    problem: tuple[str, str] | None,
    generation: int,
    now: datetime,
    alpha: float | None = None,
) -> DriftMonitorStatus:
    """Status after a check that ran. ``reference_description`` says what was compared with (for
    the Ready message). ``problem`` (reason, message) keeps Ready False although the check ran
    (labels unreadable, retrain target missing). What this check did not know (window bounds, the
    reference's size, the model version, performance) is cleared, not left from an older check."""
    conditions = plain(status.conditions)
    if problem:
        conditions = set_condition(conditions, READY, FALSE, problem[0], problem[1], generation=generation, now=now)
    else:
        conditions = set_condition(conditions, READY, TRUE, CHECKED,
                                   f"Compared {sample_size} requests with {reference_description}.",
                                   generation=generation, now=now)
    if verdict.phase == DRIFT:
        reason = DRIFT_DETECTED if verdict.data_drift else PERFORMANCE_DEGRADED
        conditions = set_condition(conditions, DRIFT_DETECTED, TRUE, reason, verdict.summary,
                                   generation=generation, now=now)
    else:
        reason = INSUFFICIENT_DATA if verdict.phase == INSUFFICIENT_DATA else NO_DRIFT
        conditions = set_condition(conditions, DRIFT_DETECTED, FALSE, reason, verdict.summary,
                                   generation=generation, now=now)
    return status.model_copy(update={
        "phase": verdict.phase,
        "last_check_time": now_rfc3339(now),
        "sample_size": int(sample_size),
        "reference_uri": reference_uri,
        "evaluated_features": verdict.evaluated,
        "alpha": alpha,
        "drifted_features": len(verdict.drifted),
        "results": [FeatureResult.model_validate(r) for r in results],
        "window_start": window[0],
        "window_end": window[1],
        "reference_size": reference_size,
        "model_version": model_version,
        "performance": PerformanceResult.model_validate(performance) if performance else None,
        "conditions": typed(conditions),
    })


def failed_status(status: DriftMonitorStatus, reason: str, message: str, generation: int, now: datetime
                  ) -> DriftMonitorStatus:
    """Status after a check that could not run: Ready False with the reason, DriftDetected Unknown.
    The results of the last check that ran stay (lastCheckTime and phase Error say they are old)."""
    conditions = set_condition(plain(status.conditions), READY, FALSE, reason, message, generation=generation,
                               now=now)
    conditions = set_condition(conditions, DRIFT_DETECTED, UNKNOWN, CHECK_FAILED, f"No verdict: {message}",
                               generation=generation, now=now)
    return status.model_copy(update={
        # Nothing to check yet (no model served, no request served) is not an error: it resolves by itself.
        "phase": PENDING if reason in (NO_SERVED_MODEL, NO_REQUESTS_YET) else ERROR,
        "last_check_time": now_rfc3339(now),
        "conditions": typed(conditions),
    })


def verdict_event(previous_phase: str | None, status: DriftMonitorStatus) -> Event | None:
    """The event announcing a changed verdict (None when the phase did not change); a Drift event
    ends with status.cause when there is one."""
    phase = status.phase
    if phase == previous_phase:
        return None
    drift_condition = status.condition(DRIFT_DETECTED)
    drift_message = drift_condition.message if drift_condition else ""
    ready = status.condition(READY)
    if phase == DRIFT:
        message = f"{drift_message} {status.cause}" if status.cause else drift_message
        return Event(drift_condition.reason if drift_condition else DRIFT_DETECTED, message, warning=True)
    if phase == NO_DRIFT:
        reason = "DriftResolved" if previous_phase == DRIFT else NO_DRIFT
        return Event(reason, drift_message)
    if phase == INSUFFICIENT_DATA:
        return Event(INSUFFICIENT_DATA, drift_message)
    if phase == ERROR:
        return Event(ready.reason if ready else CHECK_FAILED, ready.message if ready else "", warning=True)
    return None


def retrain_refused(status: DriftMonitorStatus, decision: RetrainDecision, generation: int, now: datetime
                    ) -> DriftMonitorStatus:
    """Status when the retrain policy holds a request back: DriftDetected says why."""
    drift_condition = status.condition(DRIFT_DETECTED)
    assert drift_condition is not None
    conditions = set_condition(plain(status.conditions), DRIFT_DETECTED, drift_condition.status, drift_condition.reason,
                               f"{drift_condition.message}; retrain not requested: {decision.message}",
                               generation=generation, now=now)
    return status.model_copy(update={"retrain_requests": decision.recent, "conditions": typed(conditions)})


def training_missing(status: DriftMonitorStatus, decision: RetrainDecision, training: str, generation: int,
                     now: datetime) -> DriftMonitorStatus:
    """Status when the ModelTraining to retrain does not exist: Ready False."""
    message = f"ModelTraining {training} (spec.onDrift.retrain.trainingRef) not found; no retrain requested"
    conditions = set_condition(plain(status.conditions), READY, FALSE, TRAINING_NOT_FOUND, message,
                               generation=generation, now=now)
    return status.model_copy(update={"retrain_requests": decision.recent, "conditions": typed(conditions)})


# ---------------------------------------------------------------------------------------------
# Retrain policy


@dataclass(frozen=True)
class RetrainDecision:
    """Whether a retrain may be requested now."""

    allowed: bool
    reason: str
    """Allowed, Cooldown or MaxPerDay."""
    message: str
    recent: list[str]
    """Request times of the last 24 hours (RFC 3339, oldest first)."""
    next_allowed: datetime | None = None


def _times(values: Sequence[str] | None) -> list[datetime]:
    parsed = []
    for value in values or ():
        try:
            parsed.append(parse_rfc3339(value))
        except (TypeError, ValueError):
            continue  # an unreadable entry cannot count against the limit
    return sorted(parsed)


def retrain_decision(policy: RetrainPolicy, status: DriftMonitorStatus, now: datetime) -> RetrainDecision:
    """Apply the cooldown and maxPerDay to the requests recorded in status."""
    times = _times(status.retrain_requests)
    recent = [t for t in times if now - t < RETRAIN_WINDOW]
    recent_text = [now_rfc3339(t) for t in recent]
    last_candidates = times + _times([status.last_retrain_request] if status.last_retrain_request else [])
    last = max(last_candidates) if last_candidates else None
    cooldown = parse_duration(policy.cooldown)
    if last is not None and now - last < cooldown:
        until = last + cooldown
        return RetrainDecision(False, "Cooldown", f"cooldown {policy.cooldown} after the request at "
                               f"{now_rfc3339(last)}; next possible at {now_rfc3339(until)}", recent_text, until)
    if len(recent) >= policy.max_per_day:
        until = recent[len(recent) - policy.max_per_day] + RETRAIN_WINDOW
        return RetrainDecision(False, "MaxPerDay", f"{len(recent)} requests in the last 24 hours (maxPerDay "
                               f"{policy.max_per_day}); next possible at {now_rfc3339(until)}", recent_text, until)
    return RetrainDecision(True, "Allowed", "retrain allowed", recent_text)


def retrain_annotation_value(now: datetime, summary: str) -> str:
    """The value of mlops.dev/retrain-requested: the time and the reason."""
    return f"{now_rfc3339(now)} drift: {summary}"[:MAX_ANNOTATION_LENGTH]


def record_retrain(status: DriftMonitorStatus, decision: RetrainDecision, value: str, now: datetime
                   ) -> DriftMonitorStatus:
    """Status after a retrain request was made."""
    return status.model_copy(update={"last_retrain_request": now_rfc3339(now), "last_retrain_reason": value,
                                     "retrain_requests": decision.recent + [now_rfc3339(now)]})


def unrecorded_request(monitor: str, status: DriftMonitorStatus, annotations: Mapping[str, str]
                       ) -> tuple[str, datetime] | None:
    """A retrain request this monitor wrote on the ModelTraining but never recorded in its own status
    (the operator stopped between the two writes): its value and time, to be recorded instead of asking
    a second time. None when the annotations hold no such request."""
    import json

    value, window = annotations.get(RETRAIN_ANNOTATION), annotations.get(RETRAIN_WINDOW_ANNOTATION)
    if not value or not window or value == status.last_retrain_reason:
        return None
    try:
        written = json.loads(window)
        at = parse_rfc3339(value.split(" ", 1)[0])
    except (ValueError, TypeError):
        return None
    if not isinstance(written, dict) or written.get("monitor") != monitor or written.get("request") != value:
        return None
    if status.last_retrain_request and parse_rfc3339(status.last_retrain_request) >= at:
        return None
    return value, at


def retrain_window_value(monitor: str, status: DriftMonitorStatus, verdict: Verdict, request: str) -> str:
    """The value of mlops.dev/retrain-window: the window the check saw, as JSON (the ModelTraining
    reads its production data from the window's start on and records it in the run's lineage).
    ``request`` is the retrain request it belongs to, so a later request without a window (kubectl
    mlops retrain) does not reuse it."""
    import json

    window = {"request": request, "monitor": monitor, "start": status.window_start, "end": status.window_end,
              "rows": status.sample_size, "driftedFeatures": list(verdict.drifted)}
    text = json.dumps({k: v for k, v in window.items() if v is not None}, separators=(",", ":"))
    while len(text) > 8192 and window["driftedFeatures"]:  # annotations stay small; the start matters most
        window["driftedFeatures"] = window["driftedFeatures"][: len(window["driftedFeatures"]) // 2]
        text = json.dumps({k: v for k, v in window.items() if v is not None}, separators=(",", ":"))
    return text
