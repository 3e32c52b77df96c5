"""The SeldonDeployment a ModelDeployment owns (backend seldon), and what its status says. Pure.

One SeldonDeployment (``machinelearning.seldon.io/v1``, ``protocol: v2``) per ModelDeployment,
named like it. Its predictors are the rollout's: ``stable``, ``canary`` (with ``traffic``) and
``shadow`` (``shadow: true``). Each predictor is a one-node graph served by an MLServer runtime
of Seldon's prepackaged servers; ``modelUri`` is the model version's directory, which Seldon's
storage initializer downloads. On EKS the artifact root is ``s3://`` (a ``file://`` URI, as on
the local control plane, is not loadable by a real Seldon).

A shadow predictor's ``traffic`` is ``shadow.mirrorPercent`` when below 100: Seldon writes it as the
Istio VirtualService's ``mirrorPercentage`` (without it Istio mirrors every request).

Seldon honours ``traffic`` and ``shadow`` only through a mesh (Istio VirtualService weights and
``mirror``, or Ambassador mappings); without one it silently makes one plain Service per predictor.
The setting ``MLOPS_SELDON_ROUTING`` says which the cluster has. With ``none`` the operator routes for
real without a mesh: a Service named like the ModelDeployment selects the serving Pods of every
predictor (:func:`build_routing_service`), so kube-proxy splits requests in proportion to ready
replicas, and the replica counts are set from the step's weight (:func:`split_replicas`); the status
reports the split the replicas give. A shadow cannot be done that way and is refused
(:func:`routing_problems`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from mlops_operator.api.annotations import SPEC_HASH_ANNOTATION
from mlops_operator.api.common import GROUP, VERSION
from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.reconcile.modeldeployment import CANARY, STABLE, PredictorPlan, promql_window

SELDON_GROUP = "machinelearning.seldon.io"
SELDON_VERSION = "v1"
SELDON_PLURAL = "seldondeployments"
SELDON_KIND = "SeldonDeployment"
MANAGED_BY = "mlops-operator"

# Seldon's prepackaged servers that run MLServer under protocol v2.
PREPACKAGED_SERVERS = {"sklearn": "SKLEARN_SERVER", "xgboost": "XGBOOST_SERVER", "mlflow": "MLFLOW_SERVER"}
# LightGBM has no prepackaged server in Seldon Core v1: a custom MLServer container with the
# LightGBM runtime; Seldon still downloads modelUri into /mnt/models for it.
LIGHTGBM_IMAGE = "seldonio/mlserver:1.7.1-lightgbm"
LIGHTGBM_RUNTIME = "mlserver_lightgbm.LightGBMModel"

AVAILABLE, CREATING, FAILED = "Available", "Creating", "Failed"

Routing = Literal["istio", "ambassador", "none"]
# Seldon's executor ports in every predictor Pod (the chart's defaults), which our routing Service targets.
EXECUTOR_HTTP_PORT, EXECUTOR_GRPC_PORT = 8000, 5001


# ---------------------------------------------------------------- routing without a mesh


@dataclass(frozen=True)
class ReplicaSplit:
    """Replica counts of the stable and canary predictors, and the share of requests they give."""

    stable: int
    canary: int

    @property
    def weight(self) -> float:
        """Percent of requests kube-proxy sends to the canary: its share of the ready endpoints."""
        return 100.0 * self.canary / (self.stable + self.canary)


def split_replicas(weight: int, stable_replicas: int, max_replicas: int) -> ReplicaSplit:
    """Replica counts whose ratio comes closest to ``weight`` percent for the canary.

    kube-proxy picks a ready endpoint uniformly at random, so the canary's share is canary/(stable +
    canary). Both predictors keep at least one replica (Seldon never calls a Deployment with no ready
    replica available), the total is at least the stable replica count + 1 (a canary step adds
    capacity, it does not take it from stable), and at most ``max_replicas`` (or stable + 1 when that
    is more). Among the totals in range the closest share wins; at equal distance the fewer replicas.
    """
    stable_replicas = max(stable_replicas, 1)
    lowest = stable_replicas + 1
    highest = max(max_replicas, stable_replicas + 1)
    best: ReplicaSplit | None = None
    best_error = math.inf
    for total in range(lowest, highest + 1):
        canary = min(max(round(total * weight / 100), 1), total - 1)
        split = ReplicaSplit(total - canary, canary)
        error = abs(split.weight - weight)
        if error < best_error - 1e-9:
            best, best_error = split, error
    assert best is not None
    return best


def predictor_replicas(spec: ModelDeploymentSpec, predictors: Sequence[PredictorPlan], routing: Routing,
                       max_replicas: int) -> dict[str, int]:
    """Replicas per predictor. With a mesh (or autoscaling, where the HPAs own the counts) each
    predictor has spec.replicas; with routing ``none`` a canary step's weight becomes replica counts."""
    base = 1 if spec.replicas is None else spec.replicas
    replicas = {p.name: base for p in predictors}
    canary = next((p for p in predictors if p.name == CANARY), None)
    if routing == "none" and canary is not None and STABLE in replicas and not spec.autoscaling:
        split = split_replicas(canary.weight, base, max_replicas)
        replicas[STABLE], replicas[CANARY] = split.stable, split.canary
    return replicas


