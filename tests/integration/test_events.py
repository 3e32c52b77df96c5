"""The operator's events (backends/kube.post_event) against the real API server: posted in order about
their object, and dropped quietly when the namespace is being deleted (kopf's poster retried those nine
times, each refusal an ERROR line)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kube_support import wait_until
from mlops_operator.backends import kube

pytestmark = [pytest.mark.cluster]


def post(obj: dict, *events: tuple[str, str]) -> None:
    async def run() -> None:
        for reason, message in events:
            kube.post_event(obj, "Normal", reason, message)
        await kube.drain_events(timeout=60)

    asyncio.run(run())


def test_an_event_into_a_namespace_being_deleted_is_dropped_quietly(kube_api, namespace, kubeconfig_env, caplog):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    kube.load_config()
    # A ConfigMap with a finalizer of its own keeps the namespace Terminating while the events are posted.
    held = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="held", finalizers=["mlops.dev/test-hold"])))
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "held", "namespace": namespace, "uid": held.metadata.uid}}
    try:
        post(obj, ("First", "one"), ("Second", "two"))
        events = sorted((e for e in core.list_namespaced_event(namespace).items
                         if e.involved_object.uid == held.metadata.uid), key=lambda e: e.event_time)
        assert [(e.reason, e.message, e.type, e.involved_object.kind) for e in events] == [
            ("First", "one", "Normal", "ConfigMap"), ("Second", "two", "Normal", "ConfigMap")]

        core.delete_namespace(namespace)
        wait_until(lambda: core.read_namespace(namespace).status.phase == "Terminating", timeout=30,
                   what="the namespace Terminating")
        with caplog.at_level(logging.DEBUG, logger="mlops_operator"):
            post(obj, ("Third", "three"))
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.DEBUG and "Third" in r.getMessage()] == [
            f"ConfigMap {namespace}/held: event Third not posted: the namespace is being deleted"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("mlops_operator")]
    finally:
        core.patch_namespaced_config_map("held", namespace, {"metadata": {"finalizers": None}})
