"""ModelTraining, pure: which triggers are pending, run names, the pipeline request, the status.

A run starts for a new spec generation, a changed ``mlops.dev/retrain-requested`` annotation, or a
due cron time. Triggers that are pending together start one run. The run's name is derived from
the object's uid and the trigger, so a crash between submitting and recording a run finds the same
run again instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any


from mlops_operator.api.annotations import RETRAIN_ANNOTATION, RETRAIN_WINDOW_ANNOTATION
from mlops_operator.api.modeltraining import (
    DataSource,
    ModelComparison,
    ModelTrainingSpec,
    ModelTrainingStatus,
    RetrainWindow,
    RunRecord,
    ValidatedModel,
)
from mlops_operator.reconcile.conditions import FALSE, TRUE, UNKNOWN, parse_rfc3339, plain, set_condition, typed
from mlops_operator.reconcile.durations import cron_from
from mlops_operator.reconcile.events import Event

ACTIVE_STATES = ("Pending", "Running")
"""The states of a run that has not finished."""


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Trigger:
    """Something that asks for a run."""

    kind: str
    """spec, retrain or schedule."""
    key: str
    """Short, deterministic part of the run name."""
    description: str
    """What a person reads in status.latestRun.trigger."""


def pending_triggers(
    spec: ModelTrainingSpec,
    generation: int,
    status: ModelTrainingStatus,
    annotations: dict[str, str],
    created: datetime,
    now: datetime,
    *,
    backend_schedules: bool = False,
) -> list[Trigger]:
    """The triggers that have not started a run yet, most important first. With
    ``backend_schedules`` the backend fires spec.schedule itself (a KFP recurring run): no schedule trigger."""
    triggers = []
    if status.triggered_generation != generation and spec.run_on_change:
        triggers.append(Trigger("spec", f"g{generation}", f"spec generation {generation}"))
    request = annotations.get(RETRAIN_ANNOTATION)
    if request and request != status.observed_retrain_request:
        digest = hashlib.sha256(request.encode()).hexdigest()[:8]
        triggers.append(Trigger("retrain", f"r{digest}", f"retrain requested: {request}"[:1024]))
    due = None if backend_schedules else due_schedule_time(spec, status, created, now)
    if due is not None:
        triggers.append(Trigger("schedule", f"s{due:%Y%m%d%H%M}", f"schedule {spec.schedule} at {due:%Y-%m-%dT%H:%M:%SZ}"))
    return triggers


class ConcurrencyPolicy(str, Enum):
    """What a trigger does while a run of the same ModelTraining is still active (spec.concurrencyPolicy)."""

    FORBID = "Forbid"
    """The trigger stays pending; a run starts for it once the active run has finished."""
    REPLACE = "Replace"
    """The active run is canceled (recorded as Canceled/Replaced) and a run starts for the trigger now."""


@dataclass(frozen=True)
class ConcurrencyDecision:
    """What :func:`concurrency_step` decided for the pending triggers."""

    start: list[Trigger]
    """The triggers to start one run for now (empty: start nothing now)."""
    replaced: RunRecord | None = None
    """Replace: the active run's record as canceled; the caller cancels the run and records this."""


def concurrency_step(policy: ConcurrencyPolicy | str, triggers: list[Trigger], latest_run: RunRecord | None,
                     now: datetime) -> ConcurrencyDecision:
    """Apply the concurrency policy to the pending triggers, given the latest run's record."""
    active = latest_run is not None and latest_run.state in ACTIVE_STATES
    if not triggers or not active:
        return ConcurrencyDecision(list(triggers))
    if ConcurrencyPolicy(policy) is ConcurrencyPolicy.FORBID:
        return ConcurrencyDecision([])
    replaced = latest_run.model_copy(update={
        "state": "Canceled", "reason": "Replaced", "message": f"replaced by a new run ({triggers[0].description})",
        "finished": _stamp(now)})
    return ConcurrencyDecision(list(triggers), replaced)


