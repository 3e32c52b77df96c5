"""Serving backends behind one interface, :class:`ServingBackend`, chosen once per ModelDeployment by
its ``spec.backend`` (:func:`serving_backend`).

- ``local``: MLServer processes and a router per deployment on this machine (``serving_local``).
- ``seldon``: a SeldonDeployment the ModelDeployment owns (``serving_seldon``).

A new backend implements the protocol and is added to :func:`backends` (and to the spec's
``backend`` values); the ModelDeployment handler does not change. What a backend needs at operator
start-up and shutdown (local: adopt the model servers a previous process left; seldon: its request
logger's sink) is its own ``start``/``stop``, called for every backend by :func:`start_backends` and
:func:`stop_backends`; where its PromQL comes from, its own ``prometheus_queries``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from mlops_operator.backends import kube, prometheus, seldon_logger_sink, telemetry
from mlops_operator.backends.serving_local import LocalServingManager
from mlops_operator.backends.serving_local.backend import LocalServing
from mlops_operator.backends.serving_seldon import SeldonServing
from mlops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from mlops_operator.reconcile.modeldeployment import PredictorPlan, RequestStats
from mlops_operator.reconcile.serving import BackendView, ServedDeployment
from mlops_operator.settings import Settings

log = logging.getLogger("mlops_operator.deployment")


class ServingBackend(Protocol):
    """What serves a ModelDeployment's predictors."""

    name: str
    """The ``spec.backend`` value it serves."""
    own_request_metrics: bool
    """Whether it has request statistics of its own (without Prometheus) to judge a candidate by."""
    reports_changes: bool
    """Whether what it runs reports its changes as watch events (a SeldonDeployment's status), so an idle
    deployment needs no polling; the local backend's processes are polled."""
    cleanup_on_delete: bool
    """Whether a deleted deployment leaves something its owner references do not remove (the local
    backend's processes): then its deletion waits for :meth:`forget` (a finalizer)."""

    def spec_problems(self, spec: ModelDeploymentSpec) -> list[str]:
        """What this backend cannot do for ``spec`` (InvalidSpec messages, before any work starts)."""
        ...

    async def apply(self, target: ServedDeployment, plan: Sequence[PredictorPlan], rollout_in_flight: bool
                    ) -> BackendView:
        """Serve ``plan`` (stable first; empty: nothing to serve yet) and report what serves.

        Raises BackendUnavailable when the backend cannot be reached (retried with backoff) and
        InvalidSpec when it refuses what the spec asks for."""
        ...

    async def request_stats(self, target: ServedDeployment, predictor: str, since: datetime
                            ) -> tuple[RequestStats | None, bool]:
        """The predictor's request statistics since ``since`` from the backend's own source, when no
        Prometheus is configured, and whether they could be read ((None, True): no source)."""
        ...

    async def observe_telemetry(self, target: ServedDeployment, watch: telemetry.Watch, *, interval: float,
                                traffic: Sequence[Mapping[str, Any]], prometheus_url: str | None, now: datetime
                                ) -> telemetry.Observed:
        """Read the serving telemetry into ``watch`` when ``interval`` has passed, and judge it."""
        ...

    def prometheus_queries(self, namespace: str, deployment: str, predictor: str, window_seconds: float
                           ) -> dict[str, str]:
        """PromQL for a predictor's requests (without client errors), errors and p99 latency over the last
        ``window_seconds`` (keys requests, errors, p99, p99_unit), from the metrics its data plane exports."""
        ...

    def status_fields(self, name: str) -> dict[str, Any]:
        """Status fields only this backend records, by ModelDeploymentStatus attribute name (cleared when
        another backend serves)."""
        ...

    async def release(self, namespace: str, name: str, status: ModelDeploymentStatus) -> None:
        """Stop what this backend runs for the deployment: another backend serves it now."""
        ...

    async def forget(self, namespace: str, name: str) -> None:
        """The deployment is deleted: stop what its owner reference does not remove."""
        ...

    async def start(self, existing: Collection[tuple[str, str]] | None) -> None:
        """Operator start-up; ``existing``: the ModelDeployments there are, as (namespace, name), or
        None when they could not be listed."""
        ...

    async def stop(self) -> None:
        """Operator shutdown."""
        ...


_backends: dict[str, ServingBackend] | None = None


def backends(settings: Settings) -> dict[str, ServingBackend]:
    """This operator process's serving backends by name, made on first use with ``settings`` (one of
    each: the local one supervises this process's model servers)."""
    global _backends
    if _backends is None:
        # The router writes the inference log where the DriftMonitor reads it, local or s3://.
        manager = LocalServingManager(settings.data_dir, settings.inference_log_root_uri, ready_timeout=15)
        sink = seldon_logger_sink.OperatorSink(settings.inference_log_root_uri)
        _backends = {"local": LocalServing(manager, settings.data_dir / "model-cache", settings.namespaces),
                     "seldon": SeldonServing(sink, settings.seldon_routing, settings.seldon_split_max_replicas)}
    return _backends


def serving_backend(backend: str, settings: Settings) -> ServingBackend:
    """The backend that serves ``spec.backend``."""
    return backends(settings)[backend]


async def candidate_stats(backend: ServingBackend, target: ServedDeployment, prometheus_url: str | None,
                          predictor: str, since: datetime, now: datetime) -> tuple[RequestStats | None, bool]:
    """The candidate's request statistics since ``since`` and whether they could be read: from
    Prometheus when there is one, else from the backend's own source.

    (None, True) means there is no metrics source (backend seldon without Prometheus).
    """
    if prometheus_url:
        queries = backend.prometheus_queries(target.namespace, target.name, predictor, (now - since).total_seconds())
        try:
            return await prometheus.candidate_stats(prometheus_url, queries), True
        except prometheus.PrometheusUnavailable as error:
            log.warning("%s/%s: analysis postponed: %s", target.namespace, target.name, error)
            return None, False
    return await backend.request_stats(target, predictor, since)


def status_fields(backend: ServingBackend, name: str, settings: Settings) -> dict[str, Any]:
    """The backend-specific status fields: the chosen backend's, the others' cleared (None)."""
    fields: dict[str, Any] = {}
    for other in backends(settings).values():
        fields.update(dict.fromkeys(other.status_fields(name)))
    fields.update(backend.status_fields(name))
    return fields


async def release_others(backend: ServingBackend, namespace: str, name: str, status: ModelDeploymentStatus,
                         settings: Settings) -> None:
    """After a change of spec.backend, stop what the other backends still run for the deployment."""
    for other in backends(settings).values():
        if other.name != backend.name:
            await other.release(namespace, name, status)


async def forget(namespace: str, name: str, settings: Settings) -> None:
    """A deleted deployment: every backend stops what its owner reference does not remove."""
    for backend in backends(settings).values():
        await backend.forget(namespace, name)


async def start_backends(plural: str, settings: Settings) -> None:
    """At operator start-up: every backend's own start (local: re-attach to the model servers and
    routers a previous operator process left running, restart dead ones, stop those whose
    ModelDeployment no longer exists; seldon: the request-logger sink with mode always)."""
    try:
        existing = await asyncio.to_thread(kube.list_object_keys, plural, settings.namespaces)
    except Exception as error:
        log.warning("cannot list ModelDeployments at start-up: %s", error)
        existing = None
    for backend in backends(settings).values():
        await backend.start(existing)


async def stop_backends(settings: Settings) -> None:
    """At operator shutdown: every backend's own stop (seldon: flush and stop the request-logger sink)."""
    for backend in backends(settings).values():
        await backend.stop()
