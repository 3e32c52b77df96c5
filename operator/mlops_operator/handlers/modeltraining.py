"""kopf handlers for ModelTraining: start runs on triggers, observe them, record the outcome.

1. Parse and check the spec (InvalidSpec stops here).
2. If a run is active, observe it; when it finishes, record it (history, conditions,
   latestValidatedModel, metrics, an event).
3. Work out the pending triggers (generation, retrain annotation, schedule). With a run still
   active, Forbid leaves them pending and Replace cancels the active run.
4. Submit one run for the pending triggers under a deterministic name (the backends return the
   existing run for a known name), and record the triggers as served.
5. Schedule bookkeeping: on kfp, keep the recurring run in step with the spec; record
   nextScheduleTime.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlops_operator import metrics
from mlops_operator.api.errors import STEP_REASONS, BackendUnavailable, Failure, InvalidSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.backends import artifacts, kube, storage_credentials, training_kfp, training_local
from mlops_operator.handlers.common import (
    Retry,
    describe_api_error,
    get_settings,
    parse_spec,
    uri_policy_problems,
    post_event,
    register_kind,
)
from mlops_operator.reconcile import modeltraining
from mlops_operator.reconcile.conditions import FALSE, parse_rfc3339, set_condition
from mlops_operator.reconcile.validation import training_spec_errors

KIND = "ModelTraining"
PLURAL = "modeltrainings"
CONDITIONS = ("Succeeded", "Validated")
LOCAL_STATES = {
    training_local.PENDING: "Pending",
    training_local.RUNNING: "Running",
    training_local.SUCCEEDED: "Succeeded",
    training_local.FAILED: "Failed",
    training_local.CANCELED: "Canceled",
}

log = logging.getLogger("mlops_operator.training")


def _now() -> datetime:
    return datetime.now(UTC)


async def _kfp_connection(spec: ModelTrainingSpec, namespace: str) -> training_kfp.KfpConnection:
    settings = get_settings()
    host = (spec.kfp and spec.kfp.host) or settings.kfp_host
    token = None
    if spec.kfp and spec.kfp.token_secret_ref:
        ref = spec.kfp.token_secret_ref
        try:
            token = await kube.read_secret_key(namespace, ref.name, ref.key)
        except KeyError:
            raise InvalidSpec(f"spec.kfp.tokenSecretRef: Secret {ref.name} has no key {ref.key}") from None
        except Exception as error:  # the message names the Secret, never its value
            raise InvalidSpec(f"spec.kfp.tokenSecretRef: {describe_api_error(error, f'Secret {ref.name}')}") from None
    return training_kfp.KfpConnection(host=host or "", namespace=(spec.kfp and spec.kfp.namespace)
                                      or settings.kfp_namespace, token=token)


async def _dataset_credentials_env(spec: ModelTrainingSpec, namespace: str) -> dict[str, str]:
    """The run's environment carrying spec.dataset.credentialsSecretRef's keys (read now, never stored)."""
    ref = spec.dataset.credentials_secret_ref
    if ref is None:
        return {}
    try:
        data = await kube.read_secret(namespace, ref.name)
    except Exception as error:  # the message names the Secret, never a value
        reason = getattr(error, "reason", None) or type(error).__name__
        raise InvalidSpec(f"spec.dataset.credentialsSecretRef: cannot read Secret {ref.name}: {reason}") from None
    if not data:
        raise InvalidSpec(f"spec.dataset.credentialsSecretRef: Secret {ref.name} has no keys")
    return storage_credentials.dataset_env(data)


async def _pipeline_package(spec: ModelTrainingSpec, namespace: str) -> str | None:
    """Path of the compiled pipeline to run (None: the built-in template)."""
    source = spec.pipeline
    if source.config_map_ref:
        try:
            text = await kube.read_config_map_key(namespace, source.config_map_ref.name, source.config_map_ref.key)
        except KeyError:
            raise InvalidSpec(f"spec.pipeline.configMapRef: ConfigMap {source.config_map_ref.name} has no key "
                              f"{source.config_map_ref.key}") from None
        except Exception as error:
            raise InvalidSpec("spec.pipeline.configMapRef: "
                              + describe_api_error(error, f"ConfigMap {source.config_map_ref.name}")) from None
        path = get_settings().data_dir / "pipelines" / namespace / f"{source.config_map_ref.name}-{source.config_map_ref.key}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)
    if source.uri:
        import fsspec

        path = get_settings().data_dir / "pipelines" / namespace / source.uri.replace("/", "_")[-120:]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with fsspec.open(source.uri, "rb") as handle:
                path.write_bytes(handle.read())
        except Exception as error:
            raise InvalidSpec(f"spec.pipeline.uri: cannot read {source.uri}: {error}") from None
        return str(path)
    return None


def _estimator_task(name: str) -> str | None:
    from mlops_operator.components.train import estimator_task

    return estimator_task(name)


def _estimator_problems(spec: ModelTrainingSpec) -> list[str]:
    """The estimator and its parameters, judged as the train step will build them, before any run
    (the built-in pipeline only: a custom pipeline interprets spec.training itself)."""
    if spec.pipeline.config_map_ref or spec.pipeline.uri:
        return []
    from mlops_operator.components import train

    training = spec.training
    try:
        estimator_task = train.estimator_task(training.estimator)
        if estimator_task is None:
            train.resolve_estimator(training.estimator)  # unknown: raises with a did-you-mean hint
            return [f"spec.training.estimator: {training.estimator} is neither a classifier nor a regressor"]
        task = training.task if training.task != "auto" else estimator_task
        estimator, _ = train.build_estimator(training.estimator, dict(training.parameters), task, training.seed)
        validate = getattr(estimator, "_validate_params", None)  # scikit-learn's own parameter checks
        if callable(validate):
            validate()
    except InvalidSpec as error:
        return [f"spec.training: {error.message}"]
    except Exception as error:  # InvalidParameterError (ValueError + TypeError) and anything the class raises
        return [f"spec.training.parameters: estimator {training.estimator}: {error}"[:1024]]
    return []


def _record_from_local(run: training_local.RunStatus, trigger: str) -> dict[str, Any]:
    return modeltraining.run_record(run.run_name, trigger, run.run_name, LOCAL_STATES[run.state], run.started,
                                    run.finished, run.reason, run.message, run.outputs)


def _record_from_kfp(run: training_kfp.KfpRun, trigger: str, outputs: dict[str, Any]) -> dict[str, Any]:
    iso = lambda t: t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None  # noqa: E731
    reason = None
    if run.state == "Failed":
        message = run.message or ""
        reason = next((r for r in STEP_REASONS if r in message), Failure.reason)
    return modeltraining.run_record(run.name, trigger, run.run_id, run.state, iso(run.started), iso(run.finished),
                                    reason, run.message, outputs)


def _kfp_outputs(spec: ModelTrainingSpec, run_name: str) -> dict[str, Any]:
    """KFP does not return a run's output parameters through its run API; the export step wrote
    the version to the shared artifact store under a claim keyed by the run name."""
    root = get_settings().artifact_root_uri
    version = artifacts.version_for_run(root, spec.model, run_name)
    if version is None or not artifacts.is_complete(root, spec.model, version):
        return {}
    info = artifacts.read_model_version(root, spec.model, version)
    return {"model_version": version, "model_uri": info["uri"], "metrics": info["metrics"],
            "validated": info["validated"], "validation_reasons": info["validationReasons"],
            "profile_uri": info["profileUri"], "dataset_digest": (info["lineage"].get("dataset") or {}).get("digest"),
            "sources": info["lineage"].get("sources"), "comparison": info["lineage"].get("comparison")}


async def _observe(spec: ModelTrainingSpec, namespace: str, record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The latest state of an active run, and the gate's reasons when it is done."""
    if spec.backend == "local":
        try:
            run = await asyncio.to_thread(training_local.status, record["name"], get_settings().data_dir, namespace)
        except FileNotFoundError:
            return {**record, "state": "Failed", "reason": "RunnerLost", "message": "the run directory is gone"}, []
        return _record_from_local(run, record["trigger"]), list(run.outputs.get("validation_reasons") or [])
    conn = await _kfp_connection(spec, namespace)
    run = await asyncio.to_thread(training_kfp.get_run, conn, record["backendRunId"])
    outputs = await asyncio.to_thread(_kfp_outputs, spec, record["name"]) if run.state == "Succeeded" else {}
    return _record_from_kfp(run, record["trigger"], outputs), list(outputs.get("validation_reasons") or [])


