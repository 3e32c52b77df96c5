"""Backend seldon: create or patch the SeldonDeployment a ModelDeployment owns, and read it back.

The object is written only when its spec changed (a digest in the annotation
``mlops.dev/spec-hash``), so Seldon's mutating webhook defaulting fields does not make us write
on every reconciliation. Deletion is left to Kubernetes' garbage collector (ownerReference).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlops_operator.api.annotations import SPEC_HASH_ANNOTATION
from mlops_operator.api.errors import BackendUnavailable
from mlops_operator.backends import kube
from mlops_operator.reconcile.seldondeployment import SELDON_GROUP, SELDON_PLURAL, SELDON_VERSION


class ManifestRejected(Exception):
    """The API server refused our SeldonDeployment (its schema or a webhook said no)."""


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


def _rejection(error: ApiException) -> ManifestRejected:
    try:
        message = json.loads(error.body or "{}").get("message") or error.reason
    except ValueError:
        message = error.reason
    return ManifestRejected(f"the API server refused the SeldonDeployment ({error.status}): {message}")


def _get(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _custom().get_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL, name)
    except ApiException as error:
        if error.status != 404:
            raise
        if _crd_missing(namespace):
            raise _unavailable() from None
        return None


def _apply(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    live = _get(namespace, name)
    try:
        if live is None:
            return _custom().create_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL,
                                                             manifest)
        live_hash = (live["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if live_hash == meta["annotations"][SPEC_HASH_ANNOTATION] and live.get("spec", {}).get("predictors"):
            return live
        # A merge patch replaces lists whole: spec.predictors becomes exactly ours.
        body = {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"],
                             "ownerReferences": meta["ownerReferences"]},
                "spec": manifest["spec"]}
        return _custom().patch_namespaced_custom_object(SELDON_GROUP, SELDON_VERSION, namespace, SELDON_PLURAL, name,
                                                        body)
    except ApiException as error:
        if error.status == 404 and _crd_missing(namespace):
            raise _unavailable() from None
        if error.status in (400, 422):
            raise _rejection(error) from None
        raise


async def apply_seldon_deployment(manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the SeldonDeployment, or patch it when its spec changed; return the live object.

    Raises BackendUnavailable when Seldon's CRD is absent and ManifestRejected when the API server
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
