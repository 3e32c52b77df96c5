"""kopf handlers for ModelDeployment: follow the model source, roll new versions out, serve them.

The handler registers, calls and writes; the decisions are pure, in ``reconcile/`` (modeldeployment,
serving, aiops), and the I/O is in ``backends/``. One reconciliation:

1. Parse and check the spec (InvalidSpec stops here).
2. Resolve the model source: uri+version, or the ModelTraining's latestValidatedModel.
3. Bring the serving backend to the recorded state and observe it (readiness, failures).
4. When a rollout step is due, analyse the candidate (Prometheus, else the backend's own statistics).
5. Read the serving telemetry: anomalies, their likely causes, the post-promotion guard.
6. Decide the next rollout step and apply it to the backend.
7. Build the status (a ``ModelDeploymentStatus``, serialised by the registration helper), post the
   events, record the metrics.

The serving backend is chosen once per object by ``spec.backend`` (``backends.serving``: local runs
one MLServer process per model version behind a router per deployment, seldon writes a
SeldonDeployment the ModelDeployment owns); this module calls it through ``ServingBackend`` and
never asks which one it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from mlops_operator import metrics
from mlops_operator.api.annotations import APPROVE_ANNOTATION, ROLLBACK_ANNOTATION
from mlops_operator.api.common import GROUP, VERSION
from mlops_operator.api.errors import BackendUnavailable, InvalidSpec
from mlops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from mlops_operator.backends import model_source, prices_aws, serving, serving_seldon, telemetry
from mlops_operator.handlers import common
from mlops_operator.handlers.common import (
    Retry,
    get_settings,
    parse_spec,
    post_event,
    register_kind,
    uri_policy_problems,
)
from mlops_operator.reconcile import aiops, anomaly, modeldeployment, rightsizing, rootcause
from mlops_operator.reconcile.conditions import TRUE, plain
from mlops_operator.reconcile.cost import default_price_table
from mlops_operator.reconcile.seldondeployment import SELDON_GROUP, SELDON_PLURAL, SELDON_VERSION
from mlops_operator.reconcile.serving import BackendView, ServedDeployment
from mlops_operator.reconcile.validation import deployment_spec_errors, endpoint_problem

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
PREDICTORS = (modeldeployment.STABLE, modeldeployment.CANARY, modeldeployment.SHADOW)


def _now() -> datetime:
    return datetime.now(UTC)


def _prometheus_url(spec: ModelDeploymentSpec) -> str | None:
    """The Prometheus the analysis and the telemetry read: the spec's, else the operator's."""
    return spec.rollout.analysis.prometheus_url or get_settings().prometheus_url


# ---------------------------------------------------------------- reconcile


def _record_metrics(namespace: str, name: str, status: ModelDeploymentStatus, result: str | None) -> None:
    ready = status.condition("Ready")
    metrics.DEPLOYMENT_READY.labels(namespace, name).set(1 if ready and ready.status == TRUE else 0)
    weights = {t.predictor: t.weight for t in status.traffic}
    for predictor in PREDICTORS:
        metrics.TRAFFIC_WEIGHT.labels(namespace, name, predictor).set(weights.get(predictor, 0))
    if result:
        metrics.ROLLOUTS.labels(result).inc()


def _forget_metrics(namespace: str, name: str) -> None:
    for gauge, labels in ((metrics.DEPLOYMENT_READY, [(namespace, name)]),
                          (metrics.TRAFFIC_WEIGHT, [(namespace, name, p) for p in PREDICTORS]),
                          (metrics.ANOMALY_ACTIVE, [(namespace, name, m) for m in anomaly.METRICS]),
                          (metrics.ANOMALY_LEARNING, [(namespace, name, m) for m in anomaly.METRICS])):
        for label_values in labels:
            try:
                gauge.remove(*label_values)
            except KeyError:
                pass


def _rollout_cause(namespace: str, name: str, before: ModelDeploymentStatus, result: ModelDeploymentStatus,
                   transition: modeldeployment.Transition, view: BackendView, now: datetime
                   ) -> tuple[ModelDeploymentStatus, str | None]:
    """Root-cause hints for a rollout that ended aborted or rolled back, into status.lastRollout.cause."""
    record = result.last_rollout
    if transition.result not in ("aborted", "rolledback") or not record:
        return result, None
    watch = telemetry.peek(namespace, name)
    if watch is not None:
        telemetry.note_restarts(watch, view.restarts, now.timestamp())
    facts = telemetry.facts(before, watch, telemetry.recent_drift(namespace, name))
    incident = rootcause.Incident("rollout", now.timestamp(), version=record.version)
    cause = rootcause.summarise(rootcause.root_cause_hints(incident, facts))[:1024]
    return result.model_copy(update={"last_rollout": record.model_copy(update={"cause": cause})}), cause


async def reconcile_modeldeployment(obj: dict[str, Any]) -> ModelDeploymentStatus:
    """One reconciliation of a ModelDeployment; returns the desired status."""
    meta = obj["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation") or 0
    status = ModelDeploymentStatus.model_validate(obj["status"])
    now = _now()

    # 1. The spec.
    spec = parse_spec(ModelDeploymentSpec, obj.get("spec") or {})
    problems = deployment_spec_errors(spec, default_price_table().instance_type_names())
    settings = get_settings()
    endpoint = endpoint_problem("spec.rollout.analysis.prometheusUrl", spec.rollout.analysis.prometheus_url,
                                settings.prometheus_url, settings.endpoint_prefixes)
    problems += [endpoint] if endpoint else []
    backend = serving.serving_backend(spec.backend, get_settings())
    problems += backend.spec_problems(spec)
    problems += await uri_policy_problems(status, namespace, ("spec.model.uri", spec.model.uri))
    regions = {spec.region} if spec.region else set()
    regions |= {r.region for r in spec.placement.regions} if spec.placement else set()
    # The Price List API's prices (cached) with AWS credentials, else the shipped table.
    prices = await asyncio.to_thread(prices_aws.price_table, get_settings().data_dir, regions,
                                     [spec.instance_type] if spec.instance_type else [])
    if problems:
        raise InvalidSpec("; ".join(problems))
    model_name = spec.model.name or name
    annotations = meta.get("annotations") or {}

    # 2. The model source.
    desired, source_problem = None, None
    try:
        desired = await model_source.resolve_model(spec.model, namespace)
    except model_source.WaitingForModel as error:
        source_problem = (modeldeployment.WAITING_FOR_MODEL, str(error))
    except model_source.ModelUnavailable as error:
        source_problem = (modeldeployment.MODEL_UNAVAILABLE, f"{error}; the stable version keeps serving"
                          if status.stable_version else str(error))

    state = modeldeployment.state_from_status(status)
    target = ServedDeployment(namespace, name, meta["uid"], model_name, spec)

    try:
        # 3. The backend as the status says it should be.
        view = await backend.apply(target, modeldeployment.desired_predictors(spec.rollout, state),
                                   state.rollout is not None)

        # 4. The analysis, when a step is due.
        verdict = None
        if state.rollout and modeldeployment.analysis_due(spec.rollout, state.rollout, now) and view.ready(state.candidate):
            assert state.rollout.step_started is not None
            predictor = modeldeployment.analysed_predictor(state.rollout)
            stats, readable = await serving.candidate_stats(backend, target, _prometheus_url(spec), predictor,
                                                            state.rollout.step_started, now)
            if readable:
                verdict = modeldeployment.analyse_candidate(spec.rollout.analysis, stats)

        # 5. Serving telemetry: anomalies, their likely causes, and the post-promotion guard.
        health = await _serving_health(spec, backend, target, status, view, now)

        # 6. The next step.
        was_ready = (ready := status.condition("Ready")) is not None and ready.status == TRUE
        observation = modeldeployment.Observation(
            now=now, desired=desired,
            stable_serving=view.ready(state.stable) or was_ready,
            candidate_ready=view.ready(state.candidate),
            candidate_failure=view.failure(state.candidate),
            approve=annotations.get(APPROVE_ANNOTATION),
            rollback=health.rollback or annotations.get(ROLLBACK_ANNOTATION),
            rollback_reason=health.rollback_reason,
            verdict=verdict,
            analysis_unavailable=modeldeployment.analysis_unavailable(
                backend.name, backend.own_request_metrics, _prometheus_url(spec),
                get_settings().allow_pause_only_analysis),
        )
        transition = modeldeployment.next_rollout_step(spec.rollout, state, observation)
        if transition.state != state:
            view = await backend.apply(target, modeldeployment.desired_predictors(spec.rollout, transition.state),
                                       transition.state.rollout is not None)
        await serving.release_others(backend, namespace, name, status, get_settings())
    except BackendUnavailable as error:
        degraded = status.condition("Degraded")
        if degraded is None or degraded.reason != BackendUnavailable.reason:
            post_event(obj, BackendUnavailable.reason, error.message, warning=True)
        raise Retry(error.message, modeldeployment.backend_unavailable_status(
            status, BackendUnavailable.reason, error.message, generation=generation, now=now), delay=get_settings().backend_retry_seconds) from None

    # 7. The status, events and metrics.
    result = modeldeployment.deployment_status(status, state, transition, view.serving, desired=desired,
                                               source_problem=source_problem, generation=generation, now=now,
                                               rollout=spec.rollout)
    suggestion = rightsizing.suggest_requests(spec.resources.requests.cpu, spec.resources.requests.memory,
                                              health.usage)
    result = aiops.with_costs(result, spec, prices, health.requests_per_second, suggestion)
    result = result.model_copy(update=serving.status_fields(backend, name, get_settings()))
    result = aiops.with_health(result, status, health, generation=generation, now=now)
    result, cause = _rollout_cause(namespace, name, status, result, transition, view, now)
    incident = modeldeployment.incident_version(status, result, transition)
    for event in modeldeployment.rollout_events(status, result, transition, cause):
        post_event(obj, event.reason, event.message, warning=event.warning, incident=incident)
    for event, about in aiops.health_events(status, result, health):
        post_event(obj, event.reason, event.message, warning=event.warning, incident=about)
    _record_metrics(namespace, name, result, transition.result)
    _record_anomalies(namespace, name, health)
    return result


async def _serving_health(spec: ModelDeploymentSpec, backend: serving.ServingBackend, target: ServedDeployment,
                          status: ModelDeploymentStatus, view: BackendView, now: datetime) -> aiops.ServingHealth:
    """Read the telemetry, judge it, explain new anomalies, and ask the post-promotion guard."""
    detection = spec.anomaly_detection
    if not detection.enabled:
        return aiops.ServingHealth()
    namespace, name = target.namespace, target.name
    watch = telemetry.watch(namespace, name, aiops.detector_settings(detection))
    telemetry.note_restarts(watch, view.restarts, now.timestamp())
    observed = await backend.observe_telemetry(target, watch, interval=detection.interval_seconds,
                                               traffic=plain(status.traffic),
                                               prometheus_url=_prometheus_url(spec), now=now)
    causes = {}
    for opened in observed.opened:
        incident = rootcause.Incident("anomaly", opened.since, opened.metric, opened.version)
        causes[(opened.version, opened.metric)] = rootcause.summarise(rootcause.root_cause_hints(
            incident, telemetry.facts(status, watch, telemetry.recent_drift(namespace, name))))
    return aiops.judge_health(status, watch.detector, observed.opened, observed.closed, causes,
                              requests_per_second=watch.requests_per_second,
                              usage=list(watch.usage.get(status.stable_version or "", ())),
                              post_promotion=spec.rollout.post_promotion, approval=spec.rollout.approval, now=now)


def _record_anomalies(namespace: str, name: str, health: aiops.ServingHealth) -> None:
    for metric in anomaly.METRICS:
        metrics.ANOMALY_ACTIVE.labels(namespace, name, metric).set(1 if metric in health.open_metrics else 0)
        if health.enabled:
            metrics.ANOMALY_LEARNING.labels(namespace, name, metric).set(1 if metric in health.learning else 0)


async def _cleanup(namespace: str, name: str, status: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Stop the local model servers and router; the SeldonDeployment goes with its owner (GC)."""
    # The reconcile lock: a reconciliation in flight must not start a server after this stops them.
    async with common.object_lock(PLURAL, namespace, name):
        await serving.forget(namespace, name, get_settings())
    _forget_metrics(namespace, name)
    telemetry.forget(namespace, name)


