"""Backend seldon: create or patch the SeldonDeployment a ModelDeployment owns, and read it back.

The object is written only when its spec changed (a digest in the annotation
``mlops.dev/spec-hash``), so Seldon's mutating webhook defaulting fields does not make us write
on every reconciliation. It is read from the operator's watch of SeldonDeployments (the handler feeds
:func:`watched`), not fetched per reconciliation: one it has not shown yet is created, and read only
when it exists already. Deletion is left to Kubernetes' garbage collector (ownerReference).

:class:`SeldonServing` is the backend as the ModelDeployment handler sees it (``backends.serving``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlops_operator.api.annotations import SPEC_HASH_ANNOTATION
from mlops_operator.api.errors import BackendUnavailable, InvalidSpec
from mlops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from mlops_operator.backends import kube
from mlops_operator.backends import telemetry
from mlops_operator.reconcile.modeldeployment import PredictorPlan, RequestStats
from mlops_operator.reconcile.seldondeployment import (
    SELDON_GROUP,
    SELDON_PLURAL,
    SELDON_VERSION,
    Routing,
    build_routing_service,
    build_seldon_deployment,
    executor_queries,
    observe_seldon_deployment,
    pod_failure_reason,
    predictor_replicas,
    routing_problems,
    routing_service_name,
    seldon_deployment_name,
)
from mlops_operator.reconcile.serving import BackendView, ServedDeployment, seldon_needs_pod_reason, seldon_view


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def _crd_missing(namespace: str) -> bool:
    """A 404 for a named object also comes when the resource type is unknown: list to tell them apart."""
    try:
        _custom().list_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL, limit=1)
    except ApiException as error:
        return error.status == 404
    return False


def _unavailable() -> BackendUnavailable:
    return BackendUnavailable(f"the API server does not serve {SELDON_PLURAL}.{SELDON_GROUP}/{SELDON_VERSION}: "
                              "is Seldon Core (its CRD) installed?")


def _rejection(error: ApiException) -> InvalidSpec:
    """The API server refused our SeldonDeployment (its schema or a webhook said no): the spec's to fix."""
    try:
        message = json.loads(error.body or "{}").get("message") or error.reason
    except ValueError:
        message = error.reason
    return InvalidSpec(f"the API server refused the SeldonDeployment ({error.status}): {message}")


def _get(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _custom().get_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL, name)
    except ApiException as error:
        if error.status != 404:
            raise
        if _crd_missing(namespace):
            raise _unavailable() from None
        return None


# The SeldonDeployments of ModelDeployments as the operator's watch last showed them, by (namespace, name).
_watched: dict[tuple[str, str], dict[str, Any]] = {}
# What the operator's own last write (create or patch) of each returned, by (namespace, name).
_written: dict[tuple[str, str], dict[str, Any]] = {}
# Both hold only what a reconciliation reads of a SeldonDeployment (_kept): one per ModelDeployment is
# held for as long as it exists, and a whole one (its spec's containers, managed fields) is several
# times larger.


def _kept(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads of a SeldonDeployment: its name, revision and spec hash, its predictors'
    names, and Seldon's status."""
    meta = obj.get("metadata") or {}
    spec_hash = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    kept_meta = {key: meta[key] for key in ("name", "namespace", "resourceVersion") if key in meta}
    kept_meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash} if spec_hash is not None else {}
    predictors = (obj.get("spec") or {}).get("predictors") or []
    kept: dict[str, Any] = {"metadata": kept_meta, "spec": {"predictors": [{"name": p.get("name")} for p in predictors]}}
    if "status" in obj:
        kept["status"] = obj["status"]  # shared: read only, and a watch event's body is not changed afterwards
    return kept


