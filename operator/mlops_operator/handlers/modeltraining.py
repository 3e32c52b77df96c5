"""kopf handlers for ModelTraining: start runs on triggers, observe them, record the outcome.

The handler registers, calls and writes; the decisions are pure, in ``reconcile/`` (modeltraining,
validation), and the I/O is in ``backends/`` (training: the runs; estimator_check: what the installed
packages say about spec.training, asked of a helper process). One reconciliation:

1. Parse and check the spec, the estimator and its parameters included when the installed libraries
   have judged them (InvalidSpec stops here); pick the TrainingBackend spec.backend names
   (backends/training.py: local, kfp), the only thing that knows how runs execute.
2. If a run is active, observe it; past spec.timeout, stop it (DeadlineExceeded); when it
   finishes, record it (history, conditions, latestValidatedModel, metrics, an event).
3. Work out the pending triggers (generation, retrain annotation, schedule). With a run still
   active, Forbid leaves them pending and Replace cancels the active run.
4. Submit one run for the pending triggers under a deterministic name (the backends return the
   existing run for a known name), and record the triggers as served.
5. Schedule bookkeeping: a backend that schedules runs itself (kfp: a recurring run) is kept in
   step with the spec; record nextScheduleTime.

spec.training not judged yet (a new training, or the helper not asked since the operator started): the
judgement is awaited before step 4 or 5 would start any work; when nothing is to start, the status is
written without it and the judgement is asked in the background (6), the training observed again if
refused. Either way nothing runs on a refused spec.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from mlops_operator import metrics
from mlops_operator.api.errors import BackendUnavailable, InvalidSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec, ModelTrainingStatus, RunRecord
from mlops_operator.backends import estimator_check
from mlops_operator.backends.training import BACKENDS, ScheduleRequest, TrainingBackend, training_backend
from mlops_operator.handlers.common import (
    Retry,
    get_settings,
    parse_spec,
    uri_policy_problems,
    post_event,
    register_kind,
    wake,
)
from mlops_operator.reconcile import modeltraining
from mlops_operator.reconcile.conditions import FALSE, now_rfc3339, parse_rfc3339, plain, set_condition, typed
from mlops_operator.reconcile.validation import (
    endpoint_problem,
    local_training_problem,
    training_spec_errors,
)

KIND = "ModelTraining"
PLURAL = "modeltrainings"

log = logging.getLogger("mlops_operator.training")
# spec.training is judged by the installed estimator libraries in a helper process, so that this one
# does not import scikit-learn (backends/estimator_check.py).
_estimator_checker = estimator_check.EstimatorChecker()


def _now() -> datetime:
    return datetime.now(UTC)


def _finished(obj: dict[str, Any], spec: ModelTrainingSpec, record: RunRecord, reasons: list[str]) -> None:
    """Count a finished run in the metrics and announce it (once per run: the callers see to that)."""
    counted = modeltraining.run_metrics(record)
    metrics.TRAINING_RUNS.labels(counted.result).inc()
    if counted.duration_seconds is not None:
        metrics.TRAINING_DURATION.observe(counted.duration_seconds)
    if counted.validated_version is not None:
        namespace = obj["metadata"]["namespace"]
        metrics.MODEL_VERSION.labels(namespace, spec.model).set(counted.validated_version)
        for metric, value in counted.validated_metrics.items():
            metrics.VALIDATED_METRIC.labels(namespace, spec.model, metric).set(value)
    event = modeltraining.run_event(record, reasons)
    post_event(obj, event.reason, event.message, warning=event.warning)


async def reconcile_training(obj: dict[str, Any]) -> ModelTrainingStatus:
    """One reconciliation of a ModelTraining; returns the desired status."""
    meta = obj["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation") or 0
    status = ModelTrainingStatus.model_validate(obj["status"])
    settings = get_settings()
    now = _now()

    # 1. The spec, and the backend it names.
    spec = parse_spec(ModelTrainingSpec, obj.get("spec") or {})
    refused = local_training_problem(spec, settings.runs_in_pod, settings.local_training_in_pod)
    if refused:
        raise InvalidSpec(refused)
    # The installed libraries' judgement of spec.training, when known; else it is awaited only before work
    # starts (a run, a KFP schedule), and otherwise asked in the background (step 6).
    judgement = _estimator_checker.known(spec)
    problems = _training_problems(spec, judgement, settings.kfp_host)
    endpoint = endpoint_problem("spec.kfp.host", spec.kfp and spec.kfp.host, settings.kfp_host,
                                settings.endpoint_prefixes)
    problems += [endpoint] if endpoint else []
    problems += await uri_policy_problems(
        status, namespace, ("spec.dataset.uri", spec.dataset.uri), ("spec.pipeline.uri", spec.pipeline.uri),
        ("spec.productionData.labelsUri", spec.production_data and spec.production_data.labels_uri))
    if problems:
        raise InvalidSpec("; ".join(problems))
    if status.phase in (None, "Invalid"):
        status = status.model_copy(update={"phase": "Pending"})
    backend = training_backend(spec, namespace, name, settings)

    try:
        # 2. The active run.
        latest = status.latest_run
        if latest is not None and latest.state in modeltraining.ACTIVE_STATES:
            observed = await backend.observe(latest)
            expired = modeltraining.deadline_step(observed.record, spec.timeout, now)
            if expired is not None:  # spec.timeout: stopped, and failed with reason DeadlineExceeded
                await backend.cancel(latest)
                status = _record_observed(obj, spec, status, latest, expired, [], generation)
            else:
                status = _record_observed(obj, spec, status, latest, observed.record, observed.reasons, generation)

        # 3. Pending triggers.
        created = parse_rfc3339(meta["creationTimestamp"])
        triggers = modeltraining.pending_triggers(spec, generation, status, meta.get("annotations") or {}, created,
                                                  now, backend_schedules=backend.schedules_runs)
        decision = modeltraining.concurrency_step(spec.concurrency_policy, triggers, status.latest_run, now)
        triggers = decision.start
        # A backend that schedules runs itself (kfp) keeps a schedule in step with the spec (step 5).
        keeps_schedule = bool(backend.schedules_runs and (spec.schedule or status.recurring_run_id))
        if judgement is None and (triggers or keeps_schedule):
            judgement = await _estimator_checker.judged(spec)  # before any work starts
            problems = _training_problems(spec, judgement, settings.kfp_host)
            if problems:
                raise InvalidSpec("; ".join(problems))
        if decision.replaced is not None:
            await backend.cancel(status.latest_run)
            status = modeltraining.finished_status(status, decision.replaced, spec.history_limit, generation)

        # 4. Start one run for the pending triggers.
        if triggers:
            status = await _start_run(obj, spec, backend, status, triggers, now)

        # 5. The schedule: kept by the backend (a KFP recurring run) or fired by step 3.
        if keeps_schedule:
            status = await _sync_schedule(obj, spec, backend, status)
        upcoming = modeltraining.next_schedule_time(spec, now)
        # None removes the field (a merge patch of null).
        status = status.model_copy(update={"next_schedule_time": now_rfc3339(upcoming) if upcoming else None})
        # 6. Nothing started: spec.training is judged in the background, and a refusal comes back as InvalidSpec
        # (nothing ran meanwhile). A thousand trainings applied at once do not all wait for the helper's start.
        if judgement is None:
            _judge_later(spec, namespace, name, settings.kfp_host)
    except BackendUnavailable as error:
        conditions = set_condition(plain(status.conditions), "Succeeded", FALSE, BackendUnavailable.reason,
                                   error.message, generation=generation)
        raise Retry(error.message, status.model_copy(update={"conditions": typed(conditions)}),
                    delay=get_settings().backend_retry_seconds) from None
    return status


def _training_problems(spec: ModelTrainingSpec, judgement: estimator_check.Judgement | None,
                       kfp_host: str | None) -> list[str]:
    """spec.training's refusals: the schema's and, with the installed libraries' judgement, the estimator's
    (its parameters, and metrics that do not fit its task)."""
    if judgement is None:
        return training_spec_errors(spec, kfp_host)
    return training_spec_errors(spec, kfp_host, lambda _estimator: judgement.task) or list(judgement.problems)


def _judge_later(spec: ModelTrainingSpec, namespace: str, name: str, kfp_host: str | None) -> None:
    """Have spec.training judged in the background; observe the training again if it is refused."""
    async def judge() -> None:
        judgement = await _estimator_checker.judged(spec)
        if _training_problems(spec, judgement, kfp_host):
            wake(PLURAL, namespace, name)

    task = asyncio.get_running_loop().create_task(judge())
    _judging.add(task)
    task.add_done_callback(_judging.discard)


_judging: set[asyncio.Task] = set()  # the background judgements in flight (held until done)


async def _sync_schedule(obj: dict[str, Any], spec: ModelTrainingSpec, backend: TrainingBackend,
                         status: ModelTrainingStatus) -> ModelTrainingStatus:
    """Keep the backend's schedule in step with spec.schedule and record the runs it started."""
    meta = obj["metadata"]
    generation = meta.get("generation") or 0
    baseline, champion_uri = modeltraining.champion(status)
    params = modeltraining.pipeline_parameters(spec, meta["namespace"], get_settings().artifact_root_uri, baseline,
                                               champion_uri=champion_uri)
    since = parse_rfc3339(status.last_schedule_time) if status.last_schedule_time else None
    schedule = await backend.sync_schedule(ScheduleRequest(
        spec.schedule, not spec.suspend, modeltraining.scheduled_run_prefix(meta["name"], meta["uid"]), params, since))
    status, finished = modeltraining.record_scheduled_runs(status, schedule.runs, spec.history_limit, generation)
    for run in finished:
        _finished(obj, spec, run.record, run.reasons)
    # None removes the field (a merge patch of null).
    return status.model_copy(update={"recurring_run_id": schedule.backend_id})


