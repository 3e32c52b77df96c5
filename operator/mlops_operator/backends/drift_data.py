"""What a DriftMonitor check reads: reference profiles and datasets, training metrics, the
inference log window, ground-truth labels. Blocking I/O through fsspec; call it off the event loop.

Profiles of model versions are cached by URI (a complete version never changes); profiles built
from a reference dataset are cached by the dataset's URI and fsspec's ``ukey`` (so a rewritten
file is read again). Labels and the inference log are read on every check.
"""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import fsspec

from mlops_operator.backends.artifacts import METRICS_FILE, PROFILE_FILE, open_fs, read_json_uri
from mlops_operator.backends.serving_local.inference_log import inference_log_dir, read_window

if TYPE_CHECKING:  # loaded on first use, not at operator start-up (see mlops_operator.drift)
    import pandas as pd

_DATASET_CACHE_SIZE = 8
_dataset_profiles: OrderedDict[tuple[str, str | None, str], dict[str, Any]] = OrderedDict()
_dataset_lock = threading.Lock()
LABEL_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def _check_profile(profile: Any, uri: str) -> dict[str, Any]:
    if not isinstance(profile, dict) or "formatVersion" not in profile or not isinstance(profile.get("features"), dict):
        raise ValueError(f"{uri} is not a data profile (no formatVersion/features)")
    return profile


def read_profile(uri: str) -> dict[str, Any]:
    """A profile.json by URI (e.g. spec.reference.profileUri); read every time (it may change)."""
    return _check_profile(read_json_uri(uri), uri)


@functools.lru_cache(maxsize=64)
def _model_version_profile(uri: str) -> dict[str, Any]:
    return read_profile(uri)


def model_version_profile_uri(model_uri: str) -> str:
    """Where a model version (its directory URI, a deployment's status.stableUri) keeps its profile."""
    return f"{model_uri.rstrip('/')}/{PROFILE_FILE}"


def model_version_profile(model_uri: str) -> dict[str, Any]:
    """The training profile of a model version; cached (versions are immutable)."""
    return _model_version_profile(model_version_profile_uri(model_uri))


@functools.lru_cache(maxsize=64)
def model_input_features(model_uri: str) -> tuple[str, ...] | None:
    """The feature columns a model version was trained on, in its input order (lineage.json), or
    None. A V2 request's 2-D tensor carries its columns in this order; cached (versions are immutable)."""
    try:
        lineage = read_json_uri(f"{model_uri.rstrip('/')}/lineage.json")
    except FileNotFoundError:
        return None
    features = lineage.get("features") if isinstance(lineage, dict) else None
    return tuple(features) if isinstance(features, list) and features else None


def read_training_metrics(model_uri: str) -> dict[str, Any] | None:
    """metrics.json of a model version, or None when it has none."""
    try:
        metrics = read_json_uri(f"{model_uri.rstrip('/')}/{METRICS_FILE}")
    except FileNotFoundError:
        return None
    return metrics if isinstance(metrics, dict) else None


def _dataset_key(uri: str) -> str:
    if uri.startswith("sklearn://"):
        return uri
    fs, path = open_fs(uri)
    return str(fs.ukey(path))


def dataset_profile(uri: str, target: str | None) -> dict[str, Any]:
    """A profile of a reference dataset (CSV/Parquet through fsspec, or sklearn://<name>), the
    target column left out. Built once per dataset content (bounded size, so cheap to keep)."""
    from mlops_operator.drift import build_profile
    from mlops_operator.backends.datasets import load_dataset  # the loader training uses too

    key = (uri, target, _dataset_key(uri))
    with _dataset_lock:
        if key in _dataset_profiles:
            _dataset_profiles.move_to_end(key)
            return _dataset_profiles[key]
    frame, _digest = load_dataset(uri)
    if target and target not in frame.columns:
        raise ValueError(f"reference dataset {uri} has no target column {target!r}")
    profile = build_profile(frame, exclude=(target,) if target else ())
    with _dataset_lock:
        _dataset_profiles[key] = profile
        while len(_dataset_profiles) > _DATASET_CACHE_SIZE:
            _dataset_profiles.popitem(last=False)
    return profile


def inference_log_exists(root: str, namespace: str, deployment: str) -> bool:
    """Whether the deployment has an inference log directory yet."""
    fs, path = open_fs(inference_log_dir(root, namespace, deployment))
    return bool(fs.exists(path))


