"""ModelDeployment, pure: the rollout state machine, analysis verdicts, traffic plans and status.

The state of a deployment is what its status records: the stable version, the candidate being
rolled out and where its rollout is (:class:`DeploymentState`). Every reconciliation observes the
world (:class:`Observation`: the version the model source names now, model server readiness,
annotations, the candidate's request statistics) and asks :func:`next_rollout_step` what follows.

A rollout, per strategy::

    direct:  [AwaitingApproval] -> Promoting -> stable
    canary:  Canary step 0 .. step n-1 -> [AwaitingApproval] -> stable
    shadow:  Shadow -> Canary step 0 .. n-1 -> [AwaitingApproval] -> stable

AwaitingApproval only with ``approval: manual``; Promoting waits for the candidate's model server
when it is not ready yet. After each Shadow or Canary step the candidate is analysed (error rate,
p99 latency, enough requests, else the step is extended a bounded number of times); a failure
rolls back to stable and rejects the version so it is not tried again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from mlops_operator.api.annotations import APPROVE_ANNOTATION, ROLLBACK_ANNOTATION
from mlops_operator.api.modeldeployment import (
    Analysis,
    AnalysisResult,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Rollout,
    RolloutRecord,
    RolloutStatus,
    TrafficTarget,
)
from mlops_operator.reconcile.conditions import (
    FALSE,
    TRUE,
    is_true,
    now_rfc3339,
    parse_rfc3339,
    plain,
    set_condition,
    typed,
)
from mlops_operator.reconcile.events import Event

STABLE, CANARY, SHADOW = "stable", "canary", "shadow"
SHADOW_PHASE, CANARY_PHASE, AWAITING_APPROVAL, PROMOTING = "Shadow", "Canary", "AwaitingApproval", "Promoting"

# Condition reasons.
ROLLOUT_ABORTED = "RolloutAborted"
MODEL_UNAVAILABLE = "ModelUnavailable"
ROLLED_BACK = "RolledBack"
WAITING_FOR_MODEL = "WaitingForModel"
# Degraded reasons that hold for as long as the model source names the rejected version.
STICKY_DEGRADED = (ROLLOUT_ABORTED, MODEL_UNAVAILABLE, ROLLED_BACK)

MAX_REJECTED = 20
# A step short of requests is extended by its pause, but by at least this much, so a pause of 0
# does not burn through the extensions in a few reconciliations.
MIN_EXTENSION_SECONDS = 10

Outcome = Literal["pass", "fail", "wait"]


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class ModelRef:
    """A model version and where it is stored."""

    version: str
    uri: str
    metrics: Mapping[str, float] = field(default_factory=dict, compare=False)
    """Its evaluation metrics, when known (for analysis.modelMetric)."""


@dataclass(frozen=True)
class RolloutProgress:
    """Where the rollout in flight is."""

    phase: str
    started: datetime
    step: int = 0
    step_started: datetime | None = None
    """When the current step began taking traffic; None while the candidate's server starts."""
    extensions: int = 0


@dataclass(frozen=True)
class DeploymentState:
    """What the status records about versions: stable, candidate, rollout, history."""

    stable: ModelRef | None = None
    candidate: ModelRef | None = None
    rollout: RolloutProgress | None = None
    previous_stable: ModelRef | None = None
    rejected: tuple[str, ...] = ()


def _model(version: str | None, uri: str | None) -> ModelRef | None:
    return ModelRef(str(version), str(uri)) if version and uri else None


def state_from_status(status: ModelDeploymentStatus) -> DeploymentState:
    """The deployment state recorded in a status."""
    rollout = status.rollout
    progress = None
    candidate = _model(status.candidate_version, status.candidate_uri)
    if rollout and candidate:
        progress = RolloutProgress(
            phase=rollout.phase,
            started=parse_rfc3339(rollout.started),
            step=rollout.step,
            step_started=parse_rfc3339(rollout.step_started) if rollout.step_started else None,
            extensions=rollout.extensions,
        )
    return DeploymentState(
        stable=_model(status.stable_version, status.stable_uri),
        candidate=candidate if progress else None,
        rollout=progress,
        previous_stable=_model(status.previous_stable_version, status.previous_stable_uri),
        rejected=tuple(status.rejected_versions),
    )


def _iso(moment: datetime | None) -> str | None:
    # Milliseconds: a step's analysis window starts exactly when its traffic did.
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


STATE_FIELDS = ("stable_version", "stable_uri", "candidate_version", "candidate_uri", "rollout",
                "previous_stable_version", "previous_stable_uri", "rejected_versions")
"""The status fields a deployment state is recorded in."""