def watched(event_type: str | None, body: Mapping[str, Any]) -> None:
    """A watch event (or the start-up listing, ``event_type`` None) of a ModelDeployment's SeldonDeployment."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event_type == "DELETED":
        _watched.pop(key, None)
        _written.pop(key, None)
    else:
        _watched[key] = _kept(body)


def _revision(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def newest_copy(watched_copy: dict[str, Any] | None, written: dict[str, Any] | None) -> dict[str, Any] | None:
    """The newer of the watch's copy of a SeldonDeployment and what the operator's own last write of it
    returned. The watch may not have delivered that write yet: its copy is then older, and its spec hash
    may match a desired spec that the write has since replaced. Kubernetes resourceVersions are etcd
    revisions here (integers, increasing); when one cannot be compared, the watch's copy is trusted only
    if it is exactly the written version."""
    if watched_copy is None or written is None:
        return watched_copy or written
    seen, wrote = _revision(watched_copy), _revision(written)
    if seen is not None and wrote is not None:
        return watched_copy if seen >= wrote else written
    same = watched_copy["metadata"].get("resourceVersion") == written["metadata"].get("resourceVersion")
    return watched_copy if same else written


def _create(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Create the SeldonDeployment; None when it exists already."""
    try:
        created = _custom().create_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION,
                                                            manifest["metadata"]["namespace"], SELDON_PLURAL, manifest)
    except ApiException as error:
        if error.status == 409:
            return None
        raise
    kept = _written[(manifest["metadata"]["namespace"], manifest["metadata"]["name"])] = _kept(created)
    return kept


