"""ModelDeployment status: conditions, phase, traffic and analysis (deployment_status), and the
Prometheus analysis client against a stand-in Prometheus."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from mlops_operator.api.modeldeployment import ModelDeploymentStatus, Rollout
from mlops_operator.backends import prometheus
from mlops_operator.reconcile.modeldeployment import (
    AWAITING_APPROVAL,
    CANARY_PHASE,
    DeploymentState,
    ModelRef,
    Observation,
    PredictorPlan,
    RolloutProgress,
    ServingObservation,
    Transition,
    Verdict,
    RequestStats,
    backend_unavailable_status,
    deployment_status,
    incident_version,
    next_rollout_step,
    router_queries,
    rollout_events,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
V1, V2 = ModelRef("1", "file:///m/1"), ModelRef("2", "file:///m/2")
SPEC = Rollout()
ENDPOINT = "http://127.0.0.1:4000/v2/models/iris"


def serving(ready=True, plan=None, problem=None, degrades=False):
    return ServingObservation(served=plan or [PredictorPlan("stable", V1, 100)], stable_ready=ready,
                              endpoint=ENDPOINT if ready else None, ready_replicas=1 if ready else 0,
                              problem=problem, degrades=degrades)


def status_of(state, *, serving_view=None, desired=V1, source_problem=None, before=None, transition=None,
              previous=None):
    return deployment_status(before or ModelDeploymentStatus(), previous or state, transition or Transition(state),
                             serving_view or serving(), desired=desired, source_problem=source_problem,
                             generation=3, now=T0, rollout=SPEC)


def conditions(status):
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_a_serving_stable_version_is_ready():
    status = status_of(DeploymentState(stable=V1))
    assert conditions(status) == {"Ready": ("True", "Serving"), "Progressing": ("False", "Stable"),
                                  "AwaitingApproval": ("False", "NoApprovalPending"),
                                  "Degraded": ("False", "AsExpected")}
    assert status.phase == "Ready" and status.endpoint == ENDPOINT and status.ready_replicas == 1
    written = status.to_status()
    assert written["traffic"] == [{"predictor": "stable", "version": "1", "weight": 100, "shadow": False}]
    assert all(c["observedGeneration"] == 3 for c in written["conditions"])
    assert written["candidateVersion"] is None and written["rollout"] is None  # cleared by the merge patch
    ModelDeploymentStatus.model_validate(written)  # the shape the CRD accepts


def test_the_first_version_is_deploying_until_its_server_is_ready():
    status = status_of(DeploymentState(stable=V1), serving_view=serving(ready=False, problem=("Starting", "...")))
    assert conditions(status)["Ready"] == ("False", "Starting")
    assert conditions(status)["Progressing"] == ("True", "Deploying")
    assert status.phase == "Pending"


def test_waiting_for_a_model_is_not_degraded():
    status = status_of(DeploymentState(), serving_view=ServingObservation(), desired=None,
                       source_problem=("WaitingForModel", "ModelTraining iris has not validated a model yet"))
    assert conditions(status)["Ready"] == ("False", "WaitingForModel")
    assert conditions(status)["Degraded"] == ("False", "AsExpected")
    assert status.phase == "Pending"


def test_a_missing_model_degrades_but_the_stable_version_keeps_serving():
    status = status_of(DeploymentState(stable=V1), desired=None,
                       source_problem=("ModelUnavailable", "model URI file:///m/9 does not exist"))
    assert conditions(status)["Ready"] == ("True", "Serving")
    assert conditions(status)["Degraded"] == ("True", "ModelUnavailable")
    assert status.phase == "Degraded"


def test_a_crash_looping_stable_server_is_not_ready_and_degraded():
    status = status_of(DeploymentState(stable=V1), serving_view=serving(
        ready=False, problem=("ServerCrashLoop", "restarted 3 times"), degrades=True))
    assert conditions(status)["Ready"] == ("False", "ServerCrashLoop")
    assert conditions(status)["Degraded"] == ("True", "ServerCrashLoop")
    assert conditions(status)["Progressing"][0] == "False"


def test_a_canary_step_is_progressing_with_its_weights():
    state = DeploymentState(stable=V1, candidate=V2, rollout=RolloutProgress(CANARY_PHASE, T0, 0, T0))
    plan = [PredictorPlan("stable", V1, 90), PredictorPlan("canary", V2, 10)]
    status = status_of(state, serving_view=serving(plan=plan), desired=V2)
    assert conditions(status)["Progressing"] == ("True", "Canary")
    assert "at 10% of live traffic (canary step 1 of 2)" in status.condition("Progressing").message
    assert status.phase == "Progressing"
    assert status.candidate_version == "2" and status.rollout.phase == "Canary"
    assert [t.weight for t in status.traffic] == [90, 10]


def test_awaiting_approval():
    state = DeploymentState(stable=V1, candidate=V2, rollout=RolloutProgress(AWAITING_APPROVAL, T0, 1, T0))
    status = status_of(state, desired=V2)
    assert conditions(status)["AwaitingApproval"] == ("True", "AwaitingApproval")
    assert "kubectl mlops approve" in status.condition("AwaitingApproval").message
    assert status.phase == "AwaitingApproval"


def aborted_canary() -> tuple[DeploymentState, Transition]:
    """A canary of version 2 whose analysis failed, and the step that aborts it."""
    previous = DeploymentState(stable=V1, candidate=V2, rollout=RolloutProgress(CANARY_PHASE, T0, 0, T0))
    verdict = Verdict("fail", "error rate 50.0% (10 of 20 requests) exceeds maxErrorRate 5.0%",
                      RequestStats(20, 10, 0.5, 12.5, "router"))
    return previous, next_rollout_step(SPEC, previous, Observation(now=T0 + timedelta(seconds=30), desired=V2,
                                                                   candidate_ready=True, verdict=verdict))


def test_an_aborted_rollout_stays_degraded_while_the_source_names_the_rejected_version():
    previous, transition = aborted_canary()
    first = status_of(transition.state, previous=previous, transition=transition, desired=V2)
    assert conditions(first)["Degraded"] == ("True", "RolloutAborted")
    assert first.last_analysis.passed is False and first.last_analysis.error_rate == 0.5
    assert first.last_analysis.predictor == "canary" and first.last_analysis.version == "2"
    assert first.last_rollout.result == "aborted" and first.rejected_versions == ["2"]
    assert first.candidate_version is None and first.rollout is None
    ModelDeploymentStatus.model_validate(first.to_status())
    # Later reconciliations: same message while the source names version 2 ...
    later = status_of(transition.state, before=first, desired=V2)
    assert later.condition("Degraded") == first.condition("Degraded")
    # ... and clear once it names another version that is served.
    moved_on = status_of(DeploymentState(stable=ModelRef("3", "file:///m/3"), rejected=("2",)), before=later,
                         desired=ModelRef("3", "file:///m/3"))
    assert conditions(moved_on)["Degraded"] == ("False", "AsExpected")


def test_transition_times_survive_unchanged_conditions():
    first = status_of(DeploymentState(stable=V1))
    later = deployment_status(first, DeploymentState(stable=V1), Transition(DeploymentState(stable=V1)), serving(),
                              desired=V1, source_problem=None, generation=3, now=T0 + timedelta(hours=1),
                              rollout=SPEC)
    assert later.conditions == first.conditions


# ---------------------------------------------------------------- Prometheus


def _run_with_prometheus(answers: dict[str, dict], call):
    async def handler(request: web.Request) -> web.Response:
        query = request.query["query"]
        for fragment, body in answers.items():
            if fragment in query:
                return web.json_response(body)
        return web.json_response({"status": "error", "error": f"unexpected {query}"}, status=400)

    async def main():
        app = web.Application()
        app.router.add_get("/api/v1/query", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await call(f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def vector(value: str) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, value]}]}}


def test_candidate_stats_from_prometheus():
    queries = router_queries("ns", "iris", "canary", 60)
    answers = {"mlops_router_request_errors_total": vector("3.2"), "mlops_router_requests_total": vector("40.4"),
               "histogram_quantile": vector("0.0125")}
    stats = _run_with_prometheus(answers, lambda url: prometheus.candidate_stats(url, queries))
    assert stats == RequestStats(requests=40, errors=3, error_rate=3 / 40, p99_ms=12.5, source="prometheus")


def test_no_samples_mean_no_requests_and_no_latency():
    queries = router_queries("ns", "iris", "canary", 60)
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    answers = {"histogram_quantile": vector("NaN"), "mlops_router": empty}
    stats = _run_with_prometheus(answers, lambda url: prometheus.candidate_stats(url, queries))
    assert stats.requests == 0 and stats.error_rate is None and stats.p99_ms is None


def test_a_prometheus_error_is_reported():
    queries = router_queries("ns", "iris", "canary", 60)
    with pytest.raises(prometheus.PrometheusUnavailable, match="unexpected"):
        _run_with_prometheus({}, lambda url: prometheus.candidate_stats(url, queries))
    with pytest.raises(prometheus.PrometheusUnavailable):
        asyncio.run(prometheus.candidate_stats("http://127.0.0.1:9", queries, timeout=2))


# ---------------------------------------------------------------- typed status, events


def test_an_unchanged_status_read_back_from_the_api_is_written_as_it_is():
    """The typed status serialises to what the API server stores, so an unchanged reconciliation patches nothing."""
    previous = DeploymentState(stable=V1, candidate=V2, rollout=RolloutProgress(CANARY_PHASE, T0, 0, T0))
    plan = [PredictorPlan("stable", V1, 90), PredictorPlan("canary", V2, 10)]
    first = status_of(previous, serving_view=serving(plan=plan), desired=V2).to_status()
    stored = {key: value for key, value in first.items() if value is not None}  # a merge patch's None deletes
    again = deployment_status(ModelDeploymentStatus.model_validate(stored), previous, Transition(previous),
                              serving(plan=plan), desired=V2, source_problem=None, generation=3, now=T0,
                              rollout=SPEC).to_status()
    assert {key: value for key, value in again.items() if stored.get(key) != value} == {}


def test_an_unreachable_backend_degrades_and_unreadies_only_what_did_not_serve():
    serving_status = status_of(DeploymentState(stable=V1))
    kept = backend_unavailable_status(serving_status, "BackendUnavailable", "no Seldon CRD", generation=4,
                                      now=T0 + timedelta(minutes=1))
    assert conditions(kept)["Degraded"] == ("True", "BackendUnavailable") and kept.phase == "Degraded"
    assert kept.condition("Ready") == serving_status.condition("Ready")  # the stable version may still serve
    fresh = backend_unavailable_status(ModelDeploymentStatus(), "BackendUnavailable", "no Seldon CRD", generation=1,
                                       now=T0)
    assert conditions(fresh)["Ready"] == ("False", "BackendUnavailable")
    assert fresh.condition("Ready").message == "no Seldon CRD" and fresh.condition("Ready").observed_generation == 1


def test_rollout_events_add_the_cause_and_announce_new_trouble_once():
    previous, transition = aborted_canary()
    before = status_of(previous, desired=V2)
    after = status_of(transition.state, previous=previous, transition=transition, desired=V2)
    (event,) = rollout_events(before, after, transition, "Likely cause: x.")
    assert event.reason == "RolloutAborted" and event.warning and event.message.endswith(" Likely cause: x.")
    assert incident_version(before, after, transition) == "2"
    # A crash loop no transition announced: once, when it starts.
    crash = serving(ready=False, problem=("ServerCrashLoop", "restarted 3 times"), degrades=True)
    crashing = status_of(DeploymentState(stable=V1), serving_view=crash)
    steady = Transition(DeploymentState(stable=V1))
    (event,) = rollout_events(status_of(DeploymentState(stable=V1)), crashing, steady)
    assert (event.reason, event.message, event.warning) == ("ServerCrashLoop", "restarted 3 times", True)
    assert rollout_events(crashing, crashing, steady) == []
