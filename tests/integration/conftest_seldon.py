"""Seldon Core's own SeldonDeployment CRD, fetched at test time and installed in the test cluster.

The CRD is taken from Seldon Core's Go module (``github.com/seldonio/seldon-core/operator``
v1.17.1, ``config/crd/bases/``) through ``go mod download``, so the API server validates our
SeldonDeployments against Seldon's real schema. It is never copied into this repository.

Where the Go module proxy does not serve that module, set ``MLOPS_SELDON_CRD`` to the path of
that file (e.g. from a seldon-core v1.17.1 checkout); without either the Seldon tests are skipped
with the proxy's answer.

Import the fixtures in a test module: ``from integration.conftest_seldon import seldon_crd, seldon_crd_manifest``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_support import install_crds, wait_until

SELDON_MODULE = "github.com/seldonio/seldon-core/operator"
SELDON_MODULE_VERSION = "v1.17.1"
SELDON_CRD_PATH = "config/crd/bases/machinelearning.seldon.io_seldondeployments.yaml"
SELDON_CRD_NAME = "seldondeployments.machinelearning.seldon.io"


def download_seldon_crd() -> Path:
    """The CRD file inside the downloaded Go module (the module cache keeps it for later runs)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Seldon's CRD comes from its Go module and no `go` is on PATH (or set MLOPS_SELDON_CRD)")
    with tempfile.TemporaryDirectory() as scratch:  # outside any go.mod
        result = subprocess.run([go, "mod", "download", "-json", f"{SELDON_MODULE}@{SELDON_MODULE_VERSION}"],
                                cwd=scratch, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "GOFLAGS": "-mod=mod"})
    try:
        info = json.loads(result.stdout)
    except ValueError:
        pytest.skip(f"go mod download {SELDON_MODULE}@{SELDON_MODULE_VERSION} failed: {result.stderr.strip()[-500:]}")
    if info.get("Error") or not info.get("Dir"):
        pytest.skip(f"the Go module proxy does not serve {SELDON_MODULE}@{SELDON_MODULE_VERSION}: "
                    f"{info.get('Error', 'no Dir')} (set MLOPS_SELDON_CRD to the CRD file instead)")
    path = Path(info["Dir"]) / SELDON_CRD_PATH
    if not path.exists():
        pytest.fail(f"{SELDON_MODULE}@{SELDON_MODULE_VERSION} has no {SELDON_CRD_PATH}")
    return path


@pytest.fixture(scope="session")
def seldon_crd_manifest() -> dict[str, Any]:
    """Seldon Core's SeldonDeployment CRD as a dict (from MLOPS_SELDON_CRD or the Go module)."""
    path = Path(os.environ["MLOPS_SELDON_CRD"]) if os.environ.get("MLOPS_SELDON_CRD") else download_seldon_crd()
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    crd = next((d for d in documents if d.get("metadata", {}).get("name") == SELDON_CRD_NAME), None)
    assert crd is not None, f"{path} holds no {SELDON_CRD_NAME}"
    crd.get("metadata", {}).pop("creationTimestamp", None)
    crd.pop("status", None)
    return crd


def install_seldon_crd(kube_api, manifest: dict[str, Any]) -> None:
    """Create (or replace) the CRD and wait until it is Established."""
    install_crds(kube_api, [json.loads(json.dumps(manifest))], what="Seldon CRD")
    time.sleep(1)  # discovery caches of the API server catch up


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
