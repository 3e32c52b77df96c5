"""Kubernetes API access for the handlers: the object to reconcile, reads, status/annotation patches.

kopf hands handlers its latest view of an object (from its watch); the operator's daemons and change
handlers both reconcile the same objects, serialised on a per-object lock (see handlers/common.py).
That view can predate a status this process has just written (the watch event of the write is still
on its way): :func:`current_object` uses kopf's view when its status is the newest this process knows,
and reads the live object otherwise. The kubernetes client is synchronous; every call runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mlops_operator.api.common import GROUP, VERSION

log = logging.getLogger("mlops_operator")

_api_client: client.ApiClient | None = None


def load_config(connections: int | None = None) -> None:
    """Load in-cluster config, or the kubeconfig ($KUBECONFIG, ~/.kube/config); the shared client keeps up to
    ``connections`` connections to the API server (default: the client's own, 5 per CPU), one per thread that
    may call it at once (settings.io_threads): a call that finds none idle opens one, with a TLS handshake,
    and a pool that is full closes it again."""
    global _api_client
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # $KUBECONFIG as it is now: the client's own default was read when it was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    configuration = client.Configuration.get_default_copy()
    if connections is not None:
        configuration.connection_pool_maxsize = connections
    _api_client = client.ApiClient(configuration)


def discard_body(response: urllib3.BaseHTTPResponse) -> None:
    """Read an unparsed response (``_preload_content=False``) to its end, so that its connection goes
    back to the client's pool: one left unread is closed when collected, and the next call pays for a
    new connection and its TLS handshake."""
    response.drain_conn()


def api_client() -> client.ApiClient:
    """The shared API client (loads the config on first use)."""
    if _api_client is None:
        load_config()
    assert _api_client is not None
    return _api_client


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


async def get_object(plural: str, namespace: str, name: str, group: str = GROUP, version: str = VERSION
                     ) -> dict[str, Any] | None:
    """The live object, or None when it does not exist."""
    def call() -> dict[str, Any] | None:
        try:
            return _custom().get_namespaced_custom_object(group, version, namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    return await asyncio.to_thread(call)


# The newest status this process knows of each of its objects (by plural, namespace, name): the one it
# last wrote, or read.
_known_status: dict[tuple[str, str, str], Any] = {}


async def current_object(plural: str, namespace: str, name: str, body: Mapping[str, Any] | None
                         ) -> dict[str, Any] | None:
    """The object to reconcile: a copy of ``body`` (kopf's latest view of it) when its status is the newest
    this process knows of (or it knows none), else the live object, or None when it does not exist.

    Only this operator writes these statuses, so a view with another status predates our last write
    (or someone else wrote it): then, and without a view, the object is read."""
    key = (plural, namespace, name)
    if body is not None:
        obj = plain_copy(body)
        if key not in _known_status or (obj.get("status") or {}) == _known_status[key]:
            return obj
    obj = await get_object(plural, namespace, name)
    if obj is not None:
        _known_status[key] = obj.get("status") or {}
    return obj


def plain_copy(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a watched object as plain dicts, without ``metadata.managedFields`` (the API server's
    field bookkeeping, which nothing here reads and which was most of what a copy cost)."""
    return copy.deepcopy(without_managed_fields(body))


def without_managed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """A watched object as a plain dict without ``metadata.managedFields``, sharing everything else with
    ``body`` (no copy: for keeping the latest view of many objects, which the API server's field
    bookkeeping would otherwise make several times larger)."""
    obj = {key: value for key, value in body.items() if key != "metadata"}
    obj["metadata"] = {key: value for key, value in (body.get("metadata") or {}).items() if key != "managedFields"}
    return obj


def forget_object(plural: str, namespace: str, name: str) -> None:
    """Drop what is known of a deleted object's status."""
    _known_status.pop((plural, namespace, name), None)


async def patch_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource (only the given fields change)."""
    def call() -> None:
        try:
            written = _custom().patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            )
            _known_status[(plural, namespace, name)] = written.get("status") or {}
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing to record
                raise
            _known_status.pop((plural, namespace, name), None)

    await asyncio.to_thread(call)


async def patch_annotations(plural: str, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
    """Merge-patch annotations (None removes one)."""
    body = {"metadata": {"annotations": annotations}}
    await asyncio.to_thread(_custom().patch_namespaced_custom_object, GROUP, VERSION, namespace, plural, name, body)


async def read_secret_key(namespace: str, name: str, key: str) -> str:
    """One value of a Secret. The caller must never log or store it."""
    def call() -> str:
        secret = client.CoreV1Api(api_client()).read_namespaced_secret(name, namespace)
        data = (secret.data or {}).get(key)
        if data is None:
            raise KeyError(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data).decode()

    return await asyncio.to_thread(call)


async def read_secret(namespace: str, name: str) -> dict[str, str]:
    """Every key of a Secret, decoded. The caller must never log or store the values."""
    def call() -> dict[str, str]:
        secret = client.CoreV1Api(api_client()).read_namespaced_secret(name, namespace)
        return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}

    return await asyncio.to_thread(call)


async def read_config_map_key(namespace: str, name: str, key: str) -> str:
    """One value of a ConfigMap."""
    def call() -> str:
        config_map = client.CoreV1Api(api_client()).read_namespaced_config_map(name, namespace)
        data = (config_map.data or {}).get(key)
        if data is None:
            raise KeyError(f"ConfigMap {namespace}/{name} has no key {key!r}")
        return data

    return await asyncio.to_thread(call)


def list_object_keys(plural: str, namespaces: Collection[str]) -> set[tuple[str, str]]:
    """(namespace, name) of every object of one of our kinds, in the given namespaces (empty: all)."""
    api = _custom()
    if namespaces:
        items = [item for ns in namespaces for item in api.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]]
    else:
        items = api.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
    return {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}


def is_namespace_terminating(error: BaseException) -> bool:
    """Whether the API server refused a create because the namespace is being deleted (403 with the
    cause NamespaceTerminating): nothing of the namespace's objects is to be done any more."""
    if getattr(error, "status", None) != 403:
        return False
    try:
        details = json.loads(getattr(error, "body", None) or "{}").get("details") or {}
    except (ValueError, AttributeError, TypeError):
        return False
    return any(cause.get("reason") == "NamespaceTerminating" for cause in details.get("causes") or [])


def describe_api_error(error: BaseException, what: str) -> str:
    """A Kubernetes API error in one readable line (never the raw response with its headers)."""
    status = getattr(error, "status", None)
    if status == 404:
        return f"{what} not found"
    if status == 403:
        return f"the operator may not read {what} (RBAC: forbidden)"
    if status is not None:
        reason = getattr(error, "reason", "") or ""
        message = ""
        body = getattr(error, "body", None)
        if body:
            try:
                message = json.loads(body).get("message", "")
            except (ValueError, AttributeError, TypeError):
                message = ""
        return f"cannot read {what}: HTTP {status} {reason}{': ' + message if message else ''}"[:512]
    return f"cannot read {what}: {type(error).__name__}: {error}"[:512]


# ---------------------------------------------------------------- events

# Who posts the events (the "From" column of ``kubectl describe``; kopf's default before).
EVENT_COMPONENT = "kopf"
# Seconds between attempts to post an event while the API server answers 429/5xx or cannot be reached.
EVENT_BACKOFFS = (1.0, 2.0, 5.0, 10.0)
# One queue per object being posted about, so that its events keep their order; its worker exits when
# the queue is drained.
_event_queues: dict[tuple[str, str], asyncio.Queue] = {}
_event_workers: set[asyncio.Task] = set()


def post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post a Kubernetes event about ``obj`` in the background (in order per object).

    Instead of ``kopf.event``: kopf retries a refused post nine times and logs each refusal as an ERROR,
    also when the namespace is being deleted, where an event can never be posted and nobody would read
    it. Here such an event is dropped with a debug line; 429, 5xx and connection trouble are retried a
    few times, and what is still refused is logged once as a warning naming the object."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name", "")
    now = datetime.now(UTC).isoformat()
    body = {
        "metadata": {"namespace": namespace, "generateName": f"{name}."[:200]},
        "type": type_, "reason": reason, "message": message[:1024], "action": reason,
        "reportingComponent": EVENT_COMPONENT, "reportingInstance": EVENT_COMPONENT,
        "source": {"component": EVENT_COMPONENT},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": name,
                           "namespace": namespace, "uid": meta.get("uid")},
        "firstTimestamp": now, "lastTimestamp": now, "eventTime": now, "count": 1,
    }
    key = (namespace, meta.get("uid") or name)
    queue = _event_queues.get(key)
    if queue is None:
        queue = _event_queues[key] = asyncio.Queue()
        worker = asyncio.get_running_loop().create_task(_post_events(key, queue))
        _event_workers.add(worker)
        worker.add_done_callback(_event_workers.discard)
    queue.put_nowait(body)


