"""The rollout state machine, analysis verdicts and traffic plans (reconcile/modeldeployment.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.api.modeldeployment import ModelDeploymentStatus, Rollout
from mlops_operator.reconcile.modeldeployment import (
    AWAITING_APPROVAL,
    CANARY_PHASE,
    MAX_REJECTED,
    MIN_EXTENSION_SECONDS,
    MODEL_UNAVAILABLE,
    PROMOTING,
    ROLLED_BACK,
    ROLLOUT_ABORTED,
    SHADOW_PHASE,
    DeploymentState,
    ModelRef,
    Observation,
    PredictorPlan,
    RequestStats,
    RolloutProgress,
    Verdict,
    analyse_candidate,
    analysis_due,
    analysis_due_at,
    candidate_weight,
    desired_predictors,
    effective_predictors,
    model_metric_problem,
    next_rollout_step,
    router_queries,
    state_from_status,
    state_to_status,
    traffic_status,
)
from mlops_operator.reconcile.seldondeployment import executor_queries

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
V1, V2, V3 = ModelRef("1", "file:///m/1"), ModelRef("2", "file:///m/2"), ModelRef("3", "file:///m/3")
PASS, FAIL, WAIT = (Verdict("pass", "ok"), Verdict("fail", "error rate 50.0% exceeds maxErrorRate 5.0%"),
                    Verdict("wait", "only 3 candidate requests, minRequests is 20"))


def rollout(**fields) -> Rollout:
    base = {"strategy": "canary", "steps": [{"weight": 10, "pauseSeconds": 30}, {"weight": 50, "pauseSeconds": 30}]}
    return Rollout.model_validate({**base, **fields})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def obs(seconds: float = 0, desired: ModelRef | None = V2, **fields) -> Observation:
    return Observation(now=at(seconds), desired=desired, **fields)


def in_flight(phase: str, step: int = 0, step_started: float | None = 0, extensions: int = 0, candidate=V2,
              **fields) -> DeploymentState:
    progress = RolloutProgress(phase=phase, started=T0, step=step,
                               step_started=at(step_started) if step_started is not None else None,
                               extensions=extensions)
    return DeploymentState(stable=V1, candidate=candidate, rollout=progress, **fields)


# ---------------------------------------------------------------- starting


def test_first_version_is_deployed_directly():
    result = next_rollout_step(rollout(), DeploymentState(), obs(desired=V1))
    assert result.state == DeploymentState(stable=V1)
    assert [e.reason for e in result.events] == ["Deploying"]
    assert result.result is None


def test_nothing_happens_when_the_source_names_the_stable_version():
    state = DeploymentState(stable=V1)
    assert next_rollout_step(rollout(), state, obs(desired=V1)).state == state
    assert next_rollout_step(rollout(), state, obs(desired=None)).state == state


@pytest.mark.parametrize(("strategy", "approval", "ready", "phase"), [
    ("canary", "automatic", False, CANARY_PHASE),
    ("canary", "manual", True, CANARY_PHASE),
    ("shadow", "automatic", True, SHADOW_PHASE),
    ("direct", "automatic", False, PROMOTING),
    ("direct", "manual", False, AWAITING_APPROVAL),
    ("direct", "manual", True, AWAITING_APPROVAL),
])
def test_a_new_version_starts_the_strategy(strategy, approval, ready, phase):
    result = next_rollout_step(rollout(strategy=strategy, approval=approval), DeploymentState(stable=V1),
                               obs(desired=V2, candidate_ready=ready))
    assert result.state.stable == V1 and result.state.candidate == V2
    assert result.state.rollout.phase == phase
    assert result.state.rollout.started == T0
    assert "RolloutStarted" in [e.reason for e in result.events]


def test_direct_automatic_with_a_ready_candidate_promotes_at_once():
    result = next_rollout_step(rollout(strategy="direct"), DeploymentState(stable=V1),
                               obs(desired=V2, candidate_ready=True))
    assert result.state == DeploymentState(stable=V2, previous_stable=V1)
    assert result.result == "promoted"
    assert result.record.version == "2" and result.record.result == "promoted"


def test_model_metric_check_aborts_before_any_traffic():
    spec = rollout(analysis={"modelMetric": {"name": "accuracy", "min": 0.9}})
    weak = ModelRef("2", "file:///m/2", {"accuracy": 0.8})
    result = next_rollout_step(spec, DeploymentState(stable=V1), obs(desired=weak))
    assert result.state == DeploymentState(stable=V1, rejected=("2",))
    assert result.result == "aborted"
    assert result.degraded[0] == ROLLOUT_ABORTED and "accuracy 0.8 is below modelMetric.min 0.9" in result.degraded[1]
    assert [e.reason for e in result.events] == ["RolloutStarted", ROLLOUT_ABORTED]


def test_a_stable_version_that_does_not_serve_is_replaced_directly():
    result = next_rollout_step(rollout(), DeploymentState(stable=V1), obs(desired=V2, stable_serving=False))
    assert result.state == DeploymentState(stable=V2, previous_stable=V1)
    assert result.events[0].reason == "Replaced"


def test_a_rejected_version_is_not_rolled_out_again():
    state = DeploymentState(stable=V1, rejected=("2",))
    assert next_rollout_step(rollout(), state, obs(desired=V2)).state == state


# ---------------------------------------------------------------- canary steps


def test_the_step_clock_starts_when_the_candidate_is_ready():
    waiting = in_flight(CANARY_PHASE, step_started=None)
    assert next_rollout_step(rollout(), waiting, obs(5)).state == waiting
    started = next_rollout_step(rollout(), waiting, obs(5.2, candidate_ready=True)).state
    assert started.rollout.step_started == at(5.2)


def test_nothing_is_decided_before_the_pause_ends():
    state = in_flight(CANARY_PHASE)
    assert not analysis_due(rollout(), state.rollout, at(29))
    assert next_rollout_step(rollout(), state, obs(29, candidate_ready=True, verdict=FAIL)).state == state
    assert analysis_due(rollout(), state.rollout, at(30))


# (step, verdict, approval) -> (phase or None when promoted/aborted, step, result)
STEP_TABLE = [
    (0, PASS, "automatic", CANARY_PHASE, 1, None),
    (1, PASS, "automatic", None, None, "promoted"),
    (1, PASS, "manual", AWAITING_APPROVAL, 1, None),
    (0, FAIL, "automatic", None, None, "aborted"),
    (1, FAIL, "manual", None, None, "aborted"),
    (0, WAIT, "automatic", CANARY_PHASE, 0, None),
]


@pytest.mark.parametrize(("step", "verdict", "approval", "phase", "next_step", "result"), STEP_TABLE)
def test_canary_step_decisions(step, verdict, approval, phase, next_step, result):
    state = in_flight(CANARY_PHASE, step=step)
    out = next_rollout_step(rollout(approval=approval), state, obs(30, candidate_ready=True, verdict=verdict))
    assert out.result == result
    assert out.verdict == verdict
    if phase is None:
        assert out.state.rollout is None and out.state.candidate is None
    else:
        assert out.state.rollout.phase == phase and out.state.rollout.step == next_step
    if result == "promoted":
        assert out.state.stable == V2 and out.state.previous_stable == V1
    if result == "aborted":
        assert out.state.stable == V1 and out.state.rejected == ("2",)
        assert out.degraded == (ROLLOUT_ABORTED, out.events[-1].message)
        assert "maxErrorRate" in out.events[-1].message and out.events[-1].warning


def test_a_passed_step_restarts_the_clock_and_the_extensions():
    state = in_flight(CANARY_PHASE, extensions=2)
    due = analysis_due_at(rollout(), state.rollout)
    out = next_rollout_step(rollout(), state, obs((due - T0).total_seconds(), candidate_ready=True, verdict=PASS))
    assert out.state.rollout.step == 1 and out.state.rollout.extensions == 0
    assert out.state.rollout.step_started == due


def test_too_few_requests_extend_the_step_then_abort():
    spec = rollout(analysis={"maxExtensions": 2})
    state = in_flight(CANARY_PHASE)
    for expected in (1, 2):
        due = analysis_due_at(spec, state.rollout)
        out = next_rollout_step(spec, state, obs((due - T0).total_seconds(), candidate_ready=True, verdict=WAIT))
        assert out.state.rollout.extensions == expected
        state = out.state
    # Each extension lasts the pause (30 s) again.
    assert analysis_due_at(spec, state.rollout) == at(30 + 2 * 30)
    out = next_rollout_step(spec, state, obs(90, candidate_ready=True, verdict=WAIT))
    assert out.result == "aborted" and "after 2 extensions" in out.degraded[1]


def test_extensions_of_a_step_without_pause_last_a_minimum():
    spec = rollout(steps=[{"weight": 20, "pauseSeconds": 0}])
    state = in_flight(CANARY_PHASE, extensions=1)
    assert analysis_due_at(spec, state.rollout) == at(MIN_EXTENSION_SECONDS)


def test_the_shadow_phase_leads_to_the_first_canary_step():
    spec = rollout(strategy="shadow", shadow={"durationSeconds": 20, "mirrorPercent": 50})
    state = in_flight(SHADOW_PHASE)
    assert not analysis_due(spec, state.rollout, at(19))
    out = next_rollout_step(spec, state, obs(20, candidate_ready=True, verdict=PASS))
    assert out.state.rollout.phase == CANARY_PHASE and out.state.rollout.step == 0
    assert out.state.rollout.step_started is None  # restarts once the candidate serves as canary
    failed = next_rollout_step(spec, state, obs(20, candidate_ready=True, verdict=FAIL))
    assert failed.result == "aborted" and "shadow phase" in failed.degraded[1]


# ---------------------------------------------------------------- approval and promotion


def test_awaiting_approval_waits_for_the_candidate_version():
    spec = rollout(approval="manual")
    state = in_flight(AWAITING_APPROVAL, step=1)
    assert next_rollout_step(spec, state, obs(500, candidate_ready=True, approve="3")).state == state
    assert next_rollout_step(spec, state, obs(500, candidate_ready=True, verdict=PASS)).state == state
    out = next_rollout_step(spec, state, obs(500, candidate_ready=True, approve="2"))
    assert out.result == "promoted" and out.state.stable == V2
    assert [e.reason for e in out.events] == ["Approved", "Promoted"]


def test_a_failing_candidate_awaiting_approval_is_aborted():
    out = next_rollout_step(rollout(approval="manual"), in_flight(AWAITING_APPROVAL),
                            obs(500, candidate_ready=True, verdict=FAIL))
    assert out.result == "aborted" and out.state.rejected == ("2",)


def test_a_prior_approval_promotes_when_the_last_step_passes():
    out = next_rollout_step(rollout(approval="manual"), in_flight(CANARY_PHASE, step=1),
                            obs(30, candidate_ready=True, verdict=PASS, approve="2"))
    assert out.result == "promoted"


def test_promoting_waits_for_the_candidate_server():
    state = in_flight(PROMOTING, step_started=None)
    assert next_rollout_step(rollout(strategy="direct"), state, obs(3)).state == state
    out = next_rollout_step(rollout(strategy="direct"), state, obs(9, candidate_ready=True))
    assert out.state == DeploymentState(stable=V2, previous_stable=V1)
    assert "took 9s" in out.events[-1].message


# ---------------------------------------------------------------- ends without promotion


def test_a_candidate_that_cannot_be_served_is_rejected_as_model_unavailable():
    out = next_rollout_step(rollout(), in_flight(CANARY_PHASE, step_started=None),
                            obs(40, candidate_failure="its model server failed 3 times"))
    assert out.result == "aborted"
    assert out.state == DeploymentState(stable=V1, rejected=("2",))
    assert out.degraded[0] == MODEL_UNAVAILABLE and "stable version 1 keeps serving" in out.degraded[1]


def test_rollback_annotation_aborts_the_rollout_in_flight_once():
    out = next_rollout_step(rollout(), in_flight(CANARY_PHASE), obs(10, rollback="2"))
    assert out.result == "rolledback" and out.degraded[0] == ROLLED_BACK
    assert out.state == DeploymentState(stable=V1, rejected=("2",))
    again = next_rollout_step(rollout(), out.state, obs(11, rollback="2"))
    assert again.state == out.state and again.result is None


def test_rollback_annotation_returns_a_stable_version_to_the_previous_one():
    state = DeploymentState(stable=V2, previous_stable=V1)
    out = next_rollout_step(rollout(), state, obs(0, desired=V2, rollback="2"))
    assert out.result == "rolledback"
    assert out.state.candidate == V1 and out.state.rollout.phase == PROMOTING and out.state.rejected == ("2",)
    assert desired_predictors(rollout(), out.state) == [PredictorPlan("stable", V2, 100), PredictorPlan("canary", V1, 0)]
    # The source still names 2, which is rejected: it must not cancel the way back.
    waiting = next_rollout_step(rollout(), out.state, obs(2, desired=V2, rollback="2"))
    assert waiting.state == out.state
    done = next_rollout_step(rollout(), out.state, obs(5, desired=V2, rollback="2", candidate_ready=True))
    assert done.state == DeploymentState(stable=V1, rejected=("2",))
    assert done.result is None and done.events[-1].reason == "RolledBack"
    assert next_rollout_step(rollout(), done.state, obs(6, desired=V2, rollback="2")).state == done.state


def test_rollback_without_a_previous_version_does_nothing():
    state = DeploymentState(stable=V1)
    assert next_rollout_step(rollout(), state, obs(desired=V1, rollback="1")).state == state


def test_a_newer_version_supersedes_the_rollout_in_flight():
    out = next_rollout_step(rollout(), in_flight(CANARY_PHASE, step=1), obs(10, desired=V3))
    assert out.result == "superseded" and out.record.version == "2"
    assert out.state.candidate == V3 and out.state.rollout.step == 0 and out.state.rollout.started == at(10)
    assert out.state.rejected == ()
    assert [e.reason for e in out.events] == ["RolloutSuperseded", "RolloutStarted"]


@pytest.mark.parametrize("desired", [V1, V3])
def test_naming_the_stable_or_a_rejected_version_cancels_the_rollout(desired):
    state = in_flight(CANARY_PHASE, rejected=("3",))
    out = next_rollout_step(rollout(), state, obs(10, desired=desired))
    assert out.result == "superseded"
    assert out.state == DeploymentState(stable=V1, rejected=("3",))


def test_an_unavailable_source_leaves_the_rollout_going():
    state = in_flight(CANARY_PHASE)
    out = next_rollout_step(rollout(), state, obs(30, desired=None, candidate_ready=True, verdict=PASS))
    assert out.state.rollout.step == 1


def test_rejected_versions_are_bounded_newest_last():
    rejected = tuple(str(v) for v in range(100, 100 + MAX_REJECTED))
    out = next_rollout_step(rollout(), in_flight(CANARY_PHASE, rejected=rejected), obs(30, candidate_ready=True,
                                                                                     verdict=FAIL))
    assert len(out.state.rejected) == MAX_REJECTED and out.state.rejected[-1] == "2" and "100" not in out.state.rejected


def test_a_whole_canary_rollout_with_a_clock():
    """Drive a rollout from a new version to promotion, one reconciliation per second."""
    spec = rollout(steps=[{"weight": 10, "pauseSeconds": 5}, {"weight": 50, "pauseSeconds": 5}])
    state = DeploymentState(stable=V1)
    weights, results = [], []
    for second in range(30):
        ready = second >= 3  # the candidate's server takes 3 s
        due = analysis_due(spec, state.rollout, at(second))
        verdict = PASS if due else None
        out = next_rollout_step(spec, state, obs(second, candidate_ready=ready, verdict=verdict))
        state = out.state
        weights.append(candidate_weight(spec, state))
        results.append(out.result)
    assert results.count("promoted") == 1
    promoted_at = results.index("promoted")
    assert promoted_at == 13  # ready at 3, 10% for 5 s, 50% for 5 s
    assert weights[3:8] == [10] * 5 and weights[8:13] == [50] * 5 and weights[13] == 0
    assert state == DeploymentState(stable=V2, previous_stable=V1)


# ---------------------------------------------------------------- analysis


ANALYSIS_TABLE = [
    # (requests, errors, p99, outcome, text)
    (100, 0, 10.0, "pass", "within thresholds"),
    (100, 5, 10.0, "pass", "within thresholds"),      # 5% is not above 5%
    (100, 6, 10.0, "fail", "error rate 6.0%"),
    (100, 0, 250.0, "fail", "p99 latency 250.0 ms exceeds maxLatencyP99Ms 200"),
    (100, 10, 250.0, "fail", "error rate 10.0% (10 of 100 requests) exceeds maxErrorRate 5.0%; p99"),
    (10, 0, 10.0, "wait", "only 10 candidate requests, minRequests is 20"),
    (10, 1, 10.0, "wait", "only 10"),                 # 10% so far, but 1 error in 20 would be fine
    (10, 2, 10.0, "fail", "error rate 20.0%"),       # 2 errors already exceed 5% of 20 requests
    (10, 0, 900.0, "wait", "only 10"),                # latency is judged on enough requests only
    (0, 0, None, "wait", "only 0"),
]


@pytest.mark.parametrize(("requests", "errors", "p99", "outcome", "text"), ANALYSIS_TABLE)
def test_analysis_verdicts(requests, errors, p99, outcome, text):
    spec = rollout(analysis={"maxErrorRate": 0.05, "maxLatencyP99Ms": 200, "minRequests": 20}).analysis
    stats = RequestStats(requests, errors, errors / requests if requests else None, p99, "router")
    verdict = analyse_candidate(spec, stats)
    assert verdict.outcome == outcome
    assert text in verdict.message
    assert verdict.stats == stats


def test_without_a_metrics_source_a_step_passes_on_time():
    verdict = analyse_candidate(rollout().analysis, None)
    assert verdict.outcome == "pass" and "no request metrics source" in verdict.message


@pytest.mark.parametrize(("check", "metrics", "problem"), [
    (None, {}, None),
    ({"name": "accuracy", "min": 0.9}, {"accuracy": 0.95}, None),
    ({"name": "accuracy", "min": 0.9}, {"accuracy": 0.85}, "below modelMetric.min"),
    ({"name": "rmse", "max": 1.0}, {"rmse": 1.5}, "above modelMetric.max"),
    ({"name": "f1", "min": 0.5}, {"accuracy": 0.9}, "missing"),
])
def test_model_metric_problem(check, metrics, problem):
    spec = rollout(analysis={"modelMetric": check} if check else {}).analysis
    found = model_metric_problem(spec, metrics)
    assert (found is None) if problem is None else (problem in found)


# ---------------------------------------------------------------- traffic


@pytest.mark.parametrize(("state", "expected"), [
    (DeploymentState(), []),
    (DeploymentState(stable=V1), [("stable", "1", 100, False)]),
    (in_flight(SHADOW_PHASE), [("stable", "1", 100, False), ("shadow", "2", 0, True)]),
    (in_flight(CANARY_PHASE, step=0), [("stable", "1", 90, False), ("canary", "2", 10, False)]),
    (in_flight(CANARY_PHASE, step=1), [("stable", "1", 50, False), ("canary", "2", 50, False)]),
    (in_flight(CANARY_PHASE, step=7), [("stable", "1", 50, False), ("canary", "2", 50, False)]),  # steps shrank
    (in_flight(AWAITING_APPROVAL, step=1), [("stable", "1", 50, False), ("canary", "2", 50, False)]),
    (in_flight(PROMOTING), [("stable", "1", 50, False), ("canary", "2", 50, False)]),
])
def test_desired_predictors_per_phase(state, expected):
    plan = desired_predictors(rollout(shadow={"mirrorPercent": 30}), state)
    assert [(p.name, p.model.version, p.weight, p.shadow) for p in plan] == expected
    if state.rollout and state.rollout.phase == SHADOW_PHASE:
        assert plan[1].mirror_percent == 30
        assert traffic_status(plan)[1].to_api() == {"predictor": "shadow", "version": "2", "weight": 30, "shadow": True}


def test_a_direct_rollout_gives_the_candidate_no_traffic_before_promotion():
    state = in_flight(AWAITING_APPROVAL)
    plan = desired_predictors(rollout(strategy="direct", approval="manual"), state)
    assert [(p.name, p.weight) for p in plan] == [("stable", 100), ("canary", 0)]


@pytest.mark.parametrize(("ready", "expected"), [
    ({"1", "2"}, [("stable", 90), ("canary", 10), ("shadow", 0)]),
    ({"1"}, [("stable", 100), ("canary", 0)]),        # candidate not ready: its share stays with stable
    ({"2"}, [("stable", 90), ("canary", 10), ("shadow", 0)]),  # stable down: nothing better to do
])
def test_effective_predictors_follow_readiness(ready, expected):
    plan = [PredictorPlan("stable", V1, 90), PredictorPlan("canary", V2, 10), PredictorPlan("shadow", V2, 0, True)]
    served = effective_predictors(plan, lambda model: model.version in ready)
    assert [(p.name, p.weight) for p in served] == expected


# ---------------------------------------------------------------- status round trip and Prometheus


def test_state_round_trips_through_status():
    state = in_flight(CANARY_PHASE, step=1, extensions=2, previous_stable=V3, rejected=("4",))
    fields = state_to_status(state).to_status()
    assert fields["rollout"] == {"phase": "Canary", "step": 1, "started": "2026-01-01T12:00:00.000Z",
                                 "stepStarted": "2026-01-01T12:00:00.000Z", "extensions": 2}
    precise = replace(state, rollout=replace(state.rollout, step_started=at(1.25)))
    assert state_to_status(precise).rollout.step_started == "2026-01-01T12:00:01.250Z"
    assert state_from_status(state_to_status(precise)) == precise
    assert state_from_status(ModelDeploymentStatus.model_validate(fields)) == state  # as read back from the API
    cleared = state_to_status(DeploymentState(stable=V1)).to_status()
    assert cleared["candidateVersion"] is None and cleared["rollout"] is None


def test_prometheus_queries_select_the_candidate():
    local = router_queries("ns", "iris", "canary", 29.2)
    assert local["requests"] == ('sum(increase(mlops_router_requests_total{namespace="ns",deployment="iris",'
                                 'predictor="canary",code!~"4.."}[30s]))')  # client errors judge nobody
    assert "histogram_quantile(0.99" in local["p99"]
    seldon = executor_queries("ns", "iris", "canary", 60)
    assert 'deployment_name="iris",predictor_name="canary",code=~"5.."' in seldon["errors"]
    assert 'predictor_name="canary",code!~"4.."' in seldon["requests"]


# ---------------------------------------------------------------- no metrics source (a cluster backend)


NO_METRICS = "no request metrics source for a canary on backend seldon"


@pytest.mark.parametrize("strategy", ["canary", "shadow"])
def test_an_automatic_rollout_nothing_can_analyse_is_refused_before_any_traffic(strategy):
    result = next_rollout_step(rollout(strategy=strategy), DeploymentState(stable=V1),
                               obs(analysis_unavailable=NO_METRICS))
    assert result.state.candidate is None and result.state.rollout is None and result.state.stable == V1
    assert result.state.rejected == ("2",) and result.result == "aborted"
    assert result.degraded[0] == ROLLOUT_ABORTED and NO_METRICS in result.degraded[1]
    assert [e.reason for e in result.events] == ["RolloutStarted", ROLLOUT_ABORTED]
    assert "before any traffic" in result.events[-1].message


@pytest.mark.parametrize("fields", [{"approval": "manual"}, {"strategy": "direct"}])
def test_a_person_or_a_direct_rollout_needs_no_metrics(fields):
    result = next_rollout_step(rollout(**fields), DeploymentState(stable=V1), obs(analysis_unavailable=NO_METRICS))
    assert result.state.candidate == V2 and result.result is None


def test_which_backends_lack_a_metrics_source():
    from mlops_operator.reconcile.modeldeployment import analysis_unavailable

    message = analysis_unavailable("seldon", False, None, allow_pause_only=False)
    assert message and "MLOPS_PROMETHEUS_URL" in message and "MLOPS_ALLOW_PAUSE_ONLY_ANALYSIS=true" in message
    assert "on backend seldon" in message
    assert analysis_unavailable("seldon", False, "http://prometheus:9090", allow_pause_only=False) is None
    assert analysis_unavailable("seldon", False, None, allow_pause_only=True) is None
    assert analysis_unavailable("local", True, None, allow_pause_only=False) is None  # the router's statistics

    from mlops_operator.backends.serving_local.backend import LocalServing
    from mlops_operator.backends.serving_seldon import SeldonServing

    assert LocalServing.own_request_metrics and not SeldonServing.own_request_metrics