def routing_problems(spec: ModelDeploymentSpec, routing: Routing) -> list[str]:
    """What the cluster's routing cannot do for this spec (backend seldon), as InvalidSpec messages."""
    if spec.backend != "seldon" or routing != "none":
        return []
    problems = []
    if spec.rollout.strategy == "shadow":
        problems.append(
            "spec.rollout.strategy: shadow needs a mesh on backend seldon (Seldon Core mirrors requests only "
            "through an Istio VirtualService or Ambassador), and this operator is configured with "
            "MLOPS_SELDON_ROUTING=none: without a mesh a shadow would receive no traffic. Use strategy canary "
            "(split by replica counts) or direct, or set MLOPS_SELDON_ROUTING to the cluster's mesh")
    return problems


def routing_service_name(deployment: str) -> str:
    """The Service that routes a ModelDeployment's requests without a mesh: named like it (Seldon's own
    Services are ``<sdep>-<predictor>[-<container>]``)."""
    return deployment


def build_routing_service(name: str, namespace: str, owner_uid: str) -> dict[str, Any]:
    """A Service selecting the Pods of every predictor of the SeldonDeployment ``name``: kube-proxy
    spreads its requests over their ready executors, so each predictor's share is its share of the
    ready replicas. Owned by the ModelDeployment (deleted with it)."""
    sdep = seldon_deployment_name(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": routing_service_name(name),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": name,
                       "mlops.dev/deployment": name},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": name,
                                 "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "type": "ClusterIP",
            # Seldon labels every Pod of the SeldonDeployment with its id; a shadow (which would be
            # selected too) is refused with this routing.
            "selector": {"seldon-deployment-id": sdep},
            "ports": [{"name": "http", "port": EXECUTOR_HTTP_PORT, "targetPort": EXECUTOR_HTTP_PORT, "protocol": "TCP"},
                      {"name": "grpc", "port": EXECUTOR_GRPC_PORT, "targetPort": EXECUTOR_GRPC_PORT,
                       "protocol": "TCP"}],
        },
    }


def routing_endpoint(name: str, namespace: str, model_name: str) -> str:
    """status.endpoint with routing ``none``: the routing Service's in-cluster URL of the model (clients
    POST to endpoint + "/infer"); it stays the same through rollouts."""
    return (f"http://{routing_service_name(name)}.{namespace}.svc.cluster.local:{EXECUTOR_HTTP_PORT}"
            f"/v2/models/{model_name}")


def served_weights(predictors: Sequence[PredictorPlan], available: Mapping[str, int]) -> list[PredictorPlan]:
    """The plan with the weights kube-proxy really gives (routing ``none``): each live predictor's share
    of the available replicas. Before any replica is available the planned weights stay."""
    live = [p for p in predictors if not p.shadow]
    total = sum(available.get(p.name, 0) for p in live)
    if total == 0:
        return list(predictors)
    return [p if p.shadow else replace(p, weight=round(100 * available.get(p.name, 0) / total)) for p in predictors]