async def _post_events(key: tuple[str, str], queue: asyncio.Queue) -> None:
    try:
        while not queue.empty():
            await _post_one(queue.get_nowait())
    finally:
        _event_queues.pop(key, None)  # no await since the queue was seen empty: nothing is lost


async def _post_one(body: dict[str, Any]) -> None:
    namespace, about = body["metadata"]["namespace"], body["involvedObject"]
    what = f"{about['kind']} {namespace}/{about['name']}: event {body['reason']}"
    core = client.CoreV1Api(api_client())
    for delay in (*EVENT_BACKOFFS, None):
        try:
            # The response is not read into the client's models (most of the CPU such a call costs).
            await asyncio.to_thread(lambda: discard_body(
                core.create_namespaced_event(namespace, body, _preload_content=False)))
            return
        except ApiException as error:
            if is_namespace_terminating(error) or error.status == 404:
                log.debug("%s not posted: the namespace is being deleted", what)
                return
            trouble: BaseException = error
            transient = error.status == 429 or (error.status or 0) >= 500
        except (OSError, urllib3.exceptions.HTTPError) as error:
            trouble, transient = error, True
        if not transient or delay is None:
            log.warning("%s not posted: %s", what, describe_api_error(trouble, "the event"))
            return
        await asyncio.sleep(delay)


async def drain_events(timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) for the events queued so far to be posted (operator shutdown)."""
    if _event_workers:
        await asyncio.wait(set(_event_workers), timeout=timeout)
