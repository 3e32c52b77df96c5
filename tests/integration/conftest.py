"""Fixtures for the operator's integration tests: CRDs installed once, the operator per test."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import yaml

from kube_support import REPO, Objects, OperatorProcess, install_crds, wait_until


@pytest.fixture(scope="session")
def crds(kube_api) -> list[str]:
    """Apply the generated CRDs and wait until they are Established."""
    bodies = [yaml.safe_load(path.read_text()) for path in sorted((REPO / "crds").glob("*.yaml"))]
    return install_crds(kube_api, bodies)


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
    try:
        yield process
        if process.process is not None and process.process.poll() is None:
            remaining = objects.delete_all()
            try:
                # Generous: stopping model servers (SIGTERM, grace, SIGKILL) is slow on a loaded CI box.
                wait_until(lambda: not objects.list_all(), timeout=180, what=f"deletion of {remaining}")
            except AssertionError as error:
                raise AssertionError(f"{error}\noperator log tail:\n{process.logs()[-3000:]}") from None
    finally:
        process.stop()  # also when the deletion failed: a fixture never leaks an operator process