def state_to_status(state: DeploymentState) -> ModelDeploymentStatus:
    """A status holding a deployment state in :data:`STATE_FIELDS` (unset ones None: cleared when written)."""
    rollout = None
    if state.rollout:
        progress = state.rollout
        rollout = RolloutStatus(phase=progress.phase, step=progress.step, started=_iso(progress.started),
                                step_started=_iso(progress.step_started), extensions=progress.extensions)
    return ModelDeploymentStatus(
        stable_version=state.stable.version if state.stable else None,
        stable_uri=state.stable.uri if state.stable else None,
        candidate_version=state.candidate.version if state.candidate else None,
        candidate_uri=state.candidate.uri if state.candidate else None,
        rollout=rollout,
        previous_stable_version=state.previous_stable.version if state.previous_stable else None,
        previous_stable_uri=state.previous_stable.uri if state.previous_stable else None,
        rejected_versions=list(state.rejected),
    )


# ---------------------------------------------------------------- analysis


@dataclass(frozen=True)
class RequestStats:
    """The candidate's requests in the analysis window."""

    requests: int
    errors: int
    error_rate: float | None
    p99_ms: float | None
    source: Literal["router", "prometheus"]


@dataclass(frozen=True)
class Verdict:
    """What one analysis of the candidate decided."""

    outcome: Outcome
    message: str
    stats: RequestStats | None = None


def analyse_candidate(analysis: Analysis, stats: RequestStats | None) -> Verdict:
    """Judge the candidate's requests against the thresholds.

    ``fail`` as soon as a threshold is broken for certain (even before minRequests: once the errors
    alone exceed maxErrorRate of minRequests); ``wait`` while there are fewer than minRequests;
    ``pass`` otherwise. Without a metrics source (``stats`` None) the step passes on time alone.
    """
    if stats is None:
        return Verdict("pass", "no request metrics source (set spec.rollout.analysis.prometheusUrl or the operator's "
                               "MLOPS_PROMETHEUS_URL); only the pause and the model metric were checked")
    failures = []
    rate = stats.error_rate if stats.error_rate is not None else (stats.errors / stats.requests if stats.requests else 0)
    certain = stats.errors > analysis.max_error_rate * max(analysis.min_requests, stats.requests)
    if stats.requests and rate > analysis.max_error_rate and (stats.requests >= analysis.min_requests or certain):
        failures.append(f"error rate {rate:.1%} ({stats.errors} of {stats.requests} requests) exceeds "
                        f"maxErrorRate {analysis.max_error_rate:.1%}")
    if (analysis.max_latency_p99_ms is not None and stats.p99_ms is not None
            and stats.p99_ms > analysis.max_latency_p99_ms and stats.requests >= analysis.min_requests):
        failures.append(f"p99 latency {stats.p99_ms:.1f} ms exceeds maxLatencyP99Ms {analysis.max_latency_p99_ms:g}")
    if failures:
        return Verdict("fail", "; ".join(failures), stats)
    if stats.requests < analysis.min_requests:
        return Verdict("wait", f"only {stats.requests} candidate requests, minRequests is {analysis.min_requests}",
                       stats)
    latency = f", p99 {stats.p99_ms:.1f} ms" if stats.p99_ms is not None else ""
    return Verdict("pass", f"error rate {rate:.1%} over {stats.requests} requests{latency}: within thresholds", stats)


def requeue_after(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, *, reports_changes: bool,
                  telemetry: bool, poll_interval: float) -> float | None:
    """When to observe a ModelDeployment again after a reconciliation; None: not until something
    changes (its spec or annotations, its backend's objects, its model's ModelTraining).

    * a backend that does not report its changes as watch events (local processes) is polled;
    * a rollout in flight is polled (its steps, pauses and analyses are timed), and so is a model URI
      that cannot be read yet (nothing reports when it appears);
    * otherwise only the serving telemetry is due, every ``spec.anomalyDetection.intervalSeconds``
      when there is a source to read (the backend's own statistics or Prometheus);
    * else nothing is in progress: a ready deployment, one waiting for its backend to report, for its
      ModelTraining's first model, or for an approval costs no request while it waits.
    """
    if not reports_changes or status.rollout is not None or status.candidate_version:
        return poll_interval
    degraded = status.condition("Degraded")
    if degraded is not None and degraded.status == TRUE and degraded.reason == MODEL_UNAVAILABLE:
        return poll_interval
    if telemetry and spec.anomaly_detection.enabled:
        return float(spec.anomaly_detection.interval_seconds)
    return None


def analysis_unavailable(backend: str, own_request_metrics: bool, prometheus_url: str | None,
                         allow_pause_only: bool) -> str | None:
    """Why a canary of ``backend`` cannot be analysed (None when it can): a backend without request
    statistics of its own (seldon; the local one has its router's) reads them only from Prometheus,
    unless the operator allows pause-only analysis."""
    if own_request_metrics or prometheus_url or allow_pause_only:
        return None
    return (f"no request metrics source for a canary on backend {backend}: nothing would judge the candidate, and a "
            "canary is not promoted on its pauses alone. Set spec.rollout.analysis.prometheusUrl or the operator's "
            "MLOPS_PROMETHEUS_URL, or use approval: manual (a person decides), or allow it for this operator with "
            "MLOPS_ALLOW_PAUSE_ONLY_ANALYSIS=true")


