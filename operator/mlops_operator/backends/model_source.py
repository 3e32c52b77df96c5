"""Where a ModelDeployment's model comes from: an explicit URI, or a ModelTraining's newest
validated model; whether it can be loaded; and a local copy for the local serving backend."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse


from mlops_operator.api.modeldeployment import ModelSource
from mlops_operator.backends import artifacts, kube, uri_policy
from mlops_operator.reconcile.modeldeployment import ModelRef

log = logging.getLogger("mlops_operator.deployment")

MODEL_FILES = (artifacts.SETTINGS_FILE, artifacts.MODEL_FILE)
COPIED_MARKER = ".mlops-copied"


class ModelUnavailable(Exception):
    """The model named by the source is missing or cannot be read."""


class WaitingForModel(Exception):
    """The source names no model yet (its ModelTraining has not validated one)."""


def _metrics(uri: str) -> dict[str, float]:
    try:
        data = artifacts.read_json_uri(f"{uri.rstrip('/')}/{artifacts.METRICS_FILE}")
    except (OSError, ValueError, ImportError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}


def check_model_uri(uri: str) -> None:
    """Raise ModelUnavailable unless ``uri`` is a directory holding a model (model-settings.json or
    model.joblib). A scheme whose filesystem is not installed here (s3 without s3fs) is not checked:
    the serving backend reports the failure instead. http(s) is read under the URI policy (its
    model-settings.json or model.joblib, as a directory cannot be listed over HTTP)."""
    if uri_policy.is_http(uri):
        _http_model_files(uri)
        return
    try:
        fs, path = artifacts.open_fs(uri)
    except (ImportError, ValueError) as error:
        log.debug("not checking %s: %s", uri, error)
        return
    try:
        if not fs.exists(path):
            raise ModelUnavailable(f"model URI {uri} does not exist")
        if not any(fs.exists(f"{path.rstrip('/')}/{name}") for name in MODEL_FILES):
            raise ModelUnavailable(f"model URI {uri} holds neither {' nor '.join(MODEL_FILES)}")
    except ModelUnavailable:
        raise
    except Exception as error:  # permission, network: the URI cannot be read now
        raise ModelUnavailable(f"model URI {uri} cannot be read: {type(error).__name__}: {error}") from None


async def resolve_model(source: ModelSource, namespace: str) -> ModelRef:
    """The model version the source names now, checked to exist.

    Raises WaitingForModel (no validated model yet) or ModelUnavailable (missing or unreadable).
    """
    if source.uri:
        uri, version = source.uri.rstrip("/"), str(source.version)
    else:
        training = await kube.get_object("modeltrainings", namespace, str(source.from_training))
        if training is None:
            raise WaitingForModel(f"ModelTraining {source.from_training} does not exist")
        validated = (training.get("status") or {}).get("latestValidatedModel") or {}
        if not validated.get("uri") or validated.get("version") is None:
            raise WaitingForModel(f"ModelTraining {source.from_training} has not validated a model yet")
        uri, version = str(validated["uri"]).rstrip("/"), str(validated["version"])
        metrics = {k: float(v) for k, v in (validated.get("metrics") or {}).items()}
        await asyncio.to_thread(check_model_uri, uri)
        return ModelRef(version, uri, metrics or await asyncio.to_thread(_metrics, uri))
    await asyncio.to_thread(check_model_uri, uri)
    return ModelRef(version, uri, await asyncio.to_thread(_metrics, uri))


def _http_model_files(uri: str) -> dict[str, bytes]:
    """A model's files at an http(s) directory URI, read under the URI policy (model-settings.json is
    optional). Raises ModelUnavailable."""
    policy, files = uri_policy.environment_policy(), {}
    for name in MODEL_FILES:
        try:
            files[name] = uri_policy.http_get(f"{uri.rstrip('/')}/{name}", policy)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise ModelUnavailable(f"model URI {uri} cannot be read: {error}") from None
    if artifacts.MODEL_FILE not in files and artifacts.SETTINGS_FILE not in files:
        raise ModelUnavailable(f"model URI {uri} holds neither {' nor '.join(MODEL_FILES)}")
    return files


def local_model_dir(uri: str, cache_dir: Path) -> Path:
    """A local directory holding the model at ``uri``: the directory itself for file:// URIs and
    plain paths, else a copy under ``cache_dir`` (made once; model versions are immutable)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    target = cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (target / COPIED_MARKER).exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if uri_policy.is_http(uri):
            partial.mkdir(parents=True)
            for name, content in _http_model_files(uri).items():
                (partial / name).write_bytes(content)
        else:
            fs, path = artifacts.open_fs(uri)
            fs.get(path.rstrip("/") + "/", str(partial) + "/", recursive=True)
    except Exception as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelUnavailable(f"cannot copy {uri} to the local backend: {type(error).__name__}: {error}") from None
    (partial / COPIED_MARKER).write_text(uri)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target

