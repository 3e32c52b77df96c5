"""Backend ``job``, I/O: a training run's Kubernetes Job created, read and deleted, its Pods read.

Synchronous and quick (no waiting on the run); call from async code with ``asyncio.to_thread``. The
Job's manifest and the mapping of its status to a run state are pure (``reconcile.trainingjob``).
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlops_operator.backends import kube


def _batch() -> client.BatchV1Api:
    return client.BatchV1Api(kube.api_client())


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def create_job(manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Job, or read the one that has its name (AlreadyExists: a restart, or a second
    reconcile of the same trigger); returns (the Job, whether this call created it)."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        return _json(_batch().create_namespaced_job(namespace, manifest, _preload_content=False)), True
    except ApiException as error:
        if error.status != 409:
            raise
    job = read_job(namespace, name)
    if job is None:  # deleted in between (a cancel): the caller sees it as lost on its next look
        raise RuntimeError(f"Job {namespace}/{name} existed and is gone")
    return job, False


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job, or None when there is none."""
    try:
        return _json(_batch().read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def delete_job(namespace: str, name: str) -> None:
    """Delete the Job and, in the background, its Pods (a missing Job is fine)."""
    try:
        _batch().delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def job_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    """The Job's Pods (the Job controller labels them batch.kubernetes.io/job-name)."""
    response = client.CoreV1Api(kube.api_client()).list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={name}", _preload_content=False)
    return _json(response).get("items") or []