async def _submit(spec: ModelTrainingSpec, namespace: str, name: str, trigger: str, validated: dict[str, Any],
                  retrain_window: dict[str, Any] | None) -> dict[str, Any]:
    settings = get_settings()
    # The inference log lives under the artifact root (the same place the router and the
    # DriftMonitor use).
    production = modeltraining.production_parameters(spec, namespace, settings.artifact_root_uri, _now(), retrain_window)
    params = modeltraining.pipeline_parameters(spec, settings.artifact_root_uri, validated.get("metrics"),
                                               champion_uri=validated.get("uri"), production=production,
                                               retrain_window=retrain_window)
    package = await _pipeline_package(spec, namespace)
    if spec.backend == "local":
        request = {"namespace": namespace, "parameters": params, **({"pipeline_package": package} if package else {})}
        env = await _dataset_credentials_env(spec, namespace)
        run = await asyncio.to_thread(training_local.submit, name, request, settings.data_dir, namespace, env)
        return _record_from_local(run, trigger)
    conn = await _kfp_connection(spec, namespace)
    package = package or await asyncio.to_thread(_builtin_kfp_package)
    # The same argument building as the local backend: parameter types coerced to the compiled
    # pipeline's inputs (estimator_params travels as JSON text), pipeline digest filled in.
    params = training_local.pipeline_arguments({"parameters": params}, name, settings.data_dir, package)
    run = await asyncio.to_thread(training_kfp.submit_run, conn, name, package, params,
                                  spec.kfp.experiment if spec.kfp else "mlops-operator",
                                  pipeline_root=settings.kfp_pipeline_root,
                                  service_account=settings.kfp_service_account)
    return _record_from_kfp(run, trigger, {})


