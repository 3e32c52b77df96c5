"""Seldon Core's own SeldonDeployment CRD, installed in the test cluster.

The CRD comes from the Seldon Core v1.17.1 source tree (setting ``MLOPS_SELDON_SRC``, see
hack/seldon.py: the Go module proxy refuses that module): ``operator/config/crd/bases`` with Seldon's
``config/crd/patches/graph_children.yaml`` applied, which is what its chart installs (the raw file is
refused by kube-apiserver). Without a source tree the Seldon tests skip naming the setting, and fail
under ``CI=true``. The same CRD source serves the e2e test with the real controller (tests/seldon_support.py).

Import the fixtures in a test module: ``from integration.conftest_seldon import seldon_crd, seldon_crd_manifest``.
"""

from __future__ import annotations

from typing import Any

import pytest

from kube_support import wait_until
from seldon_support import SELDON_CRD_NAME, install_seldon_crd, patched_crd, source_or_skip


@pytest.fixture(scope="session")
def seldon_crd_manifest() -> dict[str, Any]:
    """Seldon Core's patched SeldonDeployment CRD as a dict."""
    return patched_crd(source_or_skip())


def uninstall_seldon_crd(kube_api) -> None:
    """Delete the CRD and wait until the API server no longer serves it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(kube_api)
    try:
        ext.delete_custom_resource_definition(SELDON_CRD_NAME)
    except ApiException as error:
        if error.status != 404:
            raise

    def gone() -> bool:
        try:
            ext.read_custom_resource_definition(SELDON_CRD_NAME)
        except ApiException as error:
            return error.status == 404
        return False

    wait_until(gone, timeout=120, what="Seldon CRD deleted")


@pytest.fixture
def seldon_crd(kube_api, seldon_crd_manifest) -> dict[str, Any]:
    """Seldon's CRD installed in the test cluster (left installed for later tests)."""
    install_seldon_crd(kube_api, seldon_crd_manifest)
    return seldon_crd_manifest


__all__ = ["install_seldon_crd", "seldon_crd", "seldon_crd_manifest", "uninstall_seldon_crd"]