DEADLINE_EXCEEDED = "DeadlineExceeded"
"""The reason of a run stopped because it ran longer than spec.timeout."""


def deadline_step(record: RunRecord, timeout: str | None, now: datetime) -> RunRecord | None:
    """The active run's record as stopped (Failed/DeadlineExceeded) when it has run longer than
    ``timeout`` (spec.timeout) since it started; None while it may go on. The caller cancels the run."""
    if not timeout or record.state not in ACTIVE_STATES or not record.started:
        return None
    from mlops_operator.reconcile.durations import parse_duration

    if now - parse_rfc3339(record.started) <= parse_duration(timeout):
        return None
    return record.model_copy(update={
        "state": "Failed", "reason": DEADLINE_EXCEEDED,
        "message": f"the run was still {record.state.lower()} after spec.timeout {timeout} "
                   f"(started {record.started}); it was stopped",
        "finished": _stamp(now)})


def due_schedule_time(spec: ModelTrainingSpec, status: ModelTrainingStatus, created: datetime, now: datetime
                      ) -> datetime | None:
    """The latest cron time in (last fired, now], or None. Missed times collapse into one run."""
    if not spec.schedule or spec.suspend:
        return None
    last = parse_rfc3339(status.last_schedule_time) if status.last_schedule_time else created
    latest = cron_from(spec.schedule, now).get_prev(datetime)
    return latest if latest > last else None


def next_schedule_time(spec: ModelTrainingSpec, now: datetime) -> datetime | None:
    """When the schedule fires next."""
    if not spec.schedule or spec.suspend:
        return None
    return cron_from(spec.schedule, now).get_next(datetime)


def requeue_after(spec: ModelTrainingSpec, status: Mapping[str, Any], now: datetime, *, backend_schedules: bool,
                  poll_interval: float) -> float | None:
    """When to observe a ModelTraining again after a reconciliation; None: not until it changes (a spec
    change or a retrain request is a change).

    * an active run is polled (backends report no events);
    * a schedule the backend fires itself (a KFP recurring run) is polled: its fires are found by
      reading the backend's runs;
    * a schedule the operator fires wakes it at the next schedule time;
    * else nothing is in progress.
    """
    if (status.get("latestRun") or {}).get("state") in ACTIVE_STATES:
        return poll_interval
    upcoming = next_schedule_time(spec, now)
    if upcoming is None:
        return None
    if backend_schedules:
        return poll_interval
    return max((upcoming - now).total_seconds(), 1.0)


def run_name(name: str, uid: str, triggers: list[Trigger]) -> str:
    """The deterministic name of the run that serves these triggers."""
    return f"{name}-{uid.replace('-', '')[:8]}-{triggers[0].key}"


def scheduled_run_prefix(name: str, uid: str) -> str:
    """How the runs a backend's own schedule starts are named: this prefix and the fire's schedule
    time (``<name>-<uid8>-s20261123101500``), so each fire claims its own model version."""
    return f"{name}-{uid.replace('-', '')[:8]}-s"


@dataclass(frozen=True)
class ScheduledRun:
    """A run the backend's own schedule started (a KFP recurring run's fire)."""

    scheduled: datetime
    """The schedule time it fired for."""
    record: RunRecord
    """Its run record."""
    reasons: list[str]
    """The gate's reasons when its model failed the gate."""