def model_metric_problem(analysis: Analysis, metrics: Mapping[str, float]) -> str | None:
    """Why the candidate's evaluation metric breaks analysis.modelMetric, or None."""
    check = analysis.model_metric
    if check is None:
        return None
    value = metrics.get(check.name)
    if value is None:
        return f"model metric {check.name} is missing from the candidate's metrics"
    if check.min is not None and value < check.min:
        return f"model metric {check.name} {value:g} is below modelMetric.min {check.min:g}"
    if check.max is not None and value > check.max:
        return f"model metric {check.name} {value:g} is above modelMetric.max {check.max:g}"
    return None


def analysed_predictor(progress: RolloutProgress) -> str:
    """The predictor whose requests the analysis reads."""
    return SHADOW if progress.phase == SHADOW_PHASE else CANARY


def step_pause_seconds(rollout: Rollout, progress: RolloutProgress) -> float:
    """How long the current step holds before the analysis decides."""
    if progress.phase == SHADOW_PHASE:
        return rollout.shadow.duration_seconds
    if not rollout.steps:
        return 0
    return rollout.steps[min(progress.step, len(rollout.steps) - 1)].pause_seconds


def analysis_due_at(rollout: Rollout, progress: RolloutProgress | None) -> datetime | None:
    """When the current step is next analysed; None when it is not analysed at all."""
    if progress is None or progress.step_started is None or progress.phase == PROMOTING:
        return None
    if progress.phase == AWAITING_APPROVAL:
        return progress.step_started  # watched continuously while waiting
    pause = step_pause_seconds(rollout, progress)
    extension = max(pause, MIN_EXTENSION_SECONDS)
    return progress.step_started + timedelta(seconds=pause + extension * progress.extensions)


def analysis_due(rollout: Rollout, progress: RolloutProgress | None, now: datetime) -> bool:
    """Whether the handler should fetch the candidate's statistics and analyse now."""
    due = analysis_due_at(rollout, progress)
    return due is not None and now >= due


# ---------------------------------------------------------------- state machine


@dataclass(frozen=True)
class Observation:
    """What the world looks like at this reconciliation."""

    now: datetime
    desired: ModelRef | None
    """The version the model source names now (None: unknown or unavailable)."""
    stable_serving: bool = True
    """Whether the stable version serves (or has served) traffic."""
    candidate_ready: bool = False
    """Whether the candidate's model server is ready."""
    candidate_failure: str | None = None
    """Why the candidate cannot be served (its model server keeps failing), if it cannot."""
    approve: str | None = None
    """The mlops.dev/approve annotation."""
    rollback: str | None = None
    """The mlops.dev/rollback annotation (or the version the post-promotion guard rolls back from)."""
    rollback_reason: str | None = None
    """Why the operator itself rolls back (the post-promotion guard); None: by hand."""
    verdict: Verdict | None = None
    """The analysis of the candidate, when :func:`analysis_due` said so."""
    analysis_unavailable: str | None = None
    """Why no request metrics can judge a candidate here (a cluster backend without a metrics source);
    None when they can. An automatic canary or shadow is then refused before any traffic."""


@dataclass(frozen=True)
class Transition:
    """What :func:`next_rollout_step` decided."""

    state: DeploymentState
    events: tuple[Event, ...] = ()
    result: str | None = None
    """A rollout ended: promoted, aborted, rolledback or superseded."""
    record: RolloutRecord | None = None
    """status.lastRollout for the rollout that ended."""
    degraded: tuple[str, str] | None = None
    """(reason, message) when this step leaves the deployment degraded."""
    verdict: Verdict | None = None
    """The analysis this step acted on."""


def _reject(rejected: tuple[str, ...], version: str) -> tuple[str, ...]:
    kept = tuple(v for v in rejected if v != version) + (version,)
    return kept[-MAX_REJECTED:]


def _record(version: str, result: str, progress: RolloutProgress | None, now: datetime, message: str
            ) -> RolloutRecord:
    return RolloutRecord(version=version, result=result, started=now_rfc3339(progress.started if progress else now),
                         finished=now_rfc3339(now), message=message[:4096])


def _describe_plan(rollout: Rollout) -> str:
    if rollout.strategy == "direct":
        return "direct"
    steps = ", ".join(f"{s.weight}% for {s.pause_seconds}s" for s in rollout.steps)
    shadow = (f"shadow {rollout.shadow.mirror_percent}% mirrored for {rollout.shadow.duration_seconds}s, then "
              if rollout.strategy == "shadow" else "")
    return f"{rollout.strategy}: {shadow}{steps}"