def _apply(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        live = newest_copy(_watched.get((namespace, name)), _written.get((namespace, name)))
        if live is not None and live is _watched.get((namespace, name)):
            _written.pop((namespace, name), None)  # the watch has shown our last write (or newer)
        if live is None:  # not shown by the watch (yet): new, or created a moment ago
            created = _create(manifest)
            if created is not None:
                return created
            live = _get(namespace, name) or {"metadata": {}}
        live_hash = (live["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if live_hash == meta["annotations"][SPEC_HASH_ANNOTATION] and live.get("spec", {}).get("predictors"):
            return live
        # A merge patch replaces lists whole: spec.predictors becomes exactly ours.
        body = {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"],
                             "ownerReferences": meta["ownerReferences"]},
                "spec": manifest["spec"]}
        try:
            patched = _custom().patch_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION, namespace,
                                                               SELDON_PLURAL, name, body)
            kept = _written[(namespace, name)] = _kept(patched)
            return kept
        except ApiException as error:
            if error.status != 404:
                raise
        # Deleted since the watch showed it (or the CRD is gone: the create's 404 says so below).
        _watched.pop((namespace, name), None)
        _written.pop((namespace, name), None)
        return _create(manifest) or _get(namespace, name) or {"metadata": meta}
    except ApiException as error:
        if error.status == 404 and _crd_missing(namespace):
            raise _unavailable() from None
        if error.status in (400, 422):
            raise _rejection(error) from None
        raise


async def apply_seldon_deployment(manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the SeldonDeployment, or patch it when its spec changed; return the live object.

    Raises BackendUnavailable when Seldon's CRD is absent and InvalidSpec when the API server
    refuses the object.
    """
    return await asyncio.to_thread(_apply, manifest)


async def get_seldon_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    """The live SeldonDeployment, or None. Raises BackendUnavailable when the CRD is absent."""
    return await asyncio.to_thread(_get, namespace, name)


def _delete(namespace: str, name: str) -> None:
    try:
        _custom().delete_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL, name)
    except ApiException as error:
        if error.status != 404:
            raise


async def delete_seldon_deployment(namespace: str, name: str) -> None:
    """Delete the SeldonDeployment (gone already is fine)."""
    await asyncio.to_thread(_delete, namespace, name)


def _pods(namespace: str, sdep: str) -> list[dict[str, Any]]:
    """The SeldonDeployment's Pods (Seldon labels them ``seldon-deployment-id=<name>``), as plain dicts."""
    api = kube.api_client()
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"seldon-deployment-id={sdep}",
                                                     limit=50)
    return [api.sanitize_for_serialization(p) for p in pods.items]


async def list_seldon_pods(namespace: str, sdep: str) -> list[dict[str, Any]]:
    """The Pods Seldon created for ``sdep``; [] when they cannot be read (the reason is best effort)."""
    try:
        return await asyncio.to_thread(_pods, namespace, sdep)
    except ApiException:
        return []


# ---------------------------------------------------------------- routing without a mesh


# The routing Services this process created or found right: (namespace, name) -> the owner's uid. What
# one holds follows from its ModelDeployment's name and uid alone, so it is written or checked once.
_services_in_place: dict[tuple[str, str], str] = {}


def _apply_service(manifest: dict[str, Any]) -> None:
    meta = manifest["metadata"]
    key, owner = (meta["namespace"], meta["name"]), meta["ownerReferences"][0]["uid"]
    if _services_in_place.get(key) == owner:
        return
    api = kube.api_client()
    core = client.CoreV1Api(api)
    try:
        kube.discard_body(core.create_namespaced_service(meta["namespace"], manifest, _preload_content=False))
        _services_in_place[key] = owner
        return
    except ApiException as error:
        if error.status != 409:
            raise
    live = api.sanitize_for_serialization(core.read_namespaced_service(meta["name"], meta["namespace"]))
    owners = [o.get("uid") for o in live["metadata"].get("ownerReferences") or [] if o.get("controller")]
    if owners != [owner]:
        raise InvalidSpec(f"Service {meta['namespace']}/{meta['name']} exists and is not this ModelDeployment's: "
                          "without a mesh (MLOPS_SELDON_ROUTING=none) the requests are routed through a Service "
                          "named like the ModelDeployment; rename the ModelDeployment or that Service")
    wanted = manifest["spec"]
    if live["spec"].get("selector") == wanted["selector"] and [
            (p.get("name"), p.get("port"), p.get("targetPort")) for p in live["spec"].get("ports") or []] == [
            (p["name"], p["port"], p["targetPort"]) for p in wanted["ports"]]:
        _services_in_place[key] = owner
        return
    body = {"metadata": {"labels": meta["labels"]}, "spec": {"selector": wanted["selector"], "ports": wanted["ports"]}}
    core.patch_namespaced_service(meta["name"], meta["namespace"], body)
    _services_in_place[key] = owner


async def apply_routing_service(manifest: dict[str, Any]) -> None:
    """Create the Service that routes a ModelDeployment's requests without a mesh, or bring its selector
    and ports back; InvalidSpec when the name is taken by a Service the ModelDeployment does not own.
    Once per process and ModelDeployment: a Service changed or deleted by hand afterwards is put back at
    the operator's next start."""
    await asyncio.to_thread(_apply_service, manifest)


def _forget_service(namespace: str, name: str) -> None:
    _services_in_place.pop((namespace, name), None)


def _delete_service(namespace: str, name: str) -> None:
    _forget_service(namespace, name)
    core = client.CoreV1Api(kube.api_client())
    try:
        live = core.read_namespaced_service(name, namespace)
        if any(o.kind == "ModelDeployment" and o.name == name and o.controller
               for o in live.metadata.owner_references or []):
            core.delete_namespaced_service(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise


async def delete_routing_service(namespace: str, name: str) -> None:
    """Delete the routing Service of the ModelDeployment ``name`` when it is that ModelDeployment's
    (after a switch to a mesh or to backend local)."""
    await asyncio.to_thread(_delete_service, namespace, routing_service_name(name))


# ---------------------------------------------------------------- the serving backend

class RequestLogger(Protocol):
    """Where Seldon's executors send every request and response (the operator's sink, which writes the
    inference log)."""

    async def logger_urls(self, namespace: str, deployment: str, predictors: Sequence[PredictorPlan]
                          ) -> Mapping[str, str] | None:
        """Each predictor's request-logger URL, or None (no request logging)."""
        ...

    async def start(self) -> None:
        """Operator start-up."""
        ...

    async def stop(self) -> None:
        """Operator shutdown."""
        ...


class SeldonServing:
    """Backend seldon: a SeldonDeployment the ModelDeployment owns serves the plan's predictors."""

    name = "seldon"
    own_request_metrics = False  # Seldon's executors export to Prometheus only
    reports_changes = True  # Seldon writes its SeldonDeployment's status; the handler watches them
    cleanup_on_delete = False  # the SeldonDeployment and the routing Service are owned: the GC removes them

    def __init__(self, request_logger: RequestLogger | None = None, routing: Routing = "none",
                 max_replicas: int = 10) -> None:
        self.request_logger = request_logger
        self.routing = routing
        self.max_replicas = max_replicas
        # Since when (monotonic) Seldon Core's reconciliation of a deployment's SeldonDeployment has failed
        # without a break (SeldonObservation.reconcile_error), by (namespace, ModelDeployment).
        self._erring_since: dict[tuple[str, str], float] = {}

    def spec_problems(self, spec: ModelDeploymentSpec) -> list[str]:
        """What this cluster's routing (MLOPS_SELDON_ROUTING) cannot do for the spec."""
        return routing_problems(spec, self.routing)

    async def apply(self, target: ServedDeployment, plan: Sequence[PredictorPlan], rollout_in_flight: bool
                    ) -> BackendView:
        """Serve ``plan`` with the SeldonDeployment and read its status (and its Pods' trouble) back."""
        if not plan:
            return BackendView()
        logger = self.request_logger
        urls = await logger.logger_urls(target.namespace, target.name, plan) if logger else None
        # Without a mesh Seldon ignores traffic: the canary's weight becomes replica counts, and a Service
        # over every predictor's Pods lets kube-proxy split by them.
        replicas = predictor_replicas(target.spec, plan, self.routing, self.max_replicas)
        manifest = build_seldon_deployment(target.name, target.namespace, target.uid, target.spec, target.model_name,
                                           plan, urls, replicas)
        live = await apply_seldon_deployment(manifest)
        observed = observe_seldon_deployment(live, [p.name for p in plan])
        key = (target.namespace, target.name)
        if observed.reconcile_error is None:
            self._erring_since.pop(key, None)
            erring_for = 0.0
        else:
            erring_for = time.monotonic() - self._erring_since.setdefault(key, time.monotonic())
        if self.routing != "none":
            await delete_routing_service(target.namespace, target.name)
        elif (live or {}).get("status"):
            # The routing Service is written once Seldon has taken the SeldonDeployment on (its first
            # status, when it creates the Deployments), not with it: its Pods then take seconds to start,
            # ample for kube-proxy to program the Service before status.endpoint names it, and a
            # deployment Seldon never takes on holds no Service and no ClusterIP (while many are applied at
            # once, a new deployment costs 4 API requests, not 6).
            await apply_routing_service(build_routing_service(target.name, target.namespace, target.uid))
        sdep_name = manifest["metadata"]["name"]
        pod_reason = None
        if seldon_needs_pod_reason(observed, plan):
            pods = await list_seldon_pods(target.namespace, sdep_name)
            pod_reason = pod_failure_reason(pods, sdep_name, [p.name for p in plan])
        return seldon_view(plan, observed, sdep_name, pod_reason, rollout_in_flight=rollout_in_flight,
                           replicas=target.spec.replicas, reconcile_error_seconds=erring_for,
                           progress_deadline_seconds=target.spec.progress_deadline_seconds,
                           routed_by=(target.name, target.namespace, target.model_name)
                           if self.routing == "none" else None)

    async def request_stats(self, target: ServedDeployment, predictor: str, since: datetime
                            ) -> tuple[RequestStats | None, bool]:
        """No metrics source of its own (Seldon's executors export to Prometheus): (None, True)."""
        return None, True

    async def observe_telemetry(self, target: ServedDeployment, watch: telemetry.Watch, *, interval: float,
                                traffic: Sequence[Mapping[str, Any]], prometheus_url: str | None, now: datetime
                                ) -> telemetry.Observed:
        """A telemetry point from Prometheus (Seldon's executor metrics); nothing without one."""
        if not prometheus_url:
            return telemetry.Observed([], [], False)
        return await telemetry.observe(watch, interval=interval, traffic=traffic, namespace=target.namespace,
                                       name=target.name, queries=self.prometheus_queries,
                                       prometheus_url=prometheus_url, now=now.timestamp())

    def prometheus_queries(self, namespace: str, deployment: str, predictor: str, window_seconds: float
                           ) -> dict[str, str]:
        """Seldon Core's executor metrics of the SeldonDeployment."""
        return executor_queries(namespace, deployment, predictor, window_seconds)

    def status_fields(self, name: str) -> dict[str, Any]:
        """status.seldonDeployment: the SeldonDeployment's name (field names as ModelDeploymentStatus has them)."""
        return {"seldon_deployment": seldon_deployment_name(name)}

    async def release(self, namespace: str, name: str, status: ModelDeploymentStatus) -> None:
        """Delete the SeldonDeployment the status names (another backend serves the deployment now)."""
        if status.seldon_deployment:
            await delete_seldon_deployment(namespace, status.seldon_deployment)
            await delete_routing_service(namespace, name)

    async def forget(self, namespace: str, name: str) -> None:
        """Nothing to delete: the SeldonDeployment and the routing Service go with their owner (garbage
        collector)."""
        _forget_service(namespace, routing_service_name(name))
        self._erring_since.pop((namespace, name), None)

    async def start(self, existing: Collection[tuple[str, str]] | None) -> None:
        """The request logger's start-up (the sink with MLOPS_SELDON_LOGGER_MODE=always; else it
        starts with the first deployment served)."""
        if self.request_logger is not None:
            await self.request_logger.start()

    async def stop(self) -> None:
        """Flush and stop the request logger."""
        if self.request_logger is not None:
            await self.request_logger.stop()