def _record_observed(obj: dict[str, Any], spec: ModelTrainingSpec, status: ModelTrainingStatus, previous: RunRecord,
                     record: RunRecord, reasons: list[str], generation: int) -> ModelTrainingStatus:
    """Status after observing an active run: still running, or finished (recorded and announced once)."""
    if previous.retrain_window is not None:  # known at submission, not returned by the backends
        record = record.model_copy(update={"retrain_window": previous.retrain_window})
    if record.state in modeltraining.ACTIVE_STATES:
        return modeltraining.running_status(status, record, generation)
    status = modeltraining.finished_status(status, record, spec.history_limit, generation, reasons)
    _finished(obj, spec, record, reasons)
    return status


async def _start_run(obj: dict[str, Any], spec: ModelTrainingSpec, backend: TrainingBackend,
                     status: ModelTrainingStatus, triggers: list[modeltraining.Trigger], now: datetime
                     ) -> ModelTrainingStatus:
    """Submit one run for the pending triggers under a deterministic name and record the triggers as served."""
    meta = obj["metadata"]
    generation = meta.get("generation") or 0
    annotations = meta.get("annotations") or {}
    run_name = modeltraining.run_name(meta["name"], meta["uid"], triggers)
    description = "; ".join(t.description for t in triggers)
    baseline, champion_uri = modeltraining.champion(status)
    retrain_window = (modeltraining.parse_retrain_window(annotations)
                      if any(t.kind == "retrain" for t in triggers) else None)
    settings = get_settings()
    # The inference log lives under the artifact root (the same place the router and the DriftMonitor use).
    production = modeltraining.production_parameters(spec, meta["namespace"], settings.artifact_root_uri, now,
                                                      retrain_window)
    params = modeltraining.pipeline_parameters(spec, meta["namespace"], settings.artifact_root_uri, baseline,
                                               champion_uri=champion_uri, production=production,
                                               retrain_window=retrain_window)
    record = await backend.submit(run_name, description, params)
    if retrain_window is not None:
        record = record.model_copy(update={"retrain_window": retrain_window})
    status = modeltraining.mark_handled(status, triggers, generation, annotations)
    if record.state in modeltraining.ACTIVE_STATES:
        post_event(obj, "RunStarted", f"Started run {run_name} ({description}).")
        return modeltraining.running_status(status, record, generation)
    # Refused at once (InvalidSpec), or it finished while nobody recorded it.
    known = any(r.name == record.name for r in status.history)
    status = modeltraining.finished_status(status, record, spec.history_limit, generation, [])
    if not known:  # count and announce a run once, however often it is looked up
        _finished(obj, spec, record, [])
    return status