def _builtin_kfp_package() -> str:
    """The built-in pipeline with its steps in the trainingImage setting's image (default: the
    operator's own image and version, what the pipeline is compiled with)."""
    settings = get_settings()
    return training_kfp.with_component_image(str(training_local.default_pipeline_package()),
                                             settings.training_image_ref, settings.data_dir / "pipelines")


async def _cancel(spec: ModelTrainingSpec, namespace: str, record: dict[str, Any]) -> None:
    if spec.backend == "local":
        await asyncio.to_thread(training_local.cancel, record["name"], get_settings().data_dir, namespace)
    elif record.get("backendRunId"):
        conn = await _kfp_connection(spec, namespace)
        await asyncio.to_thread(training_kfp.cancel_run, conn, record["backendRunId"])


def _record_metrics(namespace: str, spec: ModelTrainingSpec, record: dict[str, Any]) -> None:
    result = "succeeded" if record["state"] == "Succeeded" else record["state"].lower()
    if record["state"] == "Succeeded" and not record.get("validated"):
        result = "rejected"
    metrics.TRAINING_RUNS.labels(result).inc()
    if record.get("started") and record.get("finished"):
        seconds = (parse_rfc3339(record["finished"]) - parse_rfc3339(record["started"])).total_seconds()
        metrics.TRAINING_DURATION.observe(max(seconds, 0.0))
    if record.get("validated"):
        metrics.MODEL_VERSION.labels(namespace, spec.model).set(record.get("modelVersion") or 0)
        for metric, value in (record.get("metrics") or {}).items():
            metrics.VALIDATED_METRIC.labels(namespace, spec.model, metric).set(value)