def seldon_deployment_name(deployment: str) -> str:
    """Name of the SeldonDeployment of a ModelDeployment (the same: at most 48 characters by our CRD)."""
    return deployment


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for kind in ("requests", "limits"):
        amounts = getattr(spec.resources, kind).to_api()
        if amounts:
            resources[kind] = amounts
    return resources


def _component_spec(spec: ModelDeploymentSpec, container: str) -> dict[str, Any] | None:
    """componentSpecs[0]: resources and the autoscaler of the model server container."""
    pod: dict[str, Any] = {}
    container_spec: dict[str, Any] = {"name": container}
    resources = _resources(spec)
    if resources:
        container_spec["resources"] = resources
    if spec.runtime == "lightgbm":
        container_spec["image"] = LIGHTGBM_IMAGE
        # Only the implementation: Seldon adds the name, the ports and MLSERVER_MODEL_URI itself, and
        # Seldon Core 1.17.1 drops a container's whole env list when it already sets MLSERVER_MODEL_URI
        # (utils.SetEnvVar with override=false returns nil for an existing variable).
        container_spec["env"] = [{"name": "MLSERVER_MODEL_IMPLEMENTATION", "value": LIGHTGBM_RUNTIME}]
    if len(container_spec) > 1:
        pod["spec"] = {"containers": [container_spec]}
    if spec.autoscaling:
        scaling = spec.autoscaling
        # hpaSpec.metrics is Seldon's v2beta1-shaped field, the one every Seldon Core 1.x schema has;
        # the Seldon operator turns it into an autoscaling/v2 HorizontalPodAutoscaler.
        pod["hpaSpec"] = {
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "targetAverageUtilization": scaling.target_cpu_utilization_percentage}}],
        }
    return pod or None


def _predictor(spec: ModelDeploymentSpec, model_name: str, plan: PredictorPlan, logger_url: str | None,
               replicas: int | None) -> dict[str, Any]:
    graph: dict[str, Any] = {"name": model_name, "type": "MODEL", "modelUri": plan.model.uri, "children": []}
    if logger_url:
        # Seldon's executor posts every request and response there (the operator's request-logger
        # sink), which writes the inference log DriftMonitor reads.
        graph["logger"] = {"url": logger_url, "mode": "all"}
    if spec.runtime in PREPACKAGED_SERVERS:
        graph["implementation"] = PREPACKAGED_SERVERS[spec.runtime]
    if spec.service_account_name:
        graph["serviceAccountName"] = spec.service_account_name
    if spec.storage_secret_name:
        graph["envSecretRefName"] = spec.storage_secret_name
    predictor: dict[str, Any] = {
        "name": plan.name,
        "graph": graph,
        "labels": {"mlops.dev/predictor": plan.name, "mlops.dev/model-version": plan.model.version},
        # Seldon reports Failed only after its Deployments' progress deadline.
        "progressDeadlineSeconds": spec.progress_deadline_seconds,
    }
    if plan.shadow:
        predictor["shadow"] = True
        if plan.mirror_percent < 100:
            # A shadow's traffic is its mirror percentage: Seldon writes it as the VirtualService's
            # mirrorPercentage (Istio); without it Istio mirrors every request.
            predictor["traffic"] = plan.mirror_percent
    else:
        predictor["traffic"] = plan.weight
    if not spec.autoscaling:
        predictor["replicas"] = replicas if replicas is not None else (1 if spec.replicas is None else spec.replicas)
    component = _component_spec(spec, model_name)
    if component:
        predictor["componentSpecs"] = [component]
    return predictor