def _requeue(obj: Mapping[str, Any], status: Mapping[str, Any]) -> float | None:
    """When to observe the deployment again (reconcile.modeldeployment.requeue_after)."""
    spec = ModelDeploymentSpec.model_validate(obj.get("spec") or {})
    backend = serving.serving_backend(spec.backend, get_settings())
    return modeldeployment.requeue_after(
        spec, ModelDeploymentStatus.model_validate(status), reports_changes=backend.reports_changes,
        telemetry=backend.own_request_metrics or _prometheus_url(spec) is not None,
        poll_interval=get_settings().poll_interval_seconds)


def _cleanup_needed(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether deleting the deployment waits for :func:`_cleanup` (its backend runs something its owner
    references do not remove); a spec that names no known backend is held to be safe."""
    backend = spec.get("backend") or ModelDeploymentSpec.model_fields["backend"].default
    known = serving.backends(get_settings())
    return backend not in known or known[backend].cleanup_on_delete


# What wakes an idle deployment besides its own changes: its SeldonDeployment's status (Seldon's
# controller writes it) or deletion, and a new validated model of the ModelTraining it follows.
_child_status = common.SeenParts()
_validated_model = common.SeenParts()


def _owner(body: Mapping[str, Any]) -> str | None:
    return next((ref["name"] for ref in body.get("metadata", {}).get("ownerReferences") or []
                 if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/")), None)


@kopf.on.event(SELDON_GROUP, SELDON_VERSION, SELDON_PLURAL)
async def seldon_deployment_changed(type: str | None, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    """A SeldonDeployment a ModelDeployment owns: keep the backend's copy (read instead of a GET), and wake
    the owner when its status changed or it is gone (our own writes of its spec, and the listing at
    start-up, wake nothing)."""
    owner = _owner(body)
    if owner is None:
        return
    serving_seldon.watched(type, body)
    if _child_status.changed((namespace, name), type, body.get("status") or {}) or type == "DELETED":
        common.wake(PLURAL, namespace, owner)


# The deployments that follow a ModelTraining (spec.model.fromTraining): (namespace, training) -> their
# names, and each deployment's training. Kept from the deployments' watch events (register_kind's
# on_event), at the cost of a dict update: a kopf index was a second pass over every event.
_followers: dict[tuple[str, str], set[str]] = {}
_following: dict[tuple[str, str], tuple[str, str]] = {}


def _track_followers(event_type: str | None, body: Mapping[str, Any]) -> None:
    """A deployment's watch event: file it under the training it follows now (none once deleted)."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    training = None if event_type == "DELETED" else ((body.get("spec") or {}).get("model") or {}).get("fromTraining")
    followed = (key[0], training) if training else None
    before = _following.get(key)
    if before == followed:
        return
    if before is not None:
        names = _followers[before]
        names.discard(key[1])
        if not names:
            del _followers[before]
        del _following[key]
    if followed is not None:
        _followers.setdefault(followed, set()).add(key[1])
        _following[key] = followed


def followers(namespace: str, training: str) -> list[str]:
    """The deployments in ``namespace`` that follow the ModelTraining ``training``."""
    return sorted(_followers.get((namespace, training), ()))


@kopf.on.event(GROUP, VERSION, "modeltrainings")
async def training_changed(type: str | None, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    """A ModelTraining's newest validated model changed: wake the deployments that follow it."""
    key = (namespace, name)
    if _validated_model.changed(key, type, (body.get("status") or {}).get("latestValidatedModel") or {}):
        for deployment in followers(namespace, name):
            common.wake(PLURAL, namespace, deployment)


@kopf.on.startup()
async def start_serving_backends(**_: Any) -> None:
    """Each serving backend's start-up (local: adopt the model servers a previous operator process
    left running; seldon: the request-logger sink with MLOPS_SELDON_LOGGER_MODE=always)."""
    await serving.start_backends(PLURAL, get_settings())


@kopf.on.cleanup()
async def stop_serving_backends(**_: Any) -> None:
    """Each serving backend's shutdown (seldon: flush and stop the request-logger sink)."""
    await serving.stop_backends(get_settings())


register_kind(KIND, PLURAL, reconcile_modeldeployment, status=ModelDeploymentStatus, cleanup=_cleanup,
              requeue=_requeue, cleanup_needed=_cleanup_needed, on_event=_track_followers)
