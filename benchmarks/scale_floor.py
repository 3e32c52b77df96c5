"""The floor of benchmarks/scale_bench.py: a kopf operator that does the least an operator can do for
the same objects. A ModelDeployment: patch a condition and create one child (a SeldonDeployment with
the same name, owned by it). A ModelTraining: patch a condition. Nothing is polled; kopf's defaults
otherwise (events, annotations for its progress).

Run by the benchmark as ``python benchmarks/scale_floor.py`` with KUBECONFIG set; kopf's own settings
otherwise (it watches every namespace).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config

GROUP, VERSION = "mlops.dev", "v1alpha1"
READY_LINE = "floor: started"


def _condition(kind: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [{"type": "Ready", "status": "True", "reason": "Floor", "message": f"{kind} seen",
             "lastTransitionTime": now}]


@kopf.on.startup()
def configure(**_: Any) -> None:
    logging.getLogger("kopf").setLevel(logging.WARNING)
    # The benchmark applies the objects once this line is logged (the operator's own health endpoint
    # answers from the same point: its start-up activities done).
    logging.getLogger("scale_floor").warning("%s", READY_LINE)


@kopf.on.create(GROUP, VERSION, "modeldeployments")
async def deployment(body: kopf.Body, name: str, namespace: str, patch: kopf.Patch, **_: Any) -> None:
    child = {"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
             "metadata": {"name": name, "ownerReferences": [{
                 "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": name,
                 "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
             "spec": {"predictors": [{"name": "stable", "replicas": 1, "graph": {
                 "name": "model", "implementation": "SKLEARN_SERVER", "modelUri": "s3://models/iris/1"}}]}}
    api = client.CustomObjectsApi()
    await asyncio.to_thread(api.create_namespaced_custom_object, "machinelearning.seldon.io", "v1", namespace,
                            "seldondeployments", child)
    patch.status["conditions"] = _condition("ModelDeployment")


@kopf.on.create(GROUP, VERSION, "modeltrainings")
async def training(patch: kopf.Patch, **_: Any) -> None:
    patch.status["conditions"] = _condition("ModelTraining")


if __name__ == "__main__":
    config.load_kube_config()
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))