def spec_hash(seldon_spec: Mapping[str, Any]) -> str:
    """A digest of a SeldonDeployment spec: the object is patched only when it changes."""
    return hashlib.sha256(json.dumps(seldon_spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def build_seldon_deployment(
    name: str,
    namespace: str,
    owner_uid: str,
    spec: ModelDeploymentSpec,
    model_name: str,
    predictors: Sequence[PredictorPlan],
    logger_urls: Mapping[str, str] | None = None,
    replicas: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The SeldonDeployment serving ``predictors`` for the ModelDeployment ``name`` (owned by it,
    so Kubernetes' garbage collector deletes it with the ModelDeployment). ``logger_urls`` maps
    predictor names to their request-logger URL (``graph.logger``, mode all); ``replicas`` predictor
    names to replica counts (:func:`predictor_replicas`; default spec.replicas)."""
    seldon_spec = {
        "protocol": "v2",
        "predictors": [_predictor(spec, model_name, plan, (logger_urls or {}).get(plan.name),
                                  (replicas or {}).get(plan.name)) for plan in predictors],
    }
    return {
        "apiVersion": f"{SELDON_GROUP}/{SELDON_VERSION}",
        "kind": SELDON_KIND,
        "metadata": {
            "name": seldon_deployment_name(name),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": name,
                       "mlops.dev/deployment": name},
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(seldon_spec)},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": name,
                                 "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": seldon_spec,
    }


@dataclass(frozen=True)
class SeldonObservation:
    """What a SeldonDeployment's status says about our predictors."""

    state: str | None
    """Available, Creating, Failed, or None before Seldon wrote a status."""
    description: str
    ready: Mapping[str, bool]
    """Predictor name -> whether it serves."""
    available_replicas: Mapping[str, int]
    """Predictor name -> available replicas (when Seldon reports them per deployment)."""
    endpoint: str | None
    reconcile_error: str | None = None
    """Seldon Core's own reconciliation failed and it retries (state Failed with the error's text, not its
    Deployments' progress deadline): for example ``Service "iris-canary-iris" not found`` when its status
    still lists a Service of a predictor removed meanwhile. Not a verdict on the predictors."""


def _predictor_of(deployment_name: str, sdep: str, predictors: Sequence[str]) -> str | None:
    # Seldon names a predictor's Deployments <sdep>-<predictor>-<index>-<container> (or hashes
    # names over 63 characters, which ours are not).
    for predictor in sorted(predictors, key=len, reverse=True):
        if deployment_name.startswith(f"{sdep}-{predictor}-"):
            return predictor
    return None


def observe_seldon_deployment(live: Mapping[str, Any] | None, predictors: Sequence[str]) -> SeldonObservation:
    """Read a live SeldonDeployment's status for the given predictor names.

    With ``deploymentStatus`` a predictor is ready when its Deployments have available replicas;
    without it (an older Seldon, or a test that writes only ``state``) every predictor is ready
    exactly when the state is Available. Seldon Core writes state Failed in two cases
    (``operator/controllers/seldondeployment_controller.go``, v1.17.1): its Deployments passed their
    progress deadline (description :data:`PROGRESS_DEADLINE_FAILURE`: no predictor is ready), or its own
    reconciliation returned an error, which it retries (``updateStatusForError``: the description is the
    error's text, ``reconcile_error``; the predictors are as their Deployments say).
    """
    status = (live or {}).get("status") or {}
    state = status.get("state")
    description = str(status.get("description") or "")
    reconcile_error = (description if state == FAILED and description
                       and not description.startswith(PROGRESS_DEADLINE_FAILURE) else None)
    per_deployment = status.get("deploymentStatus") or {}
    sdep = (live or {}).get("metadata", {}).get("name", "")
    available: dict[str, int] = {}
    for deployment, info in per_deployment.items():
        predictor = _predictor_of(deployment, sdep, predictors)
        if predictor:
            available[predictor] = available.get(predictor, 0) + int((info or {}).get("availableReplicas") or 0)
    ready: dict[str, bool] = {}
    for predictor in predictors:
        if state == FAILED and reconcile_error is None:
            ready[predictor] = False
        elif per_deployment:
            ready[predictor] = available.get(predictor, 0) > 0
        else:
            ready[predictor] = state == AVAILABLE
    endpoint = ((status.get("address") or {}).get("url")) or None
    if endpoint and endpoint.endswith("/infer"):
        # Seldon's address is the model's infer URL; ours is the model's base, as for the local
        # backend (clients POST to endpoint + "/infer").
        endpoint = endpoint[: -len("/infer")]
    return SeldonObservation(state, description, ready, available, endpoint, reconcile_error)


# How Seldon's own description begins when a Deployment passes its progress deadline ("... and not
# available."): it says nothing about why.
PROGRESS_DEADLINE_FAILURE = "Deployment is no longer progressing"


def pod_failure_reason(pods: Sequence[Mapping[str, Any]], sdep: str, predictors: Sequence[str]) -> str | None:
    """Why the SeldonDeployment's Pods do not run, read from their container statuses: the waiting
    reason (CrashLoopBackOff, ErrImageNeverPull, ...) and the last termination's reason, exit code and
    message, of the first failing container (init containers first). None when nothing failed.

    A model container that exited counts whatever its exit code (MLServer 1.7.1 exits 0 when its
    model fails to load); an init container only with a non-zero exit. When nothing failed yet (a
    model server still starting when the progress deadline passes, as on a loaded node), the first
    container that runs but is not ready is named, a candidate predictor's before the stable one's."""
    benign = (None, "PodInitializing", "ContainerCreating")
    not_ready: list[tuple[bool, str]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        deployment = (meta.get("labels") or {}).get("seldon-deployment-id")
        if deployment is not None and deployment != sdep:
            continue
        status = pod.get("status") or {}
        owner = next((p for p in sorted(predictors, key=len, reverse=True)
                      if meta.get("name", "").startswith(f"{sdep}-{p}-")), None)
        for kind, statuses in (("init container", status.get("initContainerStatuses")),
                               ("container", status.get("containerStatuses"))):
            for container in statuses or []:
                if container.get("ready"):
                    continue
                state = container.get("state") or {}
                waiting = state.get("waiting") or {}
                last = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
                if kind == "init container":
                    exited = bool(last) and last.get("exitCode") not in (None, 0)
                else:
                    exited = bool(last) or int(container.get("restartCount") or 0) > 0
                if waiting.get("reason") in benign and not exited:
                    running = state.get("running")
                    if kind == "container" and running is not None:
                        where = f"predictor {owner}, " if owner else ""
                        since = f" since {running['startedAt']}" if running.get("startedAt") else ""
                        not_ready.append((owner == STABLE,
                                          f"{where}Pod {meta.get('name')}, container {container.get('name')}: "
                                          f"running{since} but not ready (no exit yet)"))
                    continue
                parts = []
                if waiting.get("reason") not in benign:
                    parts.append(waiting["reason"])
                    if waiting.get("message") and not exited:
                        parts.append(waiting["message"].strip()[:300])
                if last:
                    what = f"exit code {last.get('exitCode')}"
                    if last.get("reason"):
                        what = f"{last['reason']}, {what}"
                    message = (last.get("message") or "").strip()
                    parts.append(f"last exit: {what}" + (f": {message[-300:]}" if message else ""))
                elif exited:
                    parts.append(f"restarted {container.get('restartCount')} times")
                where = f"predictor {owner}, " if owner else ""
                return f"{where}Pod {meta.get('name')}, {kind} {container.get('name')}: " + "; ".join(parts)
    if not_ready:
        return sorted(not_ready, key=lambda item: item[0])[0][1]  # stable's last; stable sort keeps the order
    return None


def stable_ready_replicas(observation: SeldonObservation, replicas_in_spec: int | None) -> int:
    """Ready replicas of the stable predictor."""
    if STABLE in observation.available_replicas:
        return observation.available_replicas[STABLE]
    if observation.ready.get(STABLE):
        return replicas_in_spec if replicas_in_spec is not None else 1
    return 0


def executor_queries(namespace: str, deployment: str, predictor: str, window_seconds: float) -> dict[str, str]:
    """PromQL for a predictor's requests (without client errors), errors and p99 latency over the last
    ``window_seconds``, from Seldon Core's executor metrics of the SeldonDeployment (named after the
    ModelDeployment)."""
    window = promql_window(window_seconds)
    selector = f'namespace="{namespace}",deployment_name="{deployment}",predictor_name="{predictor}"'
    base = "seldon_api_executor_server_requests_seconds"
    return {
        # 4xx are the client's mistakes: no verdict on the predictor either way.
        "requests": f'sum(increase({base}_count{{{selector},code!~"4.."}}[{window}]))',
        "errors": f'sum(increase({base}_count{{{selector},code=~"5.."}}[{window}]))',
        "p99": f"histogram_quantile(0.99, sum by (le) (rate({base}_bucket{{{selector}}}[{window}])))",
        "p99_unit": "seconds",
    }