async def _cleanup(namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Stop the object's active runs and remove its schedule from the backend (model versions are
    kept: they are immutable records). A spec that no longer parses has nothing to clean up."""
    try:
        parsed = ModelTrainingSpec.model_validate(dict(spec))
    except ValueError:
        return
    try:
        observed = ModelTrainingStatus.model_validate(dict(status))
    except ValueError:  # not what the operator wrote: its schedule is still removed
        observed = ModelTrainingStatus()
    try:
        await training_backend(parsed, namespace, name, get_settings()).cleanup(observed)
    except (InvalidSpec, BackendUnavailable) as error:
        # The token Secret is gone, or KFP is down: the object is deleted all the same (never
        # undeletable); what may be left in the backend is named in the log.
        log.warning("ModelTraining %s/%s deleted without cleaning up its %s runs and schedule: %s", namespace, name,
                    parsed.backend, error.message)
    except Exception:  # a fault of the operator: logged with its traceback, and still never undeletable
        log.exception("ModelTraining %s/%s deleted without cleaning up its %s runs and schedule", namespace, name,
                      parsed.backend)


def _requeue(obj: Mapping[str, Any], status: Mapping[str, Any]) -> float | None:
    """When to observe the training again (reconcile.modeltraining.requeue_after)."""
    spec = ModelTrainingSpec.model_validate(obj.get("spec") or {})
    return modeltraining.requeue_after(spec, status, _now(), backend_schedules=BACKENDS[spec.backend].schedules_runs,
                                       poll_interval=get_settings().poll_interval_seconds)


@kopf.on.cleanup()
async def stop_estimator_checker(**_: Any) -> None:
    """Operator shutdown: stop the estimator check helper (it would exit on its own: its stdin closes)."""
    await asyncio.to_thread(_estimator_checker.stop)


def _cleanup_needed(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether deleting the training waits for :func:`_cleanup`: always on backend kfp (its runs and
    recurring run live in KFP), else while its latest run is active (a local runner to stop; a Job goes
    with its owner, but is deleted first so that its Pod stops at once). Without a finalizer the cleanup
    still runs when the deletion is seen."""
    if (spec.get("backend") or ModelTrainingSpec.model_fields["backend"].default) == "kfp":
        return True
    return ((status.get("latestRun") or {}).get("state") in modeltraining.ACTIVE_STATES
            or bool(status.get("recurringRunId")))


register_kind(KIND, PLURAL, reconcile_training, status=ModelTrainingStatus, cleanup=_cleanup, requeue=_requeue,
              cleanup_needed=_cleanup_needed)
