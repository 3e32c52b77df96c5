"""What the serving backends' state means for a ModelDeployment (reconcile/serving.py): readiness,
failures, the local router's routes and the serving summary of both backends."""

from __future__ import annotations

from dataclasses import dataclass

from mlops_operator.reconcile.modeldeployment import MODEL_UNAVAILABLE, ModelRef, PredictorPlan
from mlops_operator.reconcile.seldondeployment import SeldonObservation
from mlops_operator.reconcile.serving import (
    CANDIDATE_RESTART_LIMIT,
    BackendView,
    local_routes,
    local_serving,
    note_servers,
    router_problem,
    routes_serve_stable,
    seldon_needs_pod_reason,
    seldon_view,
    server_failure,
)

V1, V2 = ModelRef("1", "file:///models/iris/1"), ModelRef("2", "file:///models/iris/2")
CANARY_PLAN = [PredictorPlan("stable", V1, 75), PredictorPlan("canary", V2, 25)]
SHADOW_PLAN = [PredictorPlan("stable", V1, 100), PredictorPlan("shadow", V2, 0, shadow=True, mirror_percent=50)]


@dataclass(frozen=True)
class Server:
    """A model server as backends.serving_local reports it (PredictorState's fields that matter)."""

    version: str
    phase: str = "Ready"
    restarts: int = 0
    last_error: str | None = None
    url: str | None = "http://127.0.0.1:9000"
    model_name: str = "iris"

    @property
    def ready(self) -> bool:
        return self.phase == "Ready"


@dataclass(frozen=True)
class Router:
    phase: str = "Ready"
    endpoint_url: str | None = "http://127.0.0.1:8000"
    restarts: int = 0
    last_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.phase == "Ready"


def view_of(*servers: Server) -> BackendView:
    view = BackendView()
    note_servers(view, servers)
    return view


def test_a_server_fails_its_version_only_after_the_restart_limit():
    assert server_failure(Server("2", "CrashLoopBackOff", CANDIDATE_RESTART_LIMIT - 1, "boom")) is None
    assert server_failure(Server("2", "CrashLoopBackOff", CANDIDATE_RESTART_LIMIT, None)) is None  # no error known
    assert server_failure(Server("2", "Ready", 5, "boom")) is None
    assert server_failure(Server("2", "CrashLoopBackOff", CANDIDATE_RESTART_LIMIT, "boom")) == \
        f"its model server failed {CANDIDATE_RESTART_LIMIT + 1} times; last error: boom"


def test_servers_give_readiness_restarts_and_failures_per_version():
    view = view_of(Server("1", restarts=1, last_error="oom"), Server("2", "CrashLoopBackOff", 3, "bad model"))
    assert view.ready_versions == {"1"} and view.ready(V1) and not view.ready(V2) and not view.ready(None)
    assert view.restarts == {"1": (1, "oom"), "2": (3, "bad model")}
    assert view.failure(V2) == "its model server failed 4 times; last error: bad model"
    assert view.failure(V1) is None and view.failure(None) is None


def test_routes_move_an_unready_candidates_weight_to_stable():
    servers = {"1": Server("1", url="http://127.0.0.1:9001"), "2": Server("2", "Starting", url="http://127.0.0.1:9002")}
    served, routes = local_routes(CANARY_PLAN, view_of(*servers.values()), servers)
    assert [(p.name, p.weight) for p in served] == [("stable", 100), ("canary", 0)]
    assert routes == [
        {"name": "stable", "version": "1", "weight": 100, "shadow": False, "mirrorPercent": 100,
         "url": "http://127.0.0.1:9001", "modelName": "iris"},
        {"name": "canary", "version": "2", "weight": 0, "shadow": False, "mirrorPercent": 100,
         "url": "http://127.0.0.1:9002", "modelName": "iris"}]
    assert routes_serve_stable(routes)


def test_routes_leave_out_an_unready_shadow_and_servers_without_a_url():
    servers = {"1": Server("1"), "2": Server("2", "Starting")}
    served, routes = local_routes(SHADOW_PLAN, view_of(*servers.values()), servers)
    assert [p.name for p in served] == ["stable"] and [r["name"] for r in routes] == ["stable"]
    no_url = {"1": Server("1", "Starting", url=None)}
    served, routes = local_routes(SHADOW_PLAN[:1], view_of(*no_url.values()), no_url)
    assert served == [] and routes == [] and not routes_serve_stable(routes)


def test_router_problems():
    assert router_problem(Router()) is None
    assert router_problem(Router("Starting")) == ("Starting", "the router is starting")
    assert router_problem(Router("CrashLoopBackOff", restarts=2, last_error="exit 1")) == (
        "RouterRestarting", "the router exited (exit 1); restarting it with backoff (2 restarts so far)")


def test_local_serving_is_ready_when_stable_server_router_and_endpoint_are():
    servers = {"1": Server("1"), "2": Server("2")}
    view = view_of(*servers.values())
    served, _ = local_routes(CANARY_PLAN, view, servers)
    serving = local_serving(CANARY_PLAN, view, servers, served, "http://127.0.0.1:8000/v2/models/iris", None)
    assert serving.stable_ready and serving.ready_replicas == 1 and serving.problem is None and not serving.degrades
    assert serving.endpoint == "http://127.0.0.1:8000/v2/models/iris"
    assert [(p.name, p.weight) for p in serving.served] == [("stable", 75), ("canary", 25)]
    starting = local_serving(CANARY_PLAN, view, servers, served, None, ("Starting", "the router is starting"))
    assert not starting.stable_ready and starting.ready_replicas == 0
    assert starting.problem == ("Starting", "the router is starting") and not starting.degrades
    restarting = local_serving(CANARY_PLAN, view, servers, served, "http://x", ("RouterRestarting", "exited"))
    assert not restarting.stable_ready and restarting.degrades


