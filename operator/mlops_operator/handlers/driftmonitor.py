"""kopf handlers for DriftMonitor: check the deployment's live inputs for drift, close the loop.

Each reconciliation (change handlers, and the observing daemon every poll interval):

1. Parse and check the spec (InvalidSpec stops here).
2. Return unless a check is due (spec.interval since status.lastCheckTime, a new generation, or a
   retry after a failed check).
3. Read the ModelDeployment; pick the reference: spec.reference.profileUri, a profile of
   spec.reference.datasetUri, or the training profile of the deployment's stable model version.
4. Read the window of the inference log (successful, non-shadow requests) and compare it with the
   reference through the drift engine; with spec.performance, join the labels and compare the
   live metric with the training metric.
5. Write the status, post an event when the verdict changes, export the metrics.
6. On drift with spec.onDrift.retrain, and when the cooldown and maxPerDay allow it, set the
   ``mlops.dev/retrain-requested`` annotation on the ModelTraining (never its spec).

A check that cannot run (deployment, reference or log missing) records Ready=False with the
reason and is retried by the observing daemon; it never crashes the handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlops_operator import drift, metrics
from mlops_operator.api.annotations import REPORT_ANNOTATION, RETRAIN_ANNOTATION, RETRAIN_WINDOW_ANNOTATION
from mlops_operator.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from mlops_operator.api.modeldeployment import ModelDeploymentStatus
from mlops_operator.api.errors import InvalidSpec
from mlops_operator.backends import drift_data, kube, seldon_logger_sink, telemetry
from mlops_operator.drift import report as drift_report
from mlops_operator.handlers.common import (
    Retry,
    get_settings,
    parse_spec,
    uri_policy_problems,
    post_event,
    register_kind,
)
from mlops_operator.reconcile import driftmonitor, rootcause
from mlops_operator.reconcile.validation import drift_spec_errors

KIND = "DriftMonitor"
PLURAL = "driftmonitors"
DEPLOYMENTS = "modeldeployments"
TRAININGS = "modeltrainings"
CHECK_RESULTS = {driftmonitor.DRIFT: "drift", driftmonitor.NO_DRIFT: "nodrift", driftmonitor.INSUFFICIENT_DATA: "insufficient"}

log = logging.getLogger("mlops_operator.drift")


def _now() -> datetime:
    return datetime.now(UTC)


class CheckFailed(Exception):
    """A check could not run; ``reason`` becomes the Ready condition's reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------
# Metrics: one series per (monitor, feature, test); series of features no longer checked are removed.

_score_series: dict[tuple[str, str], set[tuple[str, str]]] = {}


def _export_metrics(namespace: str, name: str, report: drift.DriftReport, verdict: driftmonitor.Verdict) -> None:
    series = set()
    for feature in report.features.values():
        for test, result in feature.tests.items():
            if result.score is None:  # InsufficientData: no score to show (a stale one is removed below)
                continue
            metrics.DRIFT_SCORE.labels(namespace, name, feature.name, test).set(result.score)
            series.add((feature.name, test))
    for stale in _score_series.get((namespace, name), set()) - series:
        metrics.DRIFT_SCORE.remove(namespace, name, *stale)
    _score_series[(namespace, name)] = series
    metrics.DRIFT_DETECTED.labels(namespace, name).set(1 if verdict.phase == driftmonitor.DRIFT else 0)
    metrics.DRIFT_CHECKS.labels(CHECK_RESULTS[verdict.phase]).inc()


def _forget_metrics(namespace: str, name: str) -> None:
    for series in _score_series.pop((namespace, name), set()):
        metrics.DRIFT_SCORE.remove(namespace, name, *series)
    try:
        metrics.DRIFT_DETECTED.remove(namespace, name)
    except KeyError:
        pass


# ---------------------------------------------------------------------------------------------
# One check