async def reconcile_training(obj: dict[str, Any]) -> dict[str, Any]:
    """One reconciliation of a ModelTraining; returns the desired status."""
    meta = obj["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation") or 0
    status = dict(obj["status"])
    settings = get_settings()
    now = _now()

    # 1. The spec.
    spec = parse_spec(ModelTrainingSpec, obj.get("spec") or {})
    problems = training_spec_errors(spec, settings.kfp_host, _estimator_task) or _estimator_problems(spec)
    problems += await uri_policy_problems(status, ("spec.dataset.uri", spec.dataset.uri),
                                          ("spec.pipeline.uri", spec.pipeline.uri))
    if problems:
        raise InvalidSpec("; ".join(problems))
    if status.get("phase") in (None, "Invalid"):
        status["phase"] = "Pending"

    try:
        # 2. The active run.
        latest = status.get("latestRun")
        if latest and latest["state"] in modeltraining.ACTIVE_STATES:
            observed, reasons = await _observe(spec, namespace, latest)
            if latest.get("retrainWindow"):  # known at submission, not returned by the backends
                observed["retrainWindow"] = latest["retrainWindow"]
            if observed["state"] in modeltraining.ACTIVE_STATES:
                status = modeltraining.running_status(status, observed, generation)
            else:
                status = modeltraining.finished_status(status, observed, spec.history_limit, generation, reasons)
                _record_metrics(namespace, spec, observed)
                _announce(obj, observed, reasons)

        # 3. Pending triggers.
        created = parse_rfc3339(meta["creationTimestamp"])
        triggers = modeltraining.pending_triggers(spec, generation, status, meta.get("annotations") or {}, created, now)
        decision = modeltraining.concurrency_step(spec.concurrency_policy, triggers, status.get("latestRun"), now)
        triggers = decision.start
        if decision.replaced is not None:
            await _cancel(spec, namespace, status["latestRun"])
            status = modeltraining.finished_status(status, decision.replaced, spec.history_limit, generation)

        # 4. Start one run for the pending triggers.
        if triggers:
            run_name = modeltraining.run_name(name, meta["uid"], triggers)
            description = "; ".join(t.description for t in triggers)
            validated = status.get("latestValidatedModel") or {}
            annotations = meta.get("annotations") or {}
            retrain_window = (modeltraining.parse_retrain_window(annotations)
                              if any(t.kind == "retrain" for t in triggers) else None)
            try:
                record = await _submit(spec, namespace, run_name, description, validated, retrain_window)
            except training_kfp.RequestRejected as error:  # the KFP API will never take this run as it is
                stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
                record = modeltraining.run_record(run_name, description, None, "Failed", stamp, stamp, "InvalidSpec",
                                                  str(error))
            if retrain_window:
                record["retrainWindow"] = retrain_window
            status.update(modeltraining.mark_handled(triggers, generation, meta.get("annotations") or {}, now))
            if record["state"] in modeltraining.ACTIVE_STATES:
                status = modeltraining.running_status(status, record, generation)
                post_event(obj, "RunStarted", f"Started run {run_name} ({description}).")
            else:  # refused at once (InvalidSpec), or it finished while nobody recorded it
                known = any(r.get("name") == record["name"] for r in status.get("history", []))
                status = modeltraining.finished_status(status, record, spec.history_limit, generation, [])
                if not known:  # count and announce a run once, however often it is looked up
                    _record_metrics(namespace, spec, record)
                    _announce(obj, record, [])

        # 5. Schedule bookkeeping.
        if spec.schedule and spec.backend == "kfp":
            conn = await _kfp_connection(spec, namespace)
            package = await _pipeline_package(spec, namespace) or await asyncio.to_thread(_builtin_kfp_package)
            params = modeltraining.pipeline_parameters(spec, settings.artifact_root_uri,
                                                       (status.get("latestValidatedModel") or {}).get("metrics"))
            params = training_local.pipeline_arguments({"parameters": params}, f"{name}-scheduled",
                                                       settings.data_dir, package)
            await asyncio.to_thread(training_kfp.ensure_recurring_run, conn, f"{name}-{meta['uid'][:8]}", package,
                                    params, spec.schedule, spec.kfp.experiment if spec.kfp else "mlops-operator",
                                    enabled=not spec.suspend, pipeline_root=settings.kfp_pipeline_root,
                                    service_account=settings.kfp_service_account)
        upcoming = modeltraining.next_schedule_time(spec, now)
        status["nextScheduleTime"] = upcoming.strftime("%Y-%m-%dT%H:%M:%SZ") if upcoming else None
        if status["nextScheduleTime"] is None:
            del status["nextScheduleTime"]
    except BackendUnavailable as error:
        status["conditions"] = set_condition(status.get("conditions"), "Succeeded", FALSE, BackendUnavailable.reason,
                                             error.message, generation=generation)
        raise Retry(error.message, status, delay=30) from None
    return status


def _announce(obj: dict[str, Any], record: dict[str, Any], reasons: list[str]) -> None:
    if record["state"] == "Succeeded" and record.get("validated"):
        compared = modeltraining.comparison_summary(record)
        post_event(obj, "ModelValidated",
                   f"Run {record['name']} validated model version {record.get('modelVersion')} "
                   f"({', '.join(f'{k}={v:.4g}' for k, v in (record.get('metrics') or {}).items())})"
                   + (f"; {compared}." if compared else "."))
    elif record["state"] == "Succeeded":
        post_event(obj, "ValidationFailed",
                   f"Model version {record.get('modelVersion')} failed the gate: {'; '.join(reasons)}", warning=True)
    else:
        post_event(obj, record.get("reason") or "RunFailed",
                   f"Run {record['name']} {record['state'].lower()}: {record.get('message') or ''}", warning=True)


async def _cleanup(namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Cancel an active local run (model versions are kept: they are immutable records)."""
    latest = status.get("latestRun") or {}
    if latest.get("state") in modeltraining.ACTIVE_STATES and spec.get("backend", "local") == "local":
        await asyncio.to_thread(training_local.cancel, latest["name"], get_settings().data_dir, namespace)


register_kind(KIND, PLURAL, reconcile_training, conditions=CONDITIONS, summary_condition="Succeeded", cleanup=_cleanup)