def is_rollback(state: DeploymentState) -> bool:
    """Whether the rollout in flight returns to the previous stable version (mlops.dev/rollback)."""
    return (state.candidate is not None and state.previous_stable is not None and state.stable is not None
            and state.candidate.version == state.previous_stable.version and state.stable.version in state.rejected)


def _end(state: DeploymentState, obs: Observation, result: str, reason: str, message: str, *, reject: bool,
         warning: bool = True, verdict: Verdict | None = None) -> Transition:
    """The rollout in flight ends without promotion; the stable version keeps all traffic."""
    assert state.candidate is not None
    version = state.candidate.version
    new = replace(state, candidate=None, rollout=None,
                  rejected=_reject(state.rejected, version) if reject else state.rejected)
    degraded = (reason, message) if reject else None
    return Transition(new, (Event(reason, message, warning=warning),), result,
                      _record(version, result, state.rollout, obs.now, message), degraded, verdict)


def _finish_promotion(state: DeploymentState, obs: Observation, events: tuple[Event, ...] = ()) -> Transition:
    assert state.candidate is not None and state.rollout is not None
    took = (obs.now - state.rollout.started).total_seconds()
    if is_rollback(state):
        message = f"Rolled back to version {state.candidate.version} (version {state.stable.version} rejected)."
        new = DeploymentState(stable=state.candidate, previous_stable=None, rejected=state.rejected)
        return Transition(new, events + (Event("RolledBack", message),), None, None)
    message = f"Version {state.candidate.version} is stable and serves all traffic (rollout took {took:.0f}s)."
    new = DeploymentState(stable=state.candidate, previous_stable=state.stable, rejected=state.rejected)
    return Transition(new, events + (Event("Promoted", message),), "promoted",
                      _record(state.candidate.version, "promoted", state.rollout, obs.now, message))


def _promote(state: DeploymentState, obs: Observation, events: tuple[Event, ...] = ()) -> Transition:
    if obs.candidate_ready:
        return _finish_promotion(state, obs, events)
    assert state.rollout is not None
    progress = replace(state.rollout, phase=PROMOTING, step_started=None, extensions=0)
    return Transition(replace(state, rollout=progress), events)


def _gate(rollout: Rollout, state: DeploymentState, obs: Observation, events: tuple[Event, ...] = ()) -> Transition:
    """The analysis is done: wait for approval, or promote."""
    assert state.rollout is not None and state.candidate is not None
    if rollout.approval == "manual" and obs.approve != state.candidate.version:
        progress = replace(state.rollout, phase=AWAITING_APPROVAL, step_started=obs.now, extensions=0)
        message = (f"Version {state.candidate.version} passed its analysis and waits for approval: "
                   f"kubectl mlops approve <name> --version {state.candidate.version} "
                   f"(annotation {APPROVE_ANNOTATION}={state.candidate.version}).")
        return Transition(replace(state, rollout=progress), events + (Event("AwaitingApproval", message),))
    return _promote(state, obs, events)


def _start(rollout: Rollout, state: DeploymentState, desired: ModelRef, obs: Observation,
           events: tuple[Event, ...] = ()) -> Transition:
    """Begin rolling out ``desired`` next to the stable version."""
    if rollout.strategy == "shadow":
        phase = SHADOW_PHASE
    elif rollout.strategy == "canary":
        phase = CANARY_PHASE
    else:
        phase = AWAITING_APPROVAL if rollout.approval == "manual" else PROMOTING
    progress = RolloutProgress(phase=phase, started=obs.now)
    started = replace(state, candidate=desired, rollout=progress)
    message = (f"Rolling out version {desired.version} next to stable version "
               f"{state.stable.version if state.stable else '-'} ({_describe_plan(rollout)}).")
    events = events + (Event("RolloutStarted", message),)
    problem = model_metric_problem(rollout.analysis, desired.metrics)
    if not problem and obs.analysis_unavailable and phase in (SHADOW_PHASE, CANARY_PHASE) \
            and rollout.approval == "automatic":
        # Never promoted on its pauses alone: nothing would have judged the candidate.
        problem = obs.analysis_unavailable
    if problem:
        ended = _end(started, obs, "aborted", ROLLOUT_ABORTED,
                     f"Rollout of version {desired.version} aborted before any traffic: {problem}.", reject=True)
        return replace(ended, events=events + ended.events)
    if phase == AWAITING_APPROVAL:
        return _gate(rollout, started, obs, events)
    if phase == PROMOTING:
        return _promote(started, obs, events)
    return Transition(started, events)