def test_a_missing_stable_model_and_a_crash_looping_stable_server_degrade():
    view = BackendView(failures={"1": "model 1 not found at file:///models/iris/1"})
    serving = local_serving(CANARY_PLAN[:1], view, {}, [], None, None)
    assert serving.problem == (MODEL_UNAVAILABLE, "model 1 not found at file:///models/iris/1") and serving.degrades
    for restarts, reason in ((1, "ServerRestarting"), (CANDIDATE_RESTART_LIMIT, "ServerCrashLoop")):
        servers = {"1": Server("1", "CrashLoopBackOff", restarts, "exit 3")}
        serving = local_serving(CANARY_PLAN[:1], view_of(*servers.values()), servers, [], None, None)
        assert serving.problem == (reason, f"the model server of version 1 exited (exit 3); restarting it with "
                                           f"backoff ({restarts} restarts so far)"), restarts
        assert serving.degrades and not serving.stable_ready


def observed(state, ready, description="", endpoint="http://iris.ml/v2/models/iris", available=None):
    return SeldonObservation(state, description, ready, available or {}, endpoint)


def test_seldon_versions_are_ready_when_all_their_predictors_are():
    view = seldon_view(CANARY_PLAN, observed("Available", {"stable": True, "canary": False}), "iris", None,
                       rollout_in_flight=True, replicas=2)
    assert view.ready_versions == {"1"} and view.failures == {}
    assert view.serving.stable_ready and view.serving.ready_replicas == 2 and view.serving.problem is None
    assert view.serving.served == CANARY_PLAN and view.serving.endpoint == "http://iris.ml/v2/models/iris"


def test_a_failed_seldon_deployment_fails_the_candidate_during_a_rollout_only():
    failed = observed("Failed", {"stable": False, "canary": False}, "Deployment is no longer progressing")
    message = ("SeldonDeployment iris failed: Deployment is no longer progressing (predictor canary, Pod x, "
               "container iris: CrashLoopBackOff)")
    view = seldon_view(CANARY_PLAN, failed, "iris", "predictor canary, Pod x, container iris: CrashLoopBackOff",
                       rollout_in_flight=True, replicas=None)
    assert view.failures == {"2": message}
    assert view.serving.problem == ("SeldonDeploymentFailed", message) and view.serving.degrades
    steady = seldon_view(CANARY_PLAN[:1], observed("Failed", {"stable": False}), "iris", None,
                         rollout_in_flight=False, replicas=None)
    assert steady.failures == {} and steady.serving.problem == (
        "SeldonDeploymentFailed", "SeldonDeployment iris failed: no reason given")


def test_seldons_own_reconcile_error_is_retried_not_the_candidates_failure():
    """Seldon Core writes state Failed with the error's text when its own reconciliation fails and retries it
    (seldon-core v1.17.1 updateStatusForError): a rollout goes on, as the Deployments say, until the error
    has lasted the progress deadline."""
    error = 'Service "iris-canary-iris" not found'
    erring = SeldonObservation("Failed", error, {"stable": True, "canary": True}, {"stable": 1, "canary": 1},
                               "http://iris.ml/v2/models/iris", reconcile_error=error)
    view = seldon_view(CANARY_PLAN, erring, "iris", None, rollout_in_flight=True, replicas=None,
                       reconcile_error_seconds=20, progress_deadline_seconds=300)
    assert view.failures == {} and view.ready_versions == {"1", "2"}
    assert view.serving.problem == ("SeldonReconcileError", "Seldon Core's reconciliation of SeldonDeployment iris "
                                    f"failed (it retries): {error}")
    assert not view.serving.degrades and view.serving.stable_ready
    lasting = seldon_view(CANARY_PLAN, erring, "iris", None, rollout_in_flight=True, replicas=None,
                          reconcile_error_seconds=301, progress_deadline_seconds=300)
    message = f"SeldonDeployment iris failed: {error} (Seldon Core's reconciliation has failed for 301s)"
    assert lasting.failures == {"2": message} and lasting.serving.problem == ("SeldonDeploymentFailed", message)
    assert lasting.serving.degrades


def test_a_seldon_deployment_being_created_delays_without_degrading():
    view = seldon_view(CANARY_PLAN[:1], observed(None, {"stable": False}), "iris", None, rollout_in_flight=False,
                       replicas=None)
    assert view.serving.problem == ("Creating", "SeldonDeployment iris is waiting for Seldon Core to report its state")
    assert not view.serving.degrades and not view.serving.stable_ready and view.serving.ready_replicas == 0
    view = seldon_view(CANARY_PLAN[:1], observed("Creating", {"stable": False}), "iris", "Pod y: ErrImagePull",
                       rollout_in_flight=False, replicas=None)
    assert view.serving.problem == ("Creating", "SeldonDeployment iris is Creating (Pod y: ErrImagePull)")


def test_the_pods_are_read_only_when_something_is_not_available():
    assert not seldon_needs_pod_reason(observed("Available", {"stable": True, "canary": True}), CANARY_PLAN)
    assert seldon_needs_pod_reason(observed("Available", {"stable": True, "canary": False}), CANARY_PLAN)
    assert seldon_needs_pod_reason(observed("Creating", {"stable": True}), CANARY_PLAN[:1])
    assert not seldon_needs_pod_reason(observed(None, {"stable": False}), CANARY_PLAN[:1])  # Seldon said nothing yet
