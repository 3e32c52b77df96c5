"""Fixtures for the operator's integration tests: CRDs installed once, the operator per test."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import yaml

from kube_support import REPO, Objects, OperatorProcess, wait_until


@pytest.fixture(scope="session")
def crds(kube_api) -> list[str]:
    """Apply the generated CRDs (server-side apply) and wait until they are Established."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(kube_api)
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        names.append(name)
        try:
            current = ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, body)
        except ApiException as error:
            if error.status != 404:
                raise
            ext.create_custom_resource_definition(body)

    def established() -> bool:
        for name in names:
            crd = ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") != "True":
                return False
        return True

    wait_until(established, timeout=60, what="CRDs Established")
    return names


@pytest.fixture
def objects(kube_api, namespace, crds) -> Objects:
    """Live access to our objects in the test's namespace."""
    return Objects(kube_api, namespace)


@pytest.fixture
def operator(kubeconfig, namespace, crds, objects, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator as a real process watching the test's namespace.

    Afterwards the test's objects are deleted while the operator still runs, so their finalizers
    are released (and local runs and model servers stopped) before the operator stops.
    """
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator").start()
    yield process
    if process.process is not None and process.process.poll() is None:
        remaining = objects.delete_all()
        try:
            # Generous: stopping model servers (SIGTERM, grace, SIGKILL) is slow on a loaded CI box.
            wait_until(lambda: not objects.list_all(), timeout=180, what=f"deletion of {remaining}")
        except AssertionError as error:
            raise AssertionError(f"{error}\noperator log tail:\n{process.logs()[-3000:]}") from None
    process.stop()