def next_rollout_step(rollout: Rollout, state: DeploymentState, obs: Observation) -> Transition:
    """The next state of a deployment, given its rollout spec and what was observed.

    Pure and idempotent: called again with the same observation on its result it changes nothing
    (except that time moves on).
    """
    # 1. A rollback by hand.
    if obs.rollback:
        if state.candidate and obs.rollback == state.candidate.version and not is_rollback(state):
            message = (f"Rollout of version {state.candidate.version} rolled back by hand ({ROLLBACK_ANNOTATION}); "
                       f"stable version {state.stable.version if state.stable else '-'} serves all traffic.")
            return _end(state, obs, "rolledback", ROLLED_BACK, message, reject=True)
        previous = state.previous_stable
        if (state.rollout is None and state.stable and obs.rollback == state.stable.version
                and state.stable.version not in state.rejected and previous and previous.version not in state.rejected):
            message = obs.rollback_reason or (f"Rolling back from version {state.stable.version} to version "
                                              f"{previous.version} by hand ({ROLLBACK_ANNOTATION}).")
            back = DeploymentState(stable=state.stable, candidate=previous,
                                   rollout=RolloutProgress(phase=PROMOTING, started=obs.now),
                                   previous_stable=previous, rejected=_reject(state.rejected, state.stable.version))
            moved = _promote(back, obs, (Event(ROLLED_BACK, message, warning=True),))
            return replace(moved, result="rolledback", degraded=(ROLLED_BACK, message),
                           record=_record(state.stable.version, "rolledback", None, obs.now, message))

    # 2. The version the model source names.
    desired = obs.desired
    events: tuple[Event, ...] = ()
    if desired is not None:
        if state.stable is None:
            message = f"Serving version {desired.version} (the first version is deployed directly)."
            return Transition(DeploymentState(stable=desired, rejected=state.rejected),
                              (Event("Deploying", message),))
        if desired.version == state.stable.version:
            if state.candidate and not is_rollback(state):
                return _end(state, obs, "superseded", "RolloutCanceled",
                            f"Rollout of version {state.candidate.version} canceled: the model source names the "
                            f"stable version {desired.version} again.", reject=False, warning=False)
        elif desired.version in state.rejected:
            # Rejected versions are not rolled out again (the conditions say so); a rollout of
            # another version is no longer what the source asks for.
            if state.candidate and desired.version != state.candidate.version and not is_rollback(state):
                return _end(state, obs, "superseded", "RolloutCanceled",
                            f"Rollout of version {state.candidate.version} canceled: the model source names "
                            f"version {desired.version}, which was rejected earlier.", reject=False,
                            warning=False)
        elif state.candidate is None or desired.version != state.candidate.version:
            superseded = None
            if state.candidate is not None:
                superseded = _end(state, obs, "superseded", "RolloutSuperseded",
                                  f"Rollout of version {state.candidate.version} superseded by version "
                                  f"{desired.version}.", reject=False, warning=False)
                state, events = superseded.state, superseded.events
            if not obs.stable_serving:
                message = (f"Replacing version {state.stable.version}, which does not serve, with version "
                           f"{desired.version} directly.")
                new = DeploymentState(stable=desired, previous_stable=state.stable, rejected=state.rejected)
                return Transition(new, events + (Event("Replaced", message, warning=True),),
                                  superseded.result if superseded else None, superseded.record if superseded else None)
            started = _start(rollout, state, desired, obs, events)
            if superseded and started.result is None:
                return replace(started, result=superseded.result, record=superseded.record)
            return started

    # 3. The rollout in flight.
    progress, candidate = state.rollout, state.candidate
    if progress is None or candidate is None:
        return Transition(state, events)
    if obs.candidate_failure:
        reason_text = (f"Candidate version {candidate.version} cannot be served: {obs.candidate_failure}; "
                       f"stable version {state.stable.version if state.stable else '-'} keeps serving.")
        return _end(state, obs, "aborted", MODEL_UNAVAILABLE, reason_text, reject=True)
    if progress.phase == PROMOTING:
        return _promote(state, obs) if obs.candidate_ready else Transition(state)
    if progress.phase == AWAITING_APPROVAL:
        if obs.approve == candidate.version:
            approved = Event("Approved", f"Version {candidate.version} approved ({APPROVE_ANNOTATION}).")
            return _promote(state, obs, (approved,))
        if obs.verdict and obs.verdict.outcome == "fail":
            return _end(state, obs, "aborted", ROLLOUT_ABORTED,
                        f"Rollout of version {candidate.version} aborted while awaiting approval: "
                        f"{obs.verdict.message}.", reject=True, verdict=obs.verdict)
        if progress.step_started is None and obs.candidate_ready:
            return Transition(replace(state, rollout=replace(progress, step_started=obs.now)))
        return Transition(state)  # passing or inconclusive analyses only wait with it

    # Shadow or Canary.
    if progress.step_started is None:
        if obs.candidate_ready:
            return Transition(replace(state, rollout=replace(progress, step_started=obs.now)))
        return Transition(state)
    verdict = obs.verdict
    if verdict is None or not analysis_due(rollout, progress, obs.now):
        return Transition(state)
    where = "the shadow phase" if progress.phase == SHADOW_PHASE else f"canary step {progress.step + 1}"
    if verdict.outcome == "fail":
        return _end(state, obs, "aborted", ROLLOUT_ABORTED,
                    f"Rollout of version {candidate.version} aborted at {where}: {verdict.message}.",
                    reject=True, verdict=verdict)
    if verdict.outcome == "wait":
        if progress.extensions >= rollout.analysis.max_extensions:
            return _end(state, obs, "aborted", ROLLOUT_ABORTED,
                        f"Rollout of version {candidate.version} aborted at {where}: {verdict.message} after "
                        f"{progress.extensions} extensions (maxExtensions).", reject=True, verdict=verdict)
        extended = replace(progress, extensions=progress.extensions + 1)
        return Transition(replace(state, rollout=extended), verdict=verdict)
    # Passed.
    now = obs.now
    if progress.phase == SHADOW_PHASE:
        if not rollout.steps:
            return replace(_gate(rollout, state, obs), verdict=verdict)
        # The canary clock starts once the candidate serves as canary (on Seldon, a new predictor).
        nxt = replace(progress, phase=CANARY_PHASE, step=0, step_started=None, extensions=0)
        message = f"Version {candidate.version} passed the shadow phase; canary at {rollout.steps[0].weight}%."
        return Transition(replace(state, rollout=nxt), (Event("StepPassed", message),), verdict=verdict)
    if progress.step + 1 < len(rollout.steps):
        nxt = replace(progress, step=progress.step + 1, step_started=now, extensions=0)
        weight = rollout.steps[progress.step + 1].weight
        message = f"Version {candidate.version} passed {where}; canary at {weight}%."
        return Transition(replace(state, rollout=nxt), (Event("StepPassed", message),), verdict=verdict)
    return replace(_gate(rollout, state, obs), verdict=verdict)


