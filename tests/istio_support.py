"""Istio's CRDs, from the Go module ``istio.io/api`` (its ``kubernetes/customresourcedefinitions.gen.yaml``).

Istio itself does not run here (no Envoy, no istiod): what the tests check against these CRDs is what
Seldon Core writes with ``ISTIO_ENABLED`` (VirtualService weights and mirror, DestinationRules), accepted
by the API server against Istio's own schemas. The module comes from the Go module proxy with
``go mod download`` (the Go module cache, outside the checkout) and the CRD file is kept in
``~/.cache/mlops-operator/istio-api-<version>/``. Without Go the tests that need it skip (fail under
``CI=true``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ISTIO_API_MODULE = "istio.io/api"
ISTIO_API_VERSION = "v1.32.0"
CRD_FILE = "kubernetes/customresourcedefinitions.gen.yaml"
# What Seldon Core 1.17.1 writes and watches with ISTIO_ENABLED=true (networking.istio.io/v1alpha3).
SELDON_ISTIO_CRDS = ("virtualservices.networking.istio.io", "destinationrules.networking.istio.io")


def cache_dir() -> Path:
    base = os.environ.get("MLOPS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "mlops-operator"
    return Path(base) / f"istio-api-{ISTIO_API_VERSION}"


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: the Istio CRD tests must run in CI)", pytrace=False)
    pytest.skip(message)


def crd_file() -> Path:
    """The CRD file of istio.io/api at ISTIO_API_VERSION, downloaded once through the Go module proxy."""
    target = cache_dir() / "customresourcedefinitions.gen.yaml"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        _unavailable(f"Istio's CRDs come from the Go module {ISTIO_API_MODULE}@{ISTIO_API_VERSION}: no `go` on PATH")
    print(f"[istio] go mod download {ISTIO_API_MODULE}@{ISTIO_API_VERSION}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run([go, "mod", "download", "-json", f"{ISTIO_API_MODULE}@{ISTIO_API_VERSION}"], cwd=work,
                             capture_output=True, text=True, timeout=600, check=False,
                             env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"})
    try:
        info = json.loads(out.stdout)
    except ValueError:
        info = {}
    if out.returncode != 0 or info.get("Error") or not info.get("Dir"):
        _unavailable(f"go mod download {ISTIO_API_MODULE}@{ISTIO_API_VERSION} failed: "
                     f"{info.get('Error') or out.stderr[-1000:]}")
    source = Path(info["Dir"]) / CRD_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    shutil.copyfile(source, partial)
    partial.replace(target)
    return target


def istio_crds(names: tuple[str, ...] = SELDON_ISTIO_CRDS) -> list[dict[str, Any]]:
    """The named CustomResourceDefinitions of Istio, as published in istio.io/api."""
    docs = [d for d in yaml.safe_load_all(crd_file().read_text()) if d and d.get("kind") == "CustomResourceDefinition"]
    found = [d for d in docs if d["metadata"]["name"] in names]
    missing = set(names) - {d["metadata"]["name"] for d in found}
    assert not missing, f"{crd_file()}: no CRD {sorted(missing)}"
    for doc in found:
        doc["metadata"].pop("creationTimestamp", None)
        doc.pop("status", None)
    return found
