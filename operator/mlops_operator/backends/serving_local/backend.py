"""Backend local as the ModelDeployment handler sees it (``backends.serving``): one MLServer
process per model version behind a router per deployment, supervised by this operator process.

The I/O is here (model download, processes, router); what it means (readiness, failures, routes,
the serving summary) is decided in ``reconcile.serving``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from mlops_operator.backends import model_source, telemetry
from mlops_operator.reconcile.modeldeployment import PredictorPlan, RequestStats, router_queries
from mlops_operator.reconcile.serving import (
    BackendView,
    ServedDeployment,
    local_routes,
    local_serving,
    note_servers,
    router_problem,
    routes_serve_stable,
)

from . import ROUTER_ERRORS
from .manager import LocalServingManager
from .mlserver import PredictorState

PREDICTOR = "model"  # local model servers are keyed by version; routes name the role

log = logging.getLogger("mlops_operator.deployment")


class LocalServing:
    """Backend local: model servers and the router of each deployment, run by ``manager``."""

    name = "local"
    own_request_metrics = True  # the router's statistics
    reports_changes = False  # processes: their health is polled
    cleanup_on_delete = True  # processes on this machine: stopped before the object goes

    def __init__(self, manager: LocalServingManager, model_cache: Path, namespaces: Collection[str] = ()) -> None:
        self.manager = manager
        self.model_cache = model_cache
        self.namespaces = namespaces
        """The namespaces this operator watches (empty: all): only their servers can be orphans."""

    def spec_problems(self, spec: ModelDeploymentSpec) -> list[str]:
        """None: the local backend serves every rollout strategy."""
        return []

    async def apply(self, target: ServedDeployment, plan: Sequence[PredictorPlan], rollout_in_flight: bool
                    ) -> BackendView:
        """Serve ``plan``: one MLServer per version, the router's routes, stale servers stopped."""
        namespace, name = target.namespace, target.name
        view = BackendView()
        servers: dict[str, PredictorState] = {}
        for version, uri in dict.fromkeys((p.model.version, p.model.uri) for p in plan):
            try:
                model_dir = await asyncio.to_thread(model_source.local_model_dir, uri, self.model_cache)
            except model_source.ModelUnavailable as error:
                view.failures[version] = str(error)
                continue
            servers[version] = await self.manager.ensure_predictor(namespace, name, PREDICTOR, model_dir, version,
                                                                   wait=0)
        note_servers(view, servers.values())

        served, routes = local_routes(plan, view, servers)
        endpoint, router_trouble = None, None
        if routes and routes_serve_stable(routes):
            router = await self.manager.ensure_router(namespace, name, target.model_name, routes, wait=10)
            if router.endpoint_url:
                endpoint = f"{router.endpoint_url}/v2/models/{target.model_name}"
            router_trouble = router_problem(router)
        wanted = {p.model.version for p in plan}
        for process in self.manager.predictors(namespace, name):
            version = process.desired_spec.get("version")
            if version not in wanted:
                await self.manager.stop_predictor(namespace, name, PREDICTOR, version)
        view.serving = local_serving(plan, view, servers, served, endpoint, router_trouble)
        return view

    async def request_stats(self, target: ServedDeployment, predictor: str, since: datetime
                            ) -> tuple[RequestStats | None, bool]:
        """The predictor's requests since ``since`` from the router's statistics; (None, False) when the
        router does not answer (the analysis is postponed)."""
        try:
            stats = await self.manager.router_stats(target.namespace, target.name, since)
        except ROUTER_ERRORS as error:
            log.warning("%s/%s: analysis postponed, the router does not answer: %s", target.namespace, target.name,
                        error)
            return None, False
        window = stats.predictors.get(predictor)
        if window is None:
            return RequestStats(0, 0, None, None, "router"), True
        # Client errors (malformed requests) are nobody's verdict on the candidate.
        judged = window.requests - window.client_errors
        return RequestStats(judged, window.errors, window.error_rate if judged else None, window.p99_ms, "router"), True

    async def observe_telemetry(self, target: ServedDeployment, watch: telemetry.Watch, *, interval: float,
                                traffic: Sequence[Mapping[str, Any]], prometheus_url: str | None, now: datetime
                                ) -> telemetry.Observed:
        """A telemetry point from Prometheus or else the router, and the model servers' CPU and memory."""
        return await telemetry.observe(watch, interval=interval, traffic=traffic, namespace=target.namespace,
                                       name=target.name, queries=self.prometheus_queries, manager=self.manager,
                                       prometheus_url=prometheus_url, now=now.timestamp())

    def prometheus_queries(self, namespace: str, deployment: str, predictor: str, window_seconds: float
                           ) -> dict[str, str]:
        """The router's metrics."""
        return router_queries(namespace, deployment, predictor, window_seconds)

    def status_fields(self, name: str) -> dict[str, Any]:
        """None: the local backend records nothing beyond the common fields."""
        return {}

    async def release(self, namespace: str, name: str, status: ModelDeploymentStatus) -> None:
        """Stop the deployment's model servers and router (another backend serves it now)."""
        await self.forget(namespace, name)

    async def forget(self, namespace: str, name: str) -> None:
        """Stop the deployment's model servers and router, if it has any."""
        if self.manager.deployment_dir(namespace, name).exists():
            await self.manager.stop_deployment(namespace, name)

    async def start(self, existing: Collection[tuple[str, str]] | None) -> None:
        """Re-attach to the model servers and routers a previous operator process left running,
        restart dead ones, and stop those whose ModelDeployment (``existing``) no longer exists."""
        if existing is None:  # without the list nothing can be called an orphan
            log.warning("not adopting local model servers: the ModelDeployments could not be listed")
            return
        found = await self.manager.adopt_all(existing)
        orphans = {(p.namespace, p.deployment) for p in found if p.orphan
                   and (not self.namespaces or p.namespace in self.namespaces)}
        for namespace, deployment in sorted(orphans):
            log.info("stopping the local servers of %s/%s: its ModelDeployment is gone", namespace, deployment)
            await self.manager.stop_deployment(namespace, deployment)
        adopted = [p for p in found if not p.orphan]
        if adopted:
            log.info("adopted %d local server process(es): %s", len(adopted),
                     ", ".join(f"{p.namespace}/{p.deployment}/{p.name}@{p.version or '-'} ({p.phase.value})"
                               for p in adopted))

    async def stop(self) -> None:
        """Nothing: the model servers and routers outlive the operator process (the next one adopts them)."""
