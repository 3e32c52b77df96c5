"""ModelTraining, pure: which triggers are pending, run names, the pipeline request, the status.

A run starts for a new spec generation, a changed ``mlops.dev/retrain-requested`` annotation, or a
due cron time. Triggers that are pending together start one run. The run's name is derived from
the object's uid and the trigger, so a crash between submitting and recording a run finds the same
run again instead of starting a second one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from croniter import croniter

from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.reconcile.conditions import FALSE, TRUE, UNKNOWN, parse_rfc3339, set_condition

RETRAIN_ANNOTATION = "mlops.dev/retrain-requested"
ACTIVE_STATES = ("Pending", "Running")


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
    status: dict[str, Any],
    annotations: dict[str, str],
    created: datetime,
    now: datetime,
) -> list[Trigger]:
    """The triggers that have not started a run yet, most important first."""
    triggers = []
    if status.get("triggeredGeneration") != generation:
        triggers.append(Trigger("spec", f"g{generation}", f"spec generation {generation}"))
    request = annotations.get(RETRAIN_ANNOTATION)
    if request and request != status.get("observedRetrainRequest"):
        digest = hashlib.sha256(request.encode()).hexdigest()[:8]
        triggers.append(Trigger("retrain", f"r{digest}", f"retrain requested: {request}"[:1024]))
    due = due_schedule_time(spec, status, created, now)
    if due is not None:
        triggers.append(Trigger("schedule", f"s{due:%Y%m%d%H%M}", f"schedule {spec.schedule} at {due:%Y-%m-%dT%H:%M:%SZ}"))
    return triggers


def due_schedule_time(spec: ModelTrainingSpec, status: dict[str, Any], created: datetime, now: datetime
                      ) -> datetime | None:
    """The latest cron time in (last fired, now], or None. Missed times collapse into one run."""
    if not spec.schedule or spec.suspend or spec.backend != "local":
        return None  # backend kfp schedules with a KFP recurring run instead
    last = parse_rfc3339(status["lastScheduleTime"]) if status.get("lastScheduleTime") else created
    latest = croniter(spec.schedule, now).get_prev(datetime)
    return latest if latest > last else None


def next_schedule_time(spec: ModelTrainingSpec, now: datetime) -> datetime | None:
    """When the schedule fires next."""
    if not spec.schedule or spec.suspend:
        return None
    return croniter(spec.schedule, now).get_next(datetime)


def run_name(name: str, uid: str, triggers: list[Trigger]) -> str:
    """The deterministic name of the run that serves these triggers."""
    return f"{name}-{uid.replace('-', '')[:8]}-{triggers[0].key}"


def mark_handled(triggers: list[Trigger], generation: int, annotations: dict[str, str], now: datetime
                 ) -> dict[str, Any]:
    """Status fields that record the triggers as served."""
    fields: dict[str, Any] = {}
    for trigger in triggers:
        if trigger.kind == "spec":
            fields["triggeredGeneration"] = generation
        elif trigger.kind == "retrain":
            fields["observedRetrainRequest"] = annotations[RETRAIN_ANNOTATION]
        elif trigger.kind == "schedule":
            fields["lastScheduleTime"] = trigger.description.rsplit(" at ", 1)[1]
    return fields


def pipeline_parameters(spec: ModelTrainingSpec, artifact_root: str, baseline: dict[str, float] | None
                        ) -> dict[str, Any]:
    """Arguments of the built-in tabular pipeline for this spec."""
    params: dict[str, Any] = {
        "dataset_uri": spec.dataset.uri,
        "dataset_format": spec.dataset.format,
        "target": spec.dataset.target,
        "features": list(spec.dataset.features),
        "model_name": spec.model,
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
    params.update(spec.pipeline.parameters)
    return params


def run_record(name: str, trigger: str, backend_run_id: str | None, state: str, started: str | None,
               finished: str | None = None, reason: str | None = None, message: str | None = None,
               outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """status.latestRun / history entry, in API form."""
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
    }
    record.update({k: v for k, v in optional.items() if v is not None})
    return record


def finished_status(status: dict[str, Any], record: dict[str, Any], history_limit: int, generation: int,
                    validation_reasons: list[str] | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Status after a run reached a final state: conditions, phase, history, latestValidatedModel."""
    result = dict(status)
    result["latestRun"] = record
    history = [record] + [r for r in status.get("history", []) if r.get("name") != record["name"]]
    result["history"] = history[:history_limit]
    conditions = status.get("conditions")
    if record["state"] == "Succeeded":
        conditions = set_condition(conditions, "Succeeded", TRUE, "RunSucceeded",
                                   f"Run {record['name']} produced model version {record.get('modelVersion')}.",
                                   generation=generation, now=now)
        if record.get("validated"):
            conditions = set_condition(conditions, "Validated", TRUE, "ModelValidated",
                                       f"Model version {record.get('modelVersion')} passed the validation gate.",
                                       generation=generation, now=now)
            result["latestValidatedModel"] = {
                "version": record["modelVersion"],
                "uri": record["modelUri"],
                "metrics": record.get("metrics", {}),
                **({"profileUri": record["profileUri"]} if record.get("profileUri") else {}),
                "run": record["name"],
            }
        else:
            reasons = "; ".join(validation_reasons or []) or "the gate rejected the model"
            conditions = set_condition(conditions, "Validated", FALSE, "ValidationFailed",
                                       f"Model version {record.get('modelVersion')} was not validated: {reasons}",
                                       generation=generation, now=now)
        result["phase"] = "Succeeded"
    else:
        reason = record.get("reason") or ("Canceled" if record["state"] == "Canceled" else "PipelineFailed")
        conditions = set_condition(conditions, "Succeeded", FALSE, reason,
                                   record.get("message") or f"Run {record['name']} {record['state'].lower()}.",
                                   generation=generation, now=now)
        if not any(c["type"] == "Validated" and c["status"] != UNKNOWN for c in conditions):
            conditions = set_condition(conditions, "Validated", UNKNOWN, "NoModel",
                                       "No run has produced a model yet.", generation=generation, now=now)
        result["phase"] = "Failed"
    result["conditions"] = conditions
    return result


def running_status(status: dict[str, Any], record: dict[str, Any], generation: int,
                   now: datetime | None = None) -> dict[str, Any]:
    """Status while a run is active."""
    result = dict(status)
    result["latestRun"] = record
    result["phase"] = "Running"
    result["conditions"] = set_condition(status.get("conditions"), "Succeeded", UNKNOWN, "Running",
                                         f"Run {record['name']} is {record['state'].lower()} ({record['trigger']}).",
                                         generation=generation, now=now)
    return result
