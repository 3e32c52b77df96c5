"""What a serving backend's state means for a ModelDeployment, pure: per-version readiness and
failures, the routes it can serve, and the serving summary (:class:`BackendView`).

The backends (``backends/serving_local``, ``backends/serving_seldon``) do the I/O and hand what
they read to these functions: model servers and the router (local), the SeldonDeployment's status
and its Pods' failure reason (seldon).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.reconcile.modeldeployment import (
    MODEL_UNAVAILABLE,
    STABLE,
    ModelRef,
    PredictorPlan,
    ServingObservation,
    effective_predictors,
)
from mlops_operator.reconcile.seldondeployment import (
    AVAILABLE,
    FAILED,
    SeldonObservation,
    routing_endpoint,
    served_weights,
    stable_ready_replicas,
)

# A candidate whose model server failed to start this many times in a row cannot be served.
CANDIDATE_RESTART_LIMIT = 2
# The phase a supervised local process reports while it waits to be restarted (backends.serving_local.Phase).
BACKOFF = "CrashLoopBackOff"


@dataclass(frozen=True)
class ServedDeployment:
    """The ModelDeployment a serving backend serves."""

    namespace: str
    name: str
    uid: str
    model_name: str
    """The name clients call the model by (spec.model.name, default the deployment's name)."""
    spec: ModelDeploymentSpec


@dataclass
class BackendView:
    """A serving backend after applying a plan: per-version readiness and failures, and the serving summary."""

    ready_versions: set[str] = field(default_factory=set)
    failures: dict[str, str] = field(default_factory=dict)
    serving: ServingObservation = field(default_factory=ServingObservation)
    restarts: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    """version -> (restarts of its model server, its last error), where known (backend local)."""

    def ready(self, model: ModelRef | None) -> bool:
        return model is not None and model.version in self.ready_versions

    def failure(self, model: ModelRef | None) -> str | None:
        return self.failures.get(model.version) if model is not None else None


# ---------------------------------------------------------------- backend local


class Supervised(Protocol):
    """A process the local backend supervises, as it reports it."""

    @property
    def phase(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def ready(self) -> bool: ...


class ModelServer(Supervised, Protocol):
    """A local model server (``serving_local.PredictorState``)."""

    @property
    def version(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def url(self) -> str | None: ...


class Router(Supervised, Protocol):
    """A deployment's local router (``serving_local.RouterState``)."""

    @property
    def endpoint_url(self) -> str | None: ...


def server_failure(server: ModelServer) -> str | None:
    """Why a model server cannot serve its version (it failed CANDIDATE_RESTART_LIMIT times in a row), or None."""
    if server.ready or server.restarts < CANDIDATE_RESTART_LIMIT or not server.last_error:
        return None
    return f"its model server failed {server.restarts + 1} times; last error: {server.last_error}"


def note_servers(view: BackendView, servers: Iterable[ModelServer]) -> None:
    """Record each version's readiness, restarts and failure in ``view``."""
    for server in servers:
        view.restarts[server.version] = (server.restarts, server.last_error)
        if server.ready:
            view.ready_versions.add(server.version)
        elif failure := server_failure(server):
            view.failures[server.version] = failure


def local_routes(plan: Sequence[PredictorPlan], view: BackendView, servers: Mapping[str, ModelServer]
                 ) -> tuple[list[PredictorPlan], list[dict[str, Any]]]:
    """The predictors the router can serve now (weights after readiness) and its routes: only
    versions whose model server has a URL. ``servers`` maps versions to their model server."""
    served = effective_predictors(plan, view.ready)
    routes = [{"name": p.name, "version": p.model.version, "weight": p.weight, "shadow": p.shadow,
               "mirrorPercent": p.mirror_percent, "url": servers[p.model.version].url,
               "modelName": servers[p.model.version].model_name}
              for p in served if p.model.version in servers and servers[p.model.version].url]
    served = [p for p in served if any(r["name"] == p.name for r in routes)]
    return served, routes


def routes_serve_stable(routes: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the router is worth starting: it has a route to the stable version."""
    return any(r["name"] == STABLE for r in routes)


def router_problem(router: Router) -> tuple[str, str] | None:
    """(reason, message) when the router does not serve yet (starting) or exited (restarting)."""
    if router.phase == BACKOFF:
        return ("RouterRestarting", f"the router exited ({router.last_error}); restarting it with "
                                    f"backoff ({router.restarts} restarts so far)")
    if not router.ready:
        return ("Starting", "the router is starting")
    return None


def local_serving(plan: Sequence[PredictorPlan], view: BackendView, servers: Mapping[str, ModelServer],
                  served: Sequence[PredictorPlan], endpoint: str | None, router_trouble: tuple[str, str] | None
                  ) -> ServingObservation:
    """The serving summary of the local backend: the stable version is ready when its model server
    and the router are; a missing model or a crash-looping stable server (or router) degrades."""
    stable = next((p for p in plan if p.name == STABLE), None)
    stable_server = servers.get(stable.model.version) if stable else None
    problem, degrades = router_trouble, router_trouble is not None and router_trouble[0] != "Starting"
    if stable and stable.model.version in view.failures and stable_server is None:
        problem, degrades = (MODEL_UNAVAILABLE, view.failures[stable.model.version]), True
    elif stable_server and stable_server.phase == BACKOFF:
        # The supervisor restarts it with a growing delay; the condition says how often and why.
        reason = "ServerCrashLoop" if stable_server.restarts >= CANDIDATE_RESTART_LIMIT else "ServerRestarting"
        problem, degrades = (reason, f"the model server of version {stable_server.version} exited "
                                     f"({stable_server.last_error}); restarting it with backoff "
                                     f"({stable_server.restarts} restarts so far)"), True
    stable_ready = bool(stable and view.ready(stable.model) and router_trouble is None and endpoint)
    return ServingObservation(served=list(served), stable_ready=stable_ready, endpoint=endpoint,
                              ready_replicas=1 if stable_ready else 0, problem=problem, degrades=degrades)


# ---------------------------------------------------------------- backend seldon


def seldon_needs_pod_reason(observed: SeldonObservation, plan: Sequence[PredictorPlan]) -> bool:
    """Whether the Pods are worth reading for a reason: the SeldonDeployment is not (all) available. Not
    before Seldon's controller reports a state: it has made no Pods yet."""
    if not observed.state:
        return False
    return observed.state != AVAILABLE or not all(observed.ready.get(p.name) for p in plan)


def seldon_view(plan: Sequence[PredictorPlan], observed: SeldonObservation, sdep_name: str, pod_reason: str | None,
                *, rollout_in_flight: bool, replicas: int | None,
                routed_by: tuple[str, str, str] | None = None, reconcile_error_seconds: float = 0.0,
                progress_deadline_seconds: float = float("inf")) -> BackendView:
    """A SeldonDeployment serving ``plan`` (not empty), as its status and its Pods say.

    A version is ready when all its predictors are; a Failed SeldonDeployment during a rollout is
    the candidate's failure (what changed is the candidate) and degrades the deployment. Seldon Core's
    own reconciliation error (``observed.reconcile_error``, which it retries) is a problem that neither
    degrades nor fails anything until it has lasted ``progress_deadline_seconds``
    (``reconcile_error_seconds`` so far): then it counts as the SeldonDeployment's failure.
    ``routed_by`` (deployment, namespace, model name) when the operator's routing Service routes
    (no mesh): the endpoint is that Service's, and the served weights are the shares of the available
    replicas, which is what kube-proxy does.
    """
    view = BackendView()
    for version in {p.model.version for p in plan}:
        if all(observed.ready.get(p.name) for p in plan if p.model.version == version):
            view.ready_versions.add(version)
    problem, degrades = None, False
    candidate = next((p for p in plan if p.name != STABLE), None)
    lasting = observed.reconcile_error is not None and reconcile_error_seconds >= progress_deadline_seconds
    if observed.reconcile_error is not None and not lasting:
        problem = ("SeldonReconcileError", f"Seldon Core's reconciliation of SeldonDeployment {sdep_name} failed "
                                           f"(it retries): {observed.reconcile_error}")
    elif observed.state == FAILED:
        message = f"SeldonDeployment {sdep_name} failed: {observed.description or 'no reason given'}"
        if lasting:
            message += f" (Seldon Core's reconciliation has failed for {reconcile_error_seconds:.0f}s)"
        if pod_reason:
            message += f" ({pod_reason})"
        if rollout_in_flight and candidate:
            view.failures[candidate.model.version] = message
        problem, degrades = ("SeldonDeploymentFailed", message), True
    elif observed.state != AVAILABLE:
        problem = ("Creating", f"SeldonDeployment {sdep_name} is "
                               f"{observed.state or 'waiting for Seldon Core to report its state'}"
                               + (f" ({pod_reason})" if pod_reason else ""))
    stable = next(p for p in plan if p.name == STABLE)
    served, endpoint = list(plan), observed.endpoint
    if routed_by is not None:
        served = served_weights(plan, observed.available_replicas)
        endpoint = routing_endpoint(*routed_by) if view.ready(stable.model) else None
    view.serving = ServingObservation(
        served=served, stable_ready=view.ready(stable.model), endpoint=endpoint,
        ready_replicas=stable_ready_replicas(observed, replicas), problem=problem, degrades=degrades)
    return view