# ---------------------------------------------------------------- traffic


@dataclass(frozen=True)
class PredictorPlan:
    """One predictor of the desired serving layout."""

    name: str
    model: ModelRef
    weight: int
    """Percent of live traffic (0 for a shadow)."""
    shadow: bool = False
    mirror_percent: int = 100


def candidate_weight(rollout: Rollout, state: DeploymentState) -> int:
    """Percent of live traffic the candidate gets in the current phase."""
    progress = state.rollout
    if progress is None or progress.phase == SHADOW_PHASE:
        return 0
    if not rollout.steps or rollout.strategy == "direct" or is_rollback(state):
        return 0
    if progress.phase == CANARY_PHASE:
        return rollout.steps[min(progress.step, len(rollout.steps) - 1)].weight
    return rollout.steps[-1].weight  # awaiting approval or promoting: hold the last step's weight


def desired_predictors(rollout: Rollout, state: DeploymentState) -> list[PredictorPlan]:
    """The predictors the backend should serve now, with their weights (stable first)."""
    if state.stable is None:
        return []
    if state.rollout is None or state.candidate is None:
        return [PredictorPlan(STABLE, state.stable, 100)]
    if state.rollout.phase == SHADOW_PHASE:
        return [PredictorPlan(STABLE, state.stable, 100),
                PredictorPlan(SHADOW, state.candidate, 0, shadow=True, mirror_percent=rollout.shadow.mirror_percent)]
    weight = candidate_weight(rollout, state)
    return [PredictorPlan(STABLE, state.stable, 100 - weight), PredictorPlan(CANARY, state.candidate, weight)]


def effective_predictors(plan: Sequence[PredictorPlan], ready: Callable[[ModelRef], bool]) -> list[PredictorPlan]:
    """The plan as it can be served now: a candidate whose server is not ready gets no traffic (its
    weight stays with stable) and a shadow that is not ready is left out."""
    stable = next((p for p in plan if p.name == STABLE), None)
    if stable is None or not ready(stable.model):
        return list(plan)  # nothing better to send the traffic to
    moved = 0
    result = []
    for predictor in plan:
        if predictor.name != STABLE and not ready(predictor.model):
            moved += predictor.weight
            if predictor.shadow:
                continue
            predictor = replace(predictor, weight=0)
        result.append(predictor)
    return [replace(p, weight=p.weight + moved) if p.name == STABLE else p for p in result]


def traffic_status(plan: Sequence[PredictorPlan]) -> list[TrafficTarget]:
    """status.traffic of a served plan."""
    return [TrafficTarget(predictor=p.name, version=p.model.version,
                          weight=p.mirror_percent if p.shadow else p.weight, shadow=p.shadow) for p in plan]


# ---------------------------------------------------------------- Prometheus


def promql_window(window_seconds: float) -> str:
    """A PromQL range of at least ``window_seconds`` (whole seconds, at least 1s)."""
    return f"{max(int(math.ceil(window_seconds)), 1)}s"