def record_scheduled_runs(status: ModelTrainingStatus, runs: list[ScheduledRun], history_limit: int, generation: int,
                          now: datetime | None = None) -> tuple[ModelTrainingStatus, list[ScheduledRun]]:
    """Status with the fires the operator has not recorded yet, and those of them that finished
    (to count and announce once).

    Fires are taken oldest first after status.lastScheduleTime (the newest fire recorded). A
    finished fire goes to history (and may become latestValidatedModel); an active one becomes
    latestRun, observed from then on like any run, unless another run is active: then it and every
    later fire wait for the next reconcile, so none is skipped.
    """
    last = parse_rfc3339(status.last_schedule_time) if status.last_schedule_time else None
    result, finished = status, []
    for run in sorted(runs, key=lambda r: r.scheduled):
        if last is not None and run.scheduled <= last:
            continue
        latest = result.latest_run
        if run.record.state in ACTIVE_STATES:
            if latest is not None and latest.state in ACTIVE_STATES and latest.name != run.record.name:
                break
            result = running_status(result, run.record, generation, now)
        else:
            result = finished_status(result, run.record, history_limit, generation, run.reasons, now)
            finished.append(run)
        last = run.scheduled
        result = result.model_copy(update={"last_schedule_time": _stamp(last)})
    return result, finished


def mark_handled(status: ModelTrainingStatus, triggers: list[Trigger], generation: int, annotations: dict[str, str]
                 ) -> ModelTrainingStatus:
    """Status with the triggers recorded as served."""
    fields: dict[str, Any] = {}
    for trigger in triggers:
        if trigger.kind == "spec":
            fields["triggered_generation"] = generation
        elif trigger.kind == "retrain":
            fields["observed_retrain_request"] = annotations[RETRAIN_ANNOTATION]
        elif trigger.kind == "schedule":
            fields["last_schedule_time"] = trigger.description.rsplit(" at ", 1)[1]
    return status.model_copy(update=fields)


def parse_retrain_window(annotations: dict[str, str]) -> RetrainWindow | None:
    """The retrain-window annotation (JSON beside a DriftMonitor's retrain request, set in the same
    patch: the window it saw) as status.latestRun.retrainWindow; None when absent,
    unreadable, or written for another retrain request than the current one (the run then uses
    spec.productionData.window)."""
    value = annotations.get(RETRAIN_WINDOW_ANNOTATION)
    if not value:
        return None
    try:
        raw = json.loads(value)
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("request") != annotations.get(RETRAIN_ANNOTATION):
        return None
    window: dict[str, Any] = {}
    for key in ("monitor", "start", "end"):
        if isinstance(raw.get(key), str) and raw[key]:
            window[key] = raw[key][:253]
    if isinstance(raw.get("rows"), int) and raw["rows"] >= 0:
        window["rows"] = raw["rows"]
    features = raw.get("driftedFeatures")
    if isinstance(features, list):
        window["driftedFeatures"] = [str(f)[:253] for f in features[:512]]
    if window.get("start"):
        try:
            parse_rfc3339(window["start"])
        except (TypeError, ValueError):
            del window["start"]
    return RetrainWindow.model_validate(window) if window else None