def read_inference_window(
    root: str,
    namespace: str,
    deployment: str,
    *,
    max_rows: int | None,
    since: datetime | None,
    feature_names: Sequence[str] | None,
) -> pd.DataFrame:
    """The newest successful, non-shadow rows of the deployment's inference log (see read_window)."""
    return read_window(root, namespace, deployment, max_rows=max_rows, since=since, include_shadow=False,
                       include_errors=False, feature_names=list(feature_names) if feature_names else None)


def _read_table(fs: fsspec.AbstractFileSystem, path: str) -> pd.DataFrame:
    import pandas as pd
    with fs.open(path, "rb") as handle:
        raw = handle.read()
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return pd.read_parquet(io.BytesIO(raw))
    return pd.read_csv(io.BytesIO(raw), compression="gzip" if lower.endswith(".gz") else None)


def read_labels(uri: str) -> pd.DataFrame:
    """Ground-truth labels: a CSV or Parquet file, or a directory of them (concatenated in name
    order), with columns ``id``, ``label`` and optionally ``row``. Raises FileNotFoundError or
    ValueError with a readable message."""
    import pandas as pd
    from mlops_operator.backends import uri_policy

    if uri_policy.is_http(uri):  # one file, read under the URI policy (no listing over HTTP)
        raw = uri_policy.http_get(uri, uri_policy.environment_policy())
        lower = uri.split("?", 1)[0].lower()
        labels = (pd.read_parquet(io.BytesIO(raw)) if lower.endswith((".parquet", ".pq"))
                  else pd.read_csv(io.BytesIO(raw), compression="gzip" if lower.endswith(".gz") else None))
        return _checked_labels(labels, uri)
    fs, path = open_fs(uri)
    if fs.isdir(path):
        files = sorted(p for p in fs.ls(path, detail=False) if p.lower().endswith(LABEL_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"no CSV or Parquet files under {uri}")
    elif fs.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"{uri} does not exist")
    frames = [_read_table(fs, file) for file in files]
    return _checked_labels(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], uri)


def _checked_labels(labels: pd.DataFrame, uri: str) -> pd.DataFrame:
    labels.columns = [str(column) for column in labels.columns]
    missing = [column for column in ("id", "label") if column not in labels.columns]
    if missing:
        raise ValueError(f"labels {uri} lack the column(s) {', '.join(missing)} "
                         f"(found {', '.join(labels.columns)})")
    return labels


# ---------------------------------------------------------------------------------------------
# Drift reports: <root>/drift-reports/<namespace>/<monitor>/{<time>.html, latest.html, history.jsonl}

REPORT_HISTORY_LIMIT = 500
"""history.jsonl keeps the last this many checks (the concept-drift chart's points)."""


def report_dir(root: str, namespace: str, monitor: str) -> str:
    """Where a DriftMonitor's reports live: under the artifact root, beside the inference log."""
    return f"{str(root).rstrip('/')}/drift-reports/{namespace}/{monitor}"


def write_report(root: str, namespace: str, monitor: str, page: str, stamp: str) -> tuple[str, str]:
    """Write one report (and latest.html); returns (its URI, latest.html's URI)."""
    directory = report_dir(root, namespace, monitor)
    fs, path = open_fs(directory)
    fs.makedirs(path, exist_ok=True)
    name = stamp.replace(":", "").replace("-", "") + ".html"
    data = page.encode("utf-8")
    for target in (name, "latest.html"):
        with fs.open(f"{path}/{target}", "wb") as handle:
            handle.write(data)
    return f"{directory}/{name}", f"{directory}/latest.html"


def record_check(root: str, namespace: str, monitor: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Append one check to history.jsonl (bounded; rewritten whole, so it works on S3 too) and return
    the history, oldest first."""
    import json

    directory = report_dir(root, namespace, monitor)
    fs, path = open_fs(directory)
    fs.makedirs(path, exist_ok=True)
    target = f"{path}/history.jsonl"
    history: list[dict[str, Any]] = []
    if fs.exists(target):
        with fs.open(target, "rb") as handle:
            for line in handle.read().decode("utf-8", errors="replace").splitlines():
                try:
                    history.append(json.loads(line))
                except ValueError:
                    continue  # a torn line from an interrupted write
    history = (history + [entry])[-REPORT_HISTORY_LIMIT:]
    with fs.open(target, "wb") as handle:
        handle.write("".join(json.dumps(item) + "\n" for item in history).encode("utf-8"))
    return history


def read_report(uri: str) -> bytes:
    """A report's bytes by URI (kubectl mlops report)."""
    with fsspec.open(uri, "rb") as handle:
        return handle.read()