def router_queries(namespace: str, deployment: str, predictor: str, window_seconds: float) -> dict[str, str]:
    """PromQL for a predictor's requests (without client errors), errors and p99 latency over the last
    ``window_seconds``, from the local router's metrics (scraped with ``namespace`` and ``deployment``
    target labels). Backend seldon: :func:`reconcile.seldondeployment.executor_queries`."""
    window = promql_window(window_seconds)
    selector = f'namespace="{namespace}",deployment="{deployment}",predictor="{predictor}"'
    return {
        "requests": f'sum(increase(mlops_router_requests_total{{{selector},code!~"4.."}}[{window}]))',
        "errors": f"sum(increase(mlops_router_request_errors_total{{{selector}}}[{window}]))",
        "p99": f"histogram_quantile(0.99, sum by (le) (rate(mlops_router_request_duration_seconds_bucket"
               f"{{{selector}}}[{window}])))",
        "p99_unit": "seconds",
    }


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class ServingObservation:
    """What the serving backend reports after this reconciliation's changes."""

    served: Sequence[PredictorPlan] = ()
    """The predictors as actually served (weights after readiness)."""
    stable_ready: bool = False
    endpoint: str | None = None
    ready_replicas: int | None = None
    problem: tuple[str, str] | None = None
    """(reason, message) when the backend is in trouble (crash loop, failed, starting)."""
    degrades: bool = False
    """Whether ``problem`` degrades the deployment (a crash loop) or only delays it (starting)."""


def _analysis_status(verdict: Verdict, candidate: ModelRef | None, predictor: str | None, now: datetime
                     ) -> AnalysisResult:
    stats = verdict.stats
    return AnalysisResult(
        time=now_rfc3339(now),
        requests=stats.requests if stats else 0,
        passed=verdict.outcome == "pass",
        message=verdict.message[:4096],
        source=stats.source if stats else "none",
        version=candidate.version if candidate else None,
        predictor=predictor or None,
        error_rate=round(stats.error_rate, 6) if stats and stats.error_rate is not None else None,
        latency_p99_ms=round(stats.p99_ms, 3) if stats and stats.p99_ms is not None else None,
    )


def deployment_status(
    status: ModelDeploymentStatus,
    previous: DeploymentState,
    transition: Transition,
    serving: ServingObservation,
    *,
    desired: ModelRef | None,
    source_problem: tuple[str, str] | None,
    generation: int,
    now: datetime,
    rollout: Rollout,
) -> ModelDeploymentStatus:
    """The status after one reconciliation: versions, rollout, traffic, conditions and phase.

    ``source_problem`` is (reason, message) when the model source could not be resolved
    (WaitingForModel, ModelUnavailable).
    """
    state = transition.state
    last_analysis = status.last_analysis
    if transition.verdict is not None:
        analysed = previous.rollout
        last_analysis = _analysis_status(transition.verdict, previous.candidate,
                                         analysed_predictor(analysed) if analysed else None, now)

    conditions = plain(status.conditions)
    cond = lambda cs, t, s, r, m: set_condition(cs, t, s, r, m, generation=generation, now=now)  # noqa: E731

    # Ready: the stable version answers.
    if serving.stable_ready and state.stable:
        conditions = cond(conditions, "Ready", TRUE, "Serving",
                          f"Version {state.stable.version} serves at {serving.endpoint or 'its endpoint'}.")
    elif state.stable is None and source_problem:
        conditions = cond(conditions, "Ready", FALSE, *source_problem)
    elif serving.problem:
        conditions = cond(conditions, "Ready", FALSE, *serving.problem)
    else:
        conditions = cond(conditions, "Ready", FALSE, "Starting",
                          f"The model server of version {state.stable.version if state.stable else '-'} is starting.")

    # Progressing: a rollout (or the first deployment) is under way.
    progress = state.rollout
    if progress and state.candidate:
        conditions = cond(conditions, "Progressing", TRUE, progress.phase, _progress_message(rollout, state))
    elif state.stable and not serving.stable_ready and not serving.degrades:
        conditions = cond(conditions, "Progressing", TRUE, "Deploying",
                          f"Deploying version {state.stable.version}.")
    elif state.stable is None and source_problem:
        conditions = cond(conditions, "Progressing", FALSE, source_problem[0], source_problem[1])
    else:
        conditions = cond(conditions, "Progressing", FALSE, "Stable",
                          f"Version {state.stable.version if state.stable else '-'} serves all traffic; "
                          f"no rollout in flight.")

    # AwaitingApproval.
    if progress and progress.phase == AWAITING_APPROVAL and state.candidate:
        conditions = cond(conditions, "AwaitingApproval", TRUE, "AwaitingApproval",
                          f"Version {state.candidate.version} waits for approval: kubectl mlops approve "
                          f"--version {state.candidate.version} (annotation {APPROVE_ANNOTATION}).")
    else:
        conditions = cond(conditions, "AwaitingApproval", FALSE, "NoApprovalPending",
                          "No rollout waits for approval.")

    # Degraded: newest trouble first; a rejected version keeps it until the source moves on.
    live = status.condition("Degraded")
    if transition.degraded:
        conditions = cond(conditions, "Degraded", TRUE, *transition.degraded)
    elif source_problem and source_problem[0] == MODEL_UNAVAILABLE:
        conditions = cond(conditions, "Degraded", TRUE, *source_problem)
    elif serving.problem and serving.degrades:
        conditions = cond(conditions, "Degraded", TRUE, *serving.problem)
    elif (desired and desired.version in state.rejected and live and live.status == TRUE
          and live.reason in STICKY_DEGRADED):
        conditions = cond(conditions, "Degraded", TRUE, live.reason, live.message)
    elif desired and desired.version in state.rejected and not (state.stable and desired.version == state.stable.version):
        conditions = cond(conditions, "Degraded", TRUE, ROLLOUT_ABORTED,
                          f"Version {desired.version} was rejected earlier and is not rolled out again; "
                          f"version {state.stable.version if state.stable else '-'} serves.")
    else:
        conditions = cond(conditions, "Degraded", FALSE, "AsExpected", "Nothing is degraded.")

    # Phase, for printing.
    if progress and progress.phase == AWAITING_APPROVAL:
        phase = "AwaitingApproval"
    elif progress:
        phase = "Progressing"
    elif is_true(conditions, "Degraded"):
        phase = "Degraded"
    elif is_true(conditions, "Ready"):
        phase = "Ready"
    else:
        phase = "Pending"
    recorded = state_to_status(state)
    return status.model_copy(update={
        **{name: getattr(recorded, name) for name in STATE_FIELDS},
        **dict(traffic=traffic_status(serving.served), endpoint=serving.endpoint, ready_replicas=serving.ready_replicas,
               last_rollout=transition.record or status.last_rollout, last_analysis=last_analysis,
               conditions=typed(conditions), phase=phase)})


