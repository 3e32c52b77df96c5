"""Model registry on an fsspec artifact store.

Layout (any fsspec URI: ``file://``, ``s3://``, ``memory://``, or a plain path)::

    <root>/models/<namespace>/<model>/<version>/
        _CLAIM               who allocated the version (run name), written exclusively
        model.joblib         the fitted scikit-learn pipeline
        model-settings.json  MLServer model settings (uri ./model.joblib)
        metrics.json         evaluation metrics
        validation.json      gate outcome: validated flag and reasons
        profile.json         reference data profile for drift monitoring
        lineage.json         dataset, estimator, pipeline, operator version, run, times
        _COMPLETE            written last; from then on the version is immutable

The registry is per namespace: a model name means the model of that name in the namespace of the
ModelTraining that trains it, so two namespaces may use the same name and get separate version
sequences (``<root>/inference/<namespace>/`` is the namespace's inference logs, see
:mod:`mlops_operator.backends.serving_local.inference_log`).

Versions are positive integers, allocated by creating ``<version>/_CLAIM`` in exclusive mode
(``xb``), so two concurrent allocations never get the same number. An allocation keyed by a run
name returns the version that run already claimed, so a re-executed export reuses its version.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

MODEL_FILE = "model.joblib"
SETTINGS_FILE = "model-settings.json"
METRICS_FILE = "metrics.json"
VALIDATION_FILE = "validation.json"
PROFILE_FILE = "profile.json"
LINEAGE_FILE = "lineage.json"
CLAIM_FILE = "_CLAIM"
COMPLETE_FILE = "_COMPLETE"

# Model names become path segments; keep them to DNS-label-like names (as the CRD does).
_MODEL_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
# Namespaces are DNS labels (RFC 1123), as Kubernetes has them.
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Enough for any realistic burst of concurrent allocations; a bound so a broken store cannot spin.
_MAX_CLAIM_ATTEMPTS = 1000


class VersionImmutable(RuntimeError):
    """Raised when writing into a model version that is already complete."""


def open_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``uri``, with no stale listings.

    fsspec shares one filesystem object per set of options and s3fs caches directory listings in
    it; versions and log files are written by other processes (training runs, routers), so every
    look starts from a fresh listing.
    """
    fs, path = url_to_fs(uri)
    fs.invalidate_cache()
    return fs, path


def default_artifact_root(data_dir: str | Path) -> str:
    """The default artifact root under the operator's data dir, as a ``file://`` URI."""
    return Path(data_dir).resolve().joinpath("artifacts").as_uri()


def namespace_models_uri(root: str, namespace: str) -> str:
    """URI of one namespace's part of the registry: ``<root>/models/<namespace>``."""
    _check_namespace(namespace)
    return f"{root.rstrip('/')}/models/{namespace}"


def model_uri(root: str, namespace: str, model: str, version: int) -> str:
    """URI of a model version's directory (what MLServer/Seldon load: it holds model-settings.json)."""
    _check_model_name(model)
    return f"{namespace_models_uri(root, namespace)}/{model}/{int(version)}"


def file_uri(root: str, namespace: str, model: str, version: int, name: str) -> str:
    """URI of one file of a model version, e.g. ``file_uri(root, "ml", "iris", 3, PROFILE_FILE)``."""
    return f"{model_uri(root, namespace, model, version)}/{name}"