async def _reference(spec: DriftMonitorSpec, deployment_status: ModelDeploymentStatus
                     ) -> tuple[dict[str, Any], str, str]:
    """(profile, URI, description) of what the window is compared with."""
    reference = spec.reference
    if reference.profile_uri:
        uri, description = reference.profile_uri, f"the profile {reference.profile_uri}"
        load = lambda: drift_data.read_profile(uri)  # noqa: E731
    elif reference.dataset_uri:
        uri, description = reference.dataset_uri, f"the dataset {reference.dataset_uri}"
        load = lambda: drift_data.dataset_profile(uri, reference.target)  # noqa: E731
    else:
        stable_uri = deployment_status.stable_uri
        if not stable_uri:
            raise CheckFailed(driftmonitor.NO_SERVED_MODEL, f"ModelDeployment {spec.deployment_ref.name} serves no model "
                              "version yet (no status.stableUri) and spec.reference names no profile or dataset")
        uri = drift_data.model_version_profile_uri(stable_uri)
        description = f"the training profile of model version {deployment_status.stable_version or '?'}"
        load = lambda: drift_data.model_version_profile(stable_uri)  # noqa: E731
    try:
        profile = await asyncio.to_thread(load)
    except Exception as error:  # missing file, bad JSON, unreadable dataset: all a missing reference
        raise CheckFailed(driftmonitor.REFERENCE_UNAVAILABLE, f"cannot read the reference {uri}: "
                          f"{type(error).__name__}: {error}"[:1024]) from None
    return profile, uri, description


async def _performance(spec: DriftMonitorSpec, window, deployment_status: ModelDeploymentStatus
                       ) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """(status.performance, problem) for spec.performance."""
    performance = spec.performance
    if performance is None:
        return None, None
    try:
        labels = await asyncio.to_thread(drift_data.read_labels, performance.labels_uri)
    except Exception as error:
        message = f"cannot read labels {performance.labels_uri}: {type(error).__name__}: {error}"[:1024]
        return ({"metric": performance.metric, "samples": 0, "degraded": False, "message": message},
                (driftmonitor.LABELS_UNAVAILABLE, message))
    stable_uri = deployment_status.stable_uri
    training = await asyncio.to_thread(drift_data.read_training_metrics, stable_uri) if stable_uri else None
    try:
        y_true, y_pred = driftmonitor.join_labels(window, labels, deployment_status.stable_version)
    except ValueError as error:
        message = str(error)[:1024]
        return ({"metric": performance.metric, "samples": 0, "degraded": False, "message": message},
                (driftmonitor.LABELS_UNAVAILABLE, message))
    return driftmonitor.performance_result(performance, y_true, y_pred, training), None


async def _check(obj: dict[str, Any], spec: DriftMonitorSpec, status: DriftMonitorStatus, now: datetime
                 ) -> tuple[DriftMonitorStatus, drift.DriftReport, driftmonitor.Verdict]:
    meta = obj["metadata"]
    namespace, generation = meta["namespace"], meta.get("generation") or 0
    deployment_name = spec.deployment_ref.name

    # The deployment and the reference.
    deployment = await kube.get_object(DEPLOYMENTS, namespace, deployment_name)
    if deployment is None:
        raise CheckFailed(driftmonitor.DEPLOYMENT_NOT_FOUND, f"ModelDeployment {deployment_name} not found")
    deployment_status = ModelDeploymentStatus.model_validate(deployment.get("status") or {})
    profile, reference_uri, description = await _reference(spec, deployment_status)
    reference_features = list(profile["features"])
    unknown = driftmonitor.missing_features(spec, reference_features)
    if unknown:
        raise CheckFailed(driftmonitor.FEATURE_MISMATCH, f"spec.features not in the reference {reference_uri}: "
                          f"{', '.join(unknown)}")

    # The window. A request's 2-D tensor has the served model's input columns in training order.
    stable_uri = deployment_status.stable_uri
    trained_on = await asyncio.to_thread(drift_data.model_input_features, stable_uri) if stable_uri else None
    tensor_columns = list(trained_on) if trained_on and set(trained_on) == set(reference_features) \
        else reference_features
    root = get_settings().inference_log_root_uri
    try:
        if not await asyncio.to_thread(drift_data.inference_log_exists, root, namespace, deployment_name):
            raise CheckFailed(driftmonitor.NO_REQUESTS_YET, f"ModelDeployment {deployment_name} has not served a request "
                              "yet (no inference log)")
        window = await asyncio.to_thread(
            drift_data.read_inference_window, root, namespace, deployment_name, max_rows=spec.window.rows,
            since=driftmonitor.window_since(spec.window, now), feature_names=tensor_columns)
    except CheckFailed:
        raise
    except Exception as error:
        raise CheckFailed(driftmonitor.INFERENCE_LOG_UNAVAILABLE, f"cannot read the inference log of {deployment_name}: "
                          f"{type(error).__name__}: {error}"[:1024]) from None
    feature_columns = list(window.attrs.get("feature_columns") or [])
    mismatch = driftmonitor.feature_mismatch(reference_features, feature_columns, len(window))
    if mismatch:
        raise CheckFailed(driftmonitor.FEATURE_MISMATCH, mismatch)

    # The comparison.
    current = window[[name for name in feature_columns if name in set(reference_features)]]
    try:
        # drift.compare is looked up in the worker thread: its first use imports scipy (seconds),
        # which must not block the event loop.
        report = await asyncio.to_thread(lambda: drift.compare(
            profile, current, driftmonitor.engine_tests(spec), spec.features or None,
            alpha=spec.alpha, correction=driftmonitor.engine_correction(spec), min_samples=spec.window.min_samples,
            histograms=True))
    except ValueError as error:
        raise CheckFailed(driftmonitor.CHECK_FAILED, f"drift comparison failed: {error}"[:1024]) from None
    performance, problem = await _performance(spec, window, deployment_status)
    verdict = driftmonitor.verdict_of(report, spec.drift_share, len(window), spec.window.min_samples, performance)
    status = driftmonitor.checked_status(
        status, verdict, results=driftmonitor.feature_results(report), sample_size=len(window),
        window=driftmonitor.window_bounds(window), reference_uri=reference_uri, reference_description=description,
        reference_size=profile.get("rows"), model_version=deployment_status.stable_version,
        performance=performance, problem=problem, generation=generation, now=now, alpha=spec.alpha)
    cause = _drift_cause(namespace, deployment_name, deployment_status, status, now) \
        if verdict.phase == driftmonitor.DRIFT else None
    return status.model_copy(update={"cause": cause}), report, verdict


