"""ModelDeployment status: conditions, phase, traffic and analysis (deployment_status), and the
Prometheus analysis client against a stand-in Prometheus."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from mlops_operator.api.modeldeployment import ModelDeploymentStatus, Rollout
from mlops_operator.backends import prometheus
from mlops_operator.reconcile.conditions import find_condition
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
    deployment_status,
    next_rollout_step,
    prometheus_queries,
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
    return deployment_status(before or {}, previous or state, transition or Transition(state),
                             serving_view or serving(), desired=desired, source_problem=source_problem,
                             generation=3, now=T0, rollout=SPEC)


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_serving_stable_version_is_ready():
    status = status_of(DeploymentState(stable=V1))
    assert conditions(status) == {"Ready": ("True", "Serving"), "Progressing": ("False", "Stable"),
                                  "AwaitingApproval": ("False", "NoApprovalPending"),
                                  "Degraded": ("False", "AsExpected")}
    assert status["phase"] == "Ready" and status["endpoint"] == ENDPOINT and status["readyReplicas"] == 1
    assert status["traffic"] == [{"predictor": "stable", "version": "1", "weight": 100, "shadow": False}]
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    ModelDeploymentStatus.model_validate(status)  # the shape the CRD accepts


def test_the_first_version_is_deploying_until_its_server_is_ready():
    status = status_of(DeploymentState(stable=V1), serving_view=serving(ready=False, problem=("Starting", "...")))
    assert conditions(status)["Ready"] == ("False", "Starting")
    assert conditions(status)["Progressing"] == ("True", "Deploying")
    assert status["phase"] == "Pending"


def test_waiting_for_a_model_is_not_degraded():
    status = status_of(DeploymentState(), serving_view=ServingObservation(), desired=None,
                       source_problem=("WaitingForModel", "ModelTraining iris has not validated a model yet"))
    assert conditions(status)["Ready"] == ("False", "WaitingForModel")
    assert conditions(status)["Degraded"] == ("False", "AsExpected")
    assert status["phase"] == "Pending"


def test_a_missing_model_degrades_but_the_stable_version_keeps_serving():
    status = status_of(DeploymentState(stable=V1), desired=None,
                       source_problem=("ModelUnavailable", "model URI file:///m/9 does not exist"))
    assert conditions(status)["Ready"] == ("True", "Serving")
    assert conditions(status)["Degraded"] == ("True", "ModelUnavailable")
    assert status["phase"] == "Degraded"


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
    assert "at 10% of live traffic (canary step 1 of 2)" in find_condition(status["conditions"], "Progressing")["message"]
    assert status["phase"] == "Progressing"
    assert status["candidateVersion"] == "2" and status["rollout"]["phase"] == "Canary"
    assert [t["weight"] for t in status["traffic"]] == [90, 10]


def test_awaiting_approval():
    state = DeploymentState(stable=V1, candidate=V2, rollout=RolloutProgress(AWAITING_APPROVAL, T0, 1, T0))
    status = status_of(state, desired=V2)
    assert conditions(status)["AwaitingApproval"] == ("True", "AwaitingApproval")
    assert "kubectl mlops approve" in find_condition(status["conditions"], "AwaitingApproval")["message"]
    assert status["phase"] == "AwaitingApproval"


def test_an_aborted_rollout_stays_degraded_while_the_source_names_the_rejected_version():
    previous = DeploymentState(stable=V1, candidate=V2, rollout=RolloutProgress(CANARY_PHASE, T0, 0, T0))
    verdict = Verdict("fail", "error rate 50.0% (10 of 20 requests) exceeds maxErrorRate 5.0%",
                      RequestStats(20, 10, 0.5, 12.5, "router"))
    transition = next_rollout_step(SPEC, previous, Observation(now=T0 + timedelta(seconds=30), desired=V2,
                                                               candidate_ready=True, verdict=verdict))
    first = status_of(transition.state, previous=previous, transition=transition, desired=V2)
    assert conditions(first)["Degraded"] == ("True", "RolloutAborted")
    assert first["lastAnalysis"]["passed"] is False and first["lastAnalysis"]["errorRate"] == 0.5
    assert first["lastAnalysis"]["predictor"] == "canary" and first["lastAnalysis"]["version"] == "2"
    assert first["lastRollout"]["result"] == "aborted" and first["rejectedVersions"] == ["2"]
    assert first["candidateVersion"] is None and first["rollout"] is None
    ModelDeploymentStatus.model_validate(first)
    # Later reconciliations: same message while the source names version 2 ...
    later = status_of(transition.state, before=first, desired=V2)
    assert find_condition(later["conditions"], "Degraded") == find_condition(first["conditions"], "Degraded")
    # ... and clear once it names another version that is served.
    moved_on = status_of(DeploymentState(stable=ModelRef("3", "file:///m/3"), rejected=("2",)), before=later,
                         desired=ModelRef("3", "file:///m/3"))
    assert conditions(moved_on)["Degraded"] == ("False", "AsExpected")


def test_transition_times_survive_unchanged_conditions():
    first = status_of(DeploymentState(stable=V1))
    later = deployment_status(first, DeploymentState(stable=V1), Transition(DeploymentState(stable=V1)), serving(),
                              desired=V1, source_problem=None, generation=3, now=T0 + timedelta(hours=1),
                              rollout=SPEC)
    assert later["conditions"] == first["conditions"]


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
    queries = prometheus_queries("local", "ns", "iris", "canary", 60)
    answers = {"mlops_router_request_errors_total": vector("3.2"), "mlops_router_requests_total": vector("40.4"),
               "histogram_quantile": vector("0.0125")}
    stats = _run_with_prometheus(answers, lambda url: prometheus.candidate_stats(url, queries))
    assert stats == RequestStats(requests=40, errors=3, error_rate=3 / 40, p99_ms=12.5, source="prometheus")


def test_no_samples_mean_no_requests_and_no_latency():
    queries = prometheus_queries("local", "ns", "iris", "canary", 60)
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    answers = {"histogram_quantile": vector("NaN"), "mlops_router": empty}
    stats = _run_with_prometheus(answers, lambda url: prometheus.candidate_stats(url, queries))
    assert stats.requests == 0 and stats.error_rate is None and stats.p99_ms is None


def test_a_prometheus_error_is_reported():
    queries = prometheus_queries("local", "ns", "iris", "canary", 60)
    with pytest.raises(prometheus.PrometheusUnavailable, match="unexpected"):
        _run_with_prometheus({}, lambda url: prometheus.candidate_stats(url, queries))
    with pytest.raises(prometheus.PrometheusUnavailable):
        asyncio.run(prometheus.candidate_stats("http://127.0.0.1:9", queries, timeout=2))