def _model_dir(root: str, namespace: str, model: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a model's directory (its versions are below it)."""
    _check_model_name(model)
    fs, base = open_fs(namespace_models_uri(root, namespace))
    return fs, f"{base.rstrip('/')}/{model}"


def allocate_version(root: str, namespace: str, model: str, run_name: str | None = None) -> int:
    """Claim the next version number of ``model`` and return it.

    Monotonic: the new number is above every version claimed so far. Safe against concurrent
    callers: the claim file is created exclusively, and a caller that loses the race moves on to
    the next number. With ``run_name``, a version already claimed by that run is returned instead
    of a new one (idempotent re-execution of an export step).
    """
    if run_name:
        existing = version_for_run(root, namespace, model, run_name)
        if existing is not None:
            return existing
    fs, model_dir = _model_dir(root, namespace, model)
    candidate = max(_claimed_versions(fs, model_dir), default=0) + 1
    claim = json.dumps({"run": run_name, "claimedAt": _now()}).encode()
    for _ in range(_MAX_CLAIM_ATTEMPTS):
        version_dir = f"{model_dir}/{candidate}"
        fs.makedirs(version_dir, exist_ok=True)
        try:
            with fs.open(f"{version_dir}/{CLAIM_FILE}", "xb") as handle:
                handle.write(claim)
            return candidate
        except OSError as error:
            if not _already_exists(error):
                raise
            candidate += 1
    raise RuntimeError(f"could not claim a version of model {namespace}/{model} under {root}")


def version_for_run(root: str, namespace: str, model: str, run_name: str) -> int | None:
    """The version claimed by ``run_name``, or None. The lowest wins if there are several."""
    fs, model_dir = _model_dir(root, namespace, model)
    for version in _claimed_versions(fs, model_dir):
        claim = _read_json(fs, f"{model_dir}/{version}/{CLAIM_FILE}")
        if claim and claim.get("run") == run_name:
            return version
    return None


def list_versions(root: str, namespace: str, model: str, include_incomplete: bool = False) -> list[int]:
    """Version numbers of ``model``, ascending. Only complete versions unless ``include_incomplete``."""
    fs, model_dir = _model_dir(root, namespace, model)
    versions = _claimed_versions(fs, model_dir)
    if include_incomplete:
        return versions
    return [v for v in versions if fs.exists(f"{model_dir}/{v}/{COMPLETE_FILE}")]


def is_complete(root: str, namespace: str, model: str, version: int) -> bool:
    """Whether the version has been fully written (and so is immutable)."""
    fs, path = open_fs(file_uri(root, namespace, model, version, COMPLETE_FILE))
    return fs.exists(path)


def read_model_version(root: str, namespace: str, model: str, version: int) -> dict[str, Any]:
    """Everything the operator needs about a complete model version.

    Returns ``{"model", "version", "uri", "modelFileUri", "settingsUri", "profileUri",
    "metrics", "validated", "validationReasons", "lineage", "run"}``.
    Raises FileNotFoundError if the version does not exist or is not complete.
    """
    uri = model_uri(root, namespace, model, version)
    fs, path = open_fs(uri)
    if not fs.exists(f"{path}/{COMPLETE_FILE}"):
        raise FileNotFoundError(f"model {namespace}/{model} has no complete version {version} under {root}")
    metrics = _read_json(fs, f"{path}/{METRICS_FILE}") or {}
    validation = _read_json(fs, f"{path}/{VALIDATION_FILE}") or {}
    lineage = _read_json(fs, f"{path}/{LINEAGE_FILE}") or {}
    return {
        "model": model,
        "version": int(version),
        "uri": uri,
        "modelFileUri": f"{uri}/{MODEL_FILE}",
        "settingsUri": f"{uri}/{SETTINGS_FILE}",
        "profileUri": f"{uri}/{PROFILE_FILE}",
        "metrics": metrics,
        "validated": bool(validation.get("validated", False)),
        "validationReasons": list(validation.get("reasons", [])),
        "lineage": lineage,
        "run": (lineage.get("run") or {}).get("name"),
    }


def latest_version(root: str, namespace: str, model: str, validated_only: bool = True) -> dict[str, Any] | None:
    """The newest complete (and, by default, validated) version as ``read_model_version`` gives it."""
    for version in reversed(list_versions(root, namespace, model)):
        info = read_model_version(root, namespace, model, version)
        if info["validated"] or not validated_only:
            return info
    return None


def publish_model_version(
    root: str,
    namespace: str,
    model: str,
    version: int,
    *,
    model_file: str | Path,
    metrics: dict[str, float],
    validated: bool,
    reasons: list[str],
    profile: dict[str, Any],
    lineage: dict[str, Any],
    signature: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a claimed version's files, ``_COMPLETE`` last, and return ``read_model_version``.

    ``model_file`` is a local joblib file, copied as ``model.joblib``. ``signature`` is the model's
    V2 ``inputs``/``outputs`` (and ``parameters``) for ``model-settings.json``. Raises
    VersionImmutable if the version is already complete.
    """
    uri = model_uri(root, namespace, model, version)
    fs, path = open_fs(uri)
    if fs.exists(f"{path}/{COMPLETE_FILE}"):
        raise VersionImmutable(f"model {namespace}/{model} version {version} is complete and cannot change")
    fs.makedirs(path, exist_ok=True)
    with open(model_file, "rb") as src, fs.open(f"{path}/{MODEL_FILE}", "wb") as dst:
        dst.write(src.read())
    _write_json(fs, f"{path}/{SETTINGS_FILE}", mlserver_model_settings(model, version, signature))
    _write_json(fs, f"{path}/{METRICS_FILE}", metrics)
    _write_json(fs, f"{path}/{VALIDATION_FILE}", {"validated": bool(validated), "reasons": list(reasons)})
    _write_json(fs, f"{path}/{PROFILE_FILE}", profile)
    _write_json(fs, f"{path}/{LINEAGE_FILE}", lineage)
    _write_json(fs, f"{path}/{COMPLETE_FILE}", {"completedAt": _now()})
    return read_model_version(root, namespace, model, version)


def mlserver_model_settings(model: str, version: int, signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """MLServer ``model-settings.json`` for a scikit-learn model stored beside it.

    With ``signature`` (``{"inputs", "outputs", "parameters"?}``, see
    :func:`mlops_operator.components.export.model_signature`) the model's V2 metadata lists its inputs and
    outputs, and the router refuses requests that do not fit them.
    """
    settings: dict[str, Any] = {
        "name": model,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "platform": "sklearn",
        "versions": [str(int(version))],
        "parameters": {"uri": f"./{MODEL_FILE}", "version": str(int(version))},
    }
    if signature:
        settings["inputs"] = signature["inputs"]
        settings["outputs"] = signature["outputs"]
        settings["parameters"].update(signature.get("parameters") or {})
    return settings


def read_json_uri(uri: str) -> Any:
    """Read a JSON document from any fsspec URI (e.g. a version's profile.json); http(s) under the URI policy."""
    from mlops_operator.backends import uri_policy

    if uri_policy.is_http(uri):
        return json.loads(uri_policy.http_get(uri, uri_policy.environment_policy()))
    fs, path = open_fs(uri)
    with fs.open(path, "rt") as handle:
        return json.load(handle)


def _already_exists(error: OSError) -> bool:
    """Whether an exclusive create failed because the file exists.

    s3fs raises FileExistsError when the server's 412 names the If-None-Match condition, as AWS
    does; MinIO answers the same 412 PreconditionFailed without naming it, which s3fs turns into
    an OSError. The create sends no other precondition, so that 412 also means "exists".
    """
    if isinstance(error, FileExistsError):
        return True
    response = getattr(error.__cause__, "response", None) or {}
    return (response.get("Error") or {}).get("Code") == "PreconditionFailed"


def _claimed_versions(fs: fsspec.AbstractFileSystem, model_dir: str) -> list[int]:
    # One listing (a prefix listing on S3), not a request per version.
    try:
        claims = fs.glob(f"{model_dir}/*/{CLAIM_FILE}")
    except FileNotFoundError:
        return []
    versions = []
    for claim in claims:
        name = claim.rstrip("/").rsplit("/", 2)[-2]
        if name.isdigit() and int(name) > 0:
            versions.append(int(name))
    return sorted(versions)


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    try:
        with fs.open(path, "rt") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def _write_json(fs: fsspec.AbstractFileSystem, path: str, value: Any) -> None:
    # Keys keep their order: a profile's features are listed in the model's input order.
    with fs.open(path, "wt") as handle:
        json.dump(value, handle, indent=2, default=str)


def _check_model_name(model: str) -> None:
    if not _MODEL_NAME.match(model or ""):
        raise ValueError(f"invalid model name {model!r}: use lowercase letters, digits, '-', '.', '_'")


def _check_namespace(namespace: str) -> None:
    if not _NAMESPACE.match(namespace or ""):
        raise ValueError(f"invalid namespace {namespace!r}: a namespace is a DNS label (lowercase letters, digits, '-')")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