def _drift_cause(namespace: str, deployment: str, deployment_status: ModelDeploymentStatus,
                 status: DriftMonitorStatus, now: datetime) -> str | None:
    """Root-cause hints for a Drift verdict; the drifted features also become facts for the deployment's
    own incidents (an anomaly at the same time then cites them)."""
    at = now.timestamp()
    drifted = [rootcause.FeatureDrift(at, result.feature, test.test, test.score, test.threshold)
               for result in status.results for test in result.tests
               if test.drifted and test.score is not None and test.threshold is not None]
    telemetry.note_drift(namespace, deployment, drifted)
    facts = telemetry.facts(deployment_status, telemetry.peek(namespace, deployment))
    hints = rootcause.root_cause_hints(rootcause.Incident("drift", at), facts)
    # No hint is the usual case (the world changed): then nothing is claimed.
    return rootcause.summarise(hints)[:1024] if hints else None


async def _write_report(obj: dict[str, Any], before: DriftMonitorStatus, status: DriftMonitorStatus,
                        report: drift.DriftReport, verdict: driftmonitor.Verdict, request: str | None
                        ) -> DriftMonitorStatus:
    """Record the check in the monitor's history and, when due, write its HTML report; a storage
    failure is logged and leaves the status without a new report (the check itself stands)."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    root = get_settings().artifact_root_uri
    try:
        history = await asyncio.to_thread(drift_data.record_check, root, namespace, name,
                                          driftmonitor.history_entry(status, verdict))
        if not driftmonitor.report_due(before.phase, verdict, before, request):
            return status
        page = drift_report.render_report(report, driftmonitor.report_context(status, verdict, name, namespace, history))
        uri, latest = await asyncio.to_thread(drift_data.write_report, root, namespace, name, page,
                                              status.last_check_time)
    except OSError as error:
        log.error("DriftMonitor %s/%s: cannot write its drift report under %s: %s", namespace, name, root, error)
        return status
    # Store the request this report answers, or keep the one answered before (so an old annotation
    # does not ask again).
    previous = before.report.request if before.report else None
    answered = request if driftmonitor.report_pending(before, request) else previous
    return driftmonitor.with_report(status, uri, latest, verdict, answered)


async def _request_retrain(obj: dict[str, Any], spec: DriftMonitorSpec, status: DriftMonitorStatus,
                           verdict: driftmonitor.Verdict, now: datetime) -> DriftMonitorStatus:
    """Ask the ModelTraining for a run when the policy allows it; the status records the outcome."""
    policy = spec.on_drift.retrain
    assert policy is not None
    meta = obj["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation") or 0
    decision = driftmonitor.retrain_decision(policy, status, now)
    if not decision.allowed:
        return driftmonitor.retrain_refused(status, decision, generation, now)
    training_name = policy.training_ref.name
    training = await kube.get_object(TRAININGS, namespace, training_name)
    if training is None:
        return driftmonitor.training_missing(status, decision, training_name, generation, now)
    # Asked already, but not recorded (the operator stopped between the two writes): record that request.
    unrecorded = driftmonitor.unrecorded_request(name, status, training["metadata"].get("annotations") or {})
    if unrecorded is not None:
        log.info("DriftMonitor %s/%s records its earlier request to ModelTraining %s: %s", namespace, name,
                 training_name, unrecorded[0])
        return driftmonitor.record_retrain(status, decision, *unrecorded)
    value = driftmonitor.retrain_annotation_value(now, verdict.summary)
    # The run reads the inference log from the window's start on. The operator's Seldon request-logger
    # sink writes its batches every few seconds (an object store cannot append): what it holds arrived
    # before this request, so it is written first, and a run that starts at once still reads it.
    sink = seldon_logger_sink.running()
    if sink is not None:
        await sink.flush()
    # One patch: the ModelTraining sees the request and the window it belongs to together.
    await kube.patch_annotations(TRAININGS, namespace, training_name, {
        RETRAIN_ANNOTATION: value, RETRAIN_WINDOW_ANNOTATION: driftmonitor.retrain_window_value(name, status, verdict, value)})
    metrics.RETRAIN_REQUESTS.labels(namespace, name).inc()
    log.info("DriftMonitor %s/%s asked ModelTraining %s to retrain: %s", namespace, name, training_name, value)
    post_event(obj, "RetrainRequested", f"Asked ModelTraining {training_name} to retrain: {value}")
    post_event(training, "RetrainRequested", f"DriftMonitor {name} requested a retrain: {value}")
    return driftmonitor.record_retrain(status, decision, value, now)


def _announce(obj: dict[str, Any], previous_phase: str | None, status: DriftMonitorStatus) -> None:
    event = driftmonitor.verdict_event(previous_phase, status)
    if event is not None:
        post_event(obj, event.reason, event.message, warning=event.warning)


async def reconcile_driftmonitor(obj: dict[str, Any]) -> DriftMonitorStatus:
    """One reconciliation; returns the desired status."""
    meta = obj["metadata"]
    generation = meta.get("generation") or 0
    before = DriftMonitorStatus.model_validate(obj["status"])
    previous_phase = before.phase
    status = before
    spec = parse_spec(DriftMonitorSpec, obj.get("spec") or {})
    problems = drift_spec_errors(spec, meta.get("namespace"))
    problems += await uri_policy_problems(status, meta["namespace"],
                                          ("spec.reference.datasetUri", spec.reference.dataset_uri),
                                          ("spec.reference.profileUri", spec.reference.profile_uri),
                                          ("spec.performance.labelsUri", spec.performance and spec.performance.labels_uri))
    if problems:
        raise InvalidSpec("; ".join(problems))
    if status.phase in (None, "Invalid"):
        status = status.model_copy(update={"phase": driftmonitor.PENDING})
    now = _now()
    report_request = (meta.get("annotations") or {}).get(REPORT_ANNOTATION)
    if not driftmonitor.check_due(spec, status, generation, now, report_request):
        return status
    try:
        status, report, verdict = await _check(obj, spec, status, now)
    except CheckFailed as failure:
        status = driftmonitor.failed_status(status, failure.reason, failure.message, generation, now)
        metrics.DRIFT_CHECKS.labels("error").inc()
        _announce(obj, previous_phase, status)
        raise Retry(f"{failure.reason}: {failure.message}", status,
                    delay=driftmonitor.retry_after_failure(spec).total_seconds()) from None
    _export_metrics(meta["namespace"], meta["name"], report, verdict)
    status = await _write_report(obj, before, status, report, verdict, report_request)
    if verdict.phase == driftmonitor.DRIFT and spec.on_drift.retrain:
        status = await _request_retrain(obj, spec, status, verdict, now)
    _announce(obj, previous_phase, status)
    return status


async def _cleanup(namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Drop the monitor's metric series."""
    _forget_metrics(namespace, name)


register_kind(KIND, PLURAL, reconcile_driftmonitor, status=DriftMonitorStatus, cleanup=_cleanup)