def backend_unavailable_status(status: ModelDeploymentStatus, reason: str, message: str, *, generation: int,
                               now: datetime) -> ModelDeploymentStatus:
    """The serving backend cannot be reached: Degraded with why, and Ready False too unless a stable
    version was serving (it may well still serve)."""
    conditions = set_condition(plain(status.conditions), "Degraded", TRUE, reason, message, generation=generation,
                               now=now)
    if not status.stable_version or not is_true(conditions, "Ready"):
        conditions = set_condition(conditions, "Ready", FALSE, reason, message, generation=generation, now=now)
    return status.model_copy(update={"conditions": typed(conditions), "phase": "Degraded"})


def incident_version(before: ModelDeploymentStatus, after: ModelDeploymentStatus, transition: Transition) -> str:
    """The version a rollout event is about: the one it rejects or leaves (one incident for notifications)."""
    if transition.record:
        return transition.record.version
    if before.candidate_version and before.candidate_version == after.stable_version:
        return str(before.stable_version)  # a rollback completing: the version left behind
    rejected = after.rejected_versions
    return str(before.candidate_version or (rejected[-1] if rejected else after.stable_version))


def rollout_events(before: ModelDeploymentStatus, after: ModelDeploymentStatus, transition: Transition,
                   cause: str | None = None) -> list[Event]:
    """The events of this reconciliation: the transition's (an abort or rollback with its likely
    ``cause``), and trouble no transition announced (a missing model, a crash loop) once, when it starts."""
    events = []
    for event in transition.events:
        message = event.message
        if cause and event.reason in (ROLLOUT_ABORTED, ROLLED_BACK):
            message = f"{message} {cause}"
        events.append(Event(event.reason, message, warning=event.warning))
    old, new = before.condition("Degraded"), after.condition("Degraded")
    announced = {e.reason for e in transition.events}
    if new and new.status == TRUE and (old is None or old.status != TRUE or old.reason != new.reason) \
            and new.reason not in announced:
        events.append(Event(new.reason, new.message, warning=True))
    return events


def _progress_message(rollout: Rollout, state: DeploymentState) -> str:
    progress, candidate = state.rollout, state.candidate
    assert progress is not None and candidate is not None
    if progress.step_started is None and progress.phase != AWAITING_APPROVAL:
        return f"Version {candidate.version}: waiting for its model server to be ready ({progress.phase})."
    if progress.phase == SHADOW_PHASE:
        return (f"Version {candidate.version} receives a {rollout.shadow.mirror_percent}% mirror of live traffic "
                f"(shadow phase, {rollout.shadow.duration_seconds}s).")
    if progress.phase == CANARY_PHASE:
        total = len(rollout.steps)
        return (f"Version {candidate.version} at {candidate_weight(rollout, state)}% of live traffic "
                f"(canary step {min(progress.step, total - 1) + 1} of {total}"
                f"{f', extended {progress.extensions}x' if progress.extensions else ''}).")
    if progress.phase == AWAITING_APPROVAL:
        return f"Version {candidate.version} waits for approval."
    return f"Version {candidate.version} is being promoted."