def production_parameters(spec: ModelTrainingSpec, namespace: str, log_root: str, now: datetime,
                          retrain_window: RetrainWindow | None) -> dict[str, Any]:
    """The pipeline's ``production_data`` for spec.productionData: where the inference log and the
    labels are and which time range counts (from the retrain window's start when a DriftMonitor
    asked, else spec.productionData.window.duration before now)."""
    production = spec.production_data
    if production is None:
        return {}
    # No upper bound: the run reads what has been served and labelled by the time it extracts
    # (the lineage records the range and digest of what it read).
    params: dict[str, Any] = {"root": log_root, "namespace": namespace,
                              "deployment": production.deployment_ref.name, "labelsUri": production.labels_uri}
    if retrain_window and retrain_window.start:
        params["since"] = retrain_window.start
    elif production.window.duration:
        from mlops_operator.reconcile.durations import parse_duration

        params["since"] = (now - parse_duration(production.window.duration)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if production.window.rows:
        params["maxRows"] = production.window.rows
    return params


def pipeline_parameters(spec: ModelTrainingSpec, namespace: str, artifact_root: str, baseline: dict[str, float] | None,
                        *, champion_uri: str | None = None, production: dict[str, Any] | None = None,
                        retrain_window: RetrainWindow | None = None) -> dict[str, Any]:
    """Arguments of the built-in tabular pipeline for this spec, a ModelTraining in ``namespace``
    (its versions go to that namespace's part of the registry).

    ``champion_uri`` (the current validated version) is scored on the new model's holdout;
    ``production`` is production_parameters(); both, and ``retrain_window``, are passed only to
    the built-in template (a custom pipeline takes the parameters it declares)."""
    params: dict[str, Any] = {
        "dataset_uri": spec.dataset.uri,
        "dataset_format": spec.dataset.format,
        "target": spec.dataset.target,
        "features": list(spec.dataset.features),
        "model_name": spec.model,
        "model_namespace": namespace,
        "artifact_root": artifact_root,
        "task": spec.training.task,
        "estimator": spec.training.estimator,
        "estimator_params": dict(spec.training.parameters),
        "test_size": spec.training.test_size,
        "seed": spec.training.seed,
        "validation": spec.data_validation.model_dump(by_alias=False, exclude_none=True),
        "gate": {t.metric: {k: v for k, v in (("min", t.min), ("max", t.max)) if v is not None}
                 for t in spec.validation.thresholds},
        "baseline_metrics": dict(baseline or {}),
        "max_regression": {"*": spec.validation.max_regression} if spec.validation.max_regression is not None else {},
    }
    builtin = spec.pipeline.config_map_ref is None and spec.pipeline.uri is None
    if builtin and production:
        params["production_data"] = production
        mix = spec.production_data.mix if spec.production_data else None
        if mix is not None:
            params["mix"] = {"minRows": mix.min_rows, "productionWeight": mix.production_weight,
                             **({"maxBaseRows": mix.max_base_rows} if mix.max_base_rows is not None else {})}
    if builtin and champion_uri:
        params["champion_model_uri"] = champion_uri
    if builtin and retrain_window:
        params["retrain_window"] = retrain_window.model_dump(by_alias=True, mode="json", exclude_none=True,
                                                             exclude_unset=True)
    params.update(spec.pipeline.parameters)
    return params


_SOURCE_KEYS = {"name": str, "uri": str, "resolvedUri": str, "rows": int, "digest": str, "servedRows": int,
                "unlabelledRows": int, "rejectedRows": int, "from": str, "to": str, "message": str}


def _sources(raw: Any) -> list[DataSource] | None:
    """Pipeline ``sources`` output as status entries (KFP turns integers into floats)."""
    if not isinstance(raw, list):
        return None
    sources = []
    for item in raw[:2]:
        if not isinstance(item, dict) or item.get("name") not in ("base", "production"):
            continue
        source = {k: kind(item[k]) for k, kind in _SOURCE_KEYS.items() if item.get(k) is not None}
        source["uri"] = source.get("uri", "")[:4096]
        if source.get("message"):
            source["message"] = source["message"][:1024]
        if isinstance(item.get("rejections"), dict) and item["rejections"]:
            source["rejections"] = {str(k)[:253]: int(v) for k, v in list(item["rejections"].items())[:64]}
        sources.append(DataSource.model_validate(source))
    return sources or None


def _comparison(raw: Any) -> ModelComparison | None:
    """Pipeline ``comparison`` output as a status entry."""
    if not isinstance(raw, dict) or not isinstance(raw.get("challenger"), dict):
        return None
    holdout = raw.get("holdout") or {}
    result: dict[str, Any] = {"holdout": str(holdout.get("source") or "dataset"),
                              "holdoutRows": int(holdout.get("rows") or 0),
                              "challenger": {"metrics": {k: float(v) for k, v in raw["challenger"].items()}}}
    champion = raw.get("champion")
    if isinstance(champion, dict):
        entry: dict[str, Any] = {"metrics": {k: float(v) for k, v in (champion.get("metrics") or {}).items()}}
        if champion.get("version") is not None:
            entry["version"] = int(champion["version"])
        if champion.get("message"):
            entry["message"] = str(champion["message"])[:1024]
        result["champion"] = entry
    return ModelComparison.model_validate(result)


def run_record(name: str, trigger: str, backend_run_id: str | None, state: str, started: str | None,
               finished: str | None = None, reason: str | None = None, message: str | None = None,
               outputs: dict[str, Any] | None = None) -> RunRecord:
    """status.latestRun / history entry from what a backend knows of a run (``outputs``: the
    pipeline's output parameters when it succeeded)."""
    outputs = outputs or {}
    record: dict[str, Any] = {"name": name, "trigger": trigger, "state": state}
    optional = {
        "backendRunId": backend_run_id,
        "started": started,
        "finished": finished,
        "reason": reason,
        "message": (message or "")[:4096] or None,
        "metrics": {k: float(v) for k, v in (outputs.get("metrics") or {}).items()} or None,
        "validated": outputs.get("validated"),
        "modelVersion": outputs.get("model_version"),
        "modelUri": outputs.get("model_uri"),
        "profileUri": outputs.get("profile_uri"),
        "datasetDigest": outputs.get("dataset_digest"),
        "sources": _sources(outputs.get("sources")),
        "comparison": _comparison(outputs.get("comparison")),
    }
    record.update({k: v for k, v in optional.items() if v is not None})
    return RunRecord.model_validate(record)


def comparison_summary(record: RunRecord) -> str:
    """One line on the new versus the validated model on the same holdout ("" without a comparison)."""
    comparison = record.comparison
    if comparison is None:
        return ""
    new = comparison.challenger.metrics
    champion = comparison.champion
    name = next((m for m in ("accuracy", "rmse", "f1", "r2", "mae", "rocAuc") if m in new), None)
    if name is None:
        return ""
    text = f"{name} {new[name]:.4g} on the {comparison.holdout} holdout ({comparison.holdout_rows} rows)"
    old = champion.metrics.get(name) if champion else None
    if old is not None:
        text += f" vs {old:.4g} for version {champion.version if champion.version is not None else '?'}"
    elif champion is not None and champion.message:
        text += f"; validated model not scored: {champion.message}"
    return text


def champion(status: ModelTrainingStatus) -> tuple[dict[str, float] | None, str | None]:
    """(metrics, URI) of the current validated model: the gate's baseline and the model scored beside the new one."""
    validated = status.latest_validated_model
    return (dict(validated.metrics), validated.uri) if validated else (None, None)


def run_event(record: RunRecord, reasons: list[str]) -> Event:
    """The event that announces a finished run: its model validated, refused by the gate, or the run failed."""
    if record.state == "Succeeded" and record.validated:
        compared = comparison_summary(record)
        return Event("ModelValidated",
                     f"Run {record.name} validated model version {record.model_version} "
                     f"({', '.join(f'{k}={v:.4g}' for k, v in record.metrics.items())})"
                     + (f"; {compared}." if compared else "."))
    if record.state == "Succeeded":
        return Event("ValidationFailed",
                     f"Model version {record.model_version} failed the gate: {'; '.join(reasons)}", warning=True)
    return Event(record.reason or "RunFailed", f"Run {record.name} {record.state.lower()}: {record.message or ''}",
                 warning=True)


@dataclass(frozen=True)
class RunMetrics:
    """What a finished run adds to the operator's metrics."""

    result: str
    """mlops_training_runs_total's label: succeeded, rejected (succeeded, refused by the gate), failed, canceled."""
    duration_seconds: float | None
    """mlops_training_duration_seconds' observation; None without both start and finish times."""
    validated_version: int | None = None
    """mlops_model_validated_version, when the run validated a model (0 when it names no version)."""
    validated_metrics: dict[str, float] = field(default_factory=dict)
    """mlops_model_validated_metric per metric, when the run validated a model."""


def run_metrics(record: RunRecord) -> RunMetrics:
    """The metrics of a finished run."""
    result = "succeeded" if record.state == "Succeeded" else record.state.lower()
    if record.state == "Succeeded" and not record.validated:
        result = "rejected"
    duration = None
    if record.started and record.finished:
        duration = max((parse_rfc3339(record.finished) - parse_rfc3339(record.started)).total_seconds(), 0.0)
    if not record.validated:
        return RunMetrics(result, duration)
    return RunMetrics(result, duration, record.model_version or 0, dict(record.metrics))


def finished_status(status: ModelTrainingStatus, record: RunRecord, history_limit: int, generation: int,
                    validation_reasons: list[str] | None = None, now: datetime | None = None) -> ModelTrainingStatus:
    """Status after a run reached a final state: conditions, phase, history, latestValidatedModel.

    A run that finished while another one is active (a KFP recurring run's fire beside an
    on-demand run) goes to history and may become latestValidatedModel; the active run stays
    latestRun with its Succeeded condition and phase. latestValidatedModel only moves to a newer
    version."""
    latest = status.latest_run
    if latest is not None and latest.state in ACTIVE_STATES and latest.name != record.name:
        result = finished_status(status.model_copy(update={"latest_run": None}), record, history_limit, generation,
                                 validation_reasons, now)
        succeeded = [c for c in status.conditions if c.type == "Succeeded"]
        others = [c for c in result.conditions if c.type != "Succeeded"]
        return result.model_copy(update={"latest_run": latest, "phase": status.phase or "Running",
                                         "conditions": succeeded + others})
    history = [record] + [r for r in status.history if r.name != record.name]
    update: dict[str, Any] = {"latest_run": record, "history": history[:history_limit]}
    conditions = plain(status.conditions)
    version = record.model_version
    if record.state == "Succeeded":
        conditions = set_condition(conditions, "Succeeded", TRUE, "RunSucceeded",
                                   f"Run {record.name} produced model version {version}.",
                                   generation=generation, now=now)
        if record.validated:
            compared = comparison_summary(record)
            conditions = set_condition(conditions, "Validated", TRUE, "ModelValidated",
                                       f"Model version {version} passed the validation gate"
                                       + (f": {compared}." if compared else "."),
                                       generation=generation, now=now)
            current = status.latest_validated_model.version if status.latest_validated_model else 0
            if (version or 0) >= current:
                update["latest_validated_model"] = ValidatedModel(
                    version=version, uri=record.model_uri, metrics=dict(record.metrics),
                    profile_uri=record.profile_uri or None, run=record.name)
        else:
            reasons = "; ".join(validation_reasons or []) or "the gate rejected the model"
            conditions = set_condition(conditions, "Validated", FALSE, "ValidationFailed",
                                       f"Model version {version} was not validated: {reasons}",
                                       generation=generation, now=now)
        update["phase"] = "Succeeded"
    else:
        reason = record.reason or ("Canceled" if record.state == "Canceled" else "PipelineFailed")
        conditions = set_condition(conditions, "Succeeded", FALSE, reason,
                                   record.message or f"Run {record.name} {record.state.lower()}.",
                                   generation=generation, now=now)
        if not any(c["type"] == "Validated" and c["status"] != UNKNOWN for c in conditions):
            conditions = set_condition(conditions, "Validated", UNKNOWN, "NoModel",
                                       "No run has produced a model yet.", generation=generation, now=now)
        update["phase"] = "Failed"
    update["conditions"] = typed(conditions)
    return status.model_copy(update=update)


def running_status(status: ModelTrainingStatus, record: RunRecord, generation: int,
                   now: datetime | None = None) -> ModelTrainingStatus:
    """Status while a run is active."""
    conditions = set_condition(plain(status.conditions), "Succeeded", UNKNOWN, "Running",
                               f"Run {record.name} is {record.state.lower()} ({record.trigger}).",
                               generation=generation, now=now)
    return status.model_copy(update={"latest_run": record, "phase": "Running", "conditions": typed(conditions)})
