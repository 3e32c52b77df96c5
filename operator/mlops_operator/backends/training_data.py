"""Training data that grows: a dataset URI resolved per run to the newest data, and labelled
production data (the requests a ModelDeployment served, joined with ground-truth labels).

Blocking I/O through fsspec; called by the pipeline's extract step.

Newest data. A dataset URI names one object, or many:

* a glob (``s3://bucket/sales/*/part.parquet``) or a prefix ending in ``/``: each run reads the
  newest matching object, by name (partition names such as ``dt=2026-03-01`` or
  ``2026/03/01`` sort by date), CSV and Parquet files only;
* a date template (``s3://bucket/sales/dt={date:%Y-%m-%d}/part.parquet``, ``{date}`` meaning
  ``{date:%Y-%m-%d}``): each run reads the newest partition whose date is not after the run's
  date (UTC), so a partition that is late does not fail the run.

Labelled production data. The rows of the deployment's inference log (successful, non-shadow;
the same reader as the DriftMonitor) in a time range, joined on ``(request id, row)`` with the
ground-truth labels (the DriftMonitor's label feed: columns ``id``, ``label``, optional ``row``).
Served rows without a label are counted, never trained on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from datetime import datetime, timezone
from typing import Any

import pandas as pd

# Columns the pipeline adds to training frames beside the features and the target.
SOURCE_COLUMN = "_mlops_source"
TIME_COLUMN = "_mlops_ts"
WEIGHT_COLUMN = "_mlops_weight"
BASE, PRODUCTION = "base", "production"

_TEMPLATE = re.compile(r"\{date(?::([^}]*))?\}")
_GLOB_CHARS = set("*?[")
_DATA_SUFFIXES = (".csv", ".csv.gz", ".txt", ".parquet", ".pq")


class NoData(LookupError):
    """Nothing matches a dataset URI (the message says what was looked for)."""


def is_multi_object(uri: str) -> bool:
    """Whether a dataset URI names many objects (glob, prefix or date template) of which the newest is read."""
    if uri.startswith("sklearn://"):
        return False
    path = uri.split("?", 1)[0]
    return path.endswith("/") or bool(_GLOB_CHARS & set(path)) or bool(_TEMPLATE.search(path))


def resolve_dataset_uri(uri: str, now: datetime | None = None, storage_options: dict | None = None) -> str:
    """The one object a dataset URI names for a run at ``now``: itself, or the newest match.

    Raises NoData when a glob, prefix or template matches nothing (up to ``now`` for a template).
    """
    if not is_multi_object(uri):
        return uri
    if uri.lower().startswith(("http://", "https://")):
        from mlops_operator.api.errors import InvalidSpec

        # Listing would go through fsspec's HTTP filesystem, which follows links and redirects past the URI policy.
        raise InvalidSpec(f"{uri}: a prefix, glob or date template needs a store that can be listed (s3, gs, file); "
                          "over http(s) name one object")
    from fsspec.core import url_to_fs

    now = now or datetime.now(timezone.utc)
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    template = _TEMPLATE.search(uri)
    fs, _ = url_to_fs(_TEMPLATE.sub("*", uri), **(storage_options or {}))
    if template:
        pattern = _TEMPLATE.sub("*", uri)
        _, glob_path = url_to_fs(pattern, **(storage_options or {}))
        candidates = []
        matcher = _template_regex(fs._strip_protocol(uri) if hasattr(fs, "_strip_protocol") else uri)
        for path in fs.glob(glob_path):
            match = matcher.fullmatch(path)
            if not match:
                continue
            stamp = _template_date(match, uri)
            if stamp is not None and stamp <= now.replace(tzinfo=None):
                candidates.append((stamp, path))
        if not candidates:
            raise NoData(f"no object matches {uri} with a date up to {now:%Y-%m-%d %H:%M} UTC")
        return _with_scheme(fs, scheme, max(candidates)[1])
    _, path = url_to_fs(uri, **(storage_options or {}))
    if uri.split("?", 1)[0].endswith("/"):
        found = [p for p in fs.find(path) if p.lower().endswith(_DATA_SUFFIXES)]
    else:
        found = [p for p in fs.glob(path) if not fs.isdir(p)]
    if not found:
        raise NoData(f"no CSV or Parquet object matches {uri}")
    return _with_scheme(fs, scheme, max(found))


def _with_scheme(fs: Any, scheme: str, path: str) -> str:
    if scheme in ("", "file://"):
        return f"file://{path}" if scheme else path
    return fs.unstrip_protocol(path) if hasattr(fs, "unstrip_protocol") else scheme + path


def _template_regex(uri_path: str) -> re.Pattern[str]:
    """A regex of a templated path: each ``{date:FMT}`` becomes a named group, ``*`` matches a segment part."""
    parts, last = [], 0
    for index, match in enumerate(_TEMPLATE.finditer(uri_path)):
        parts.append(_glob_regex(uri_path[last:match.start()]))
        parts.append(f"(?P<d{index}>.+?)")
        last = match.end()
    parts.append(_glob_regex(uri_path[last:]))
    return re.compile("".join(parts))


def _glob_regex(text: str) -> str:
    return fnmatch.translate(text).removeprefix("(?s:").removesuffix(")\\Z").replace(".*", "[^/]*")


def _template_date(match: re.Match[str], uri: str) -> datetime | None:
    stamp = None
    for index, template in enumerate(_TEMPLATE.finditer(uri)):
        fmt = template.group(1) or "%Y-%m-%d"
        try:
            value = datetime.strptime(match.group(f"d{index}"), fmt)
        except ValueError:
            return None
        stamp = value if stamp is None else max(stamp, value)
    return stamp


def frame_digest(frame: pd.DataFrame, label: str) -> str:
    """sha256 of a canonical CSV dump of a frame (for data that is not one file)."""
    canonical = f"{label}\n".encode() + frame.to_csv(index=False).encode()
    return hashlib.sha256(canonical).hexdigest()


def read_labelled_production(
    *,
    root: str,
    namespace: str,
    deployment: str,
    labels_uri: str,
    features: list[str],
    target: str,
    since: datetime | None,
    until: datetime | None,
    max_rows: int | None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Labelled production rows and what was found: ``(frame, info)``.

    The frame has the feature columns, the target and :data:`TIME_COLUMN`, oldest first, at most
    ``max_rows`` (the newest). ``info``: ``served`` (rows in the range), ``labelled``, ``unlabelled``,
    ``first``/``last`` (RFC 3339), ``digest`` and a ``message`` when nothing could be used (no
    inference log yet, no labels yet). A label feed that exists but cannot be read, or a log whose
    features do not match, raises ValueError with a readable message.
    """
    from fsspec.core import url_to_fs

    from mlops_operator.backends.drift_data import read_labels
    from mlops_operator.backends.serving_local.inference_log import inference_log_dir, read_window

    info: dict[str, Any] = {"served": 0, "labelled": 0, "unlabelled": 0}
    empty = pd.DataFrame(columns=[*features, target, TIME_COLUMN])
    log_dir = inference_log_dir(root, namespace, deployment)
    fs, path = url_to_fs(log_dir)
    if not fs.exists(path):
        info["message"] = f"ModelDeployment {deployment} has no inference log yet ({log_dir})"
        return empty, info
    window = read_window(root, namespace, deployment, since=since, include_shadow=False, include_errors=False,
                         feature_names=features)
    if until is not None and not window.empty:
        window = window[pd.to_datetime(window["ts"], utc=True) <= pd.Timestamp(until)]
    info["served"] = int(len(window))
    if window.empty:
        info["message"] = f"no requests served by {deployment} in the range"
        return empty, info
    missing = [name for name in features if name not in window.columns]
    if missing:
        raise ValueError(f"the inference log of {deployment} lacks the feature(s) {', '.join(missing[:8])} "
                         f"(it has {', '.join(list(window.attrs.get('feature_columns') or [])[:8])})")
    try:
        labels = read_labels(labels_uri)
    except FileNotFoundError as error:
        info["unlabelled"] = info["served"]
        info["message"] = f"no ground-truth labels yet: {error}"
        return empty, info
    table = labels.rename(columns={"id": "request_id"})
    table["request_id"] = table["request_id"].astype(str)
    if "row" in table.columns:
        table["row"] = pd.to_numeric(table["row"], errors="coerce").fillna(0).astype("int64")
    else:
        table = table.assign(row=0)
    table = table.drop_duplicates(["request_id", "row"], keep="last")[["request_id", "row", "label"]]
    rows = window.assign(request_id=window["request_id"].astype(str), row=window["row"].astype("int64"))
    joined = rows.merge(table, on=["request_id", "row"], how="inner")
    joined = joined[joined["label"].notna()].sort_values("ts", kind="stable")
    info["unlabelled"] = info["served"] - int(len(joined))
    if max_rows is not None and len(joined) > int(max_rows):  # KFP hands dict numbers over as floats
        joined = joined.iloc[len(joined) - int(max_rows):]
    frame = joined[features].reset_index(drop=True)
    frame[target] = joined["label"].to_numpy()
    frame[TIME_COLUMN] = pd.to_datetime(joined["ts"], utc=True).map(_rfc3339).to_numpy()
    info["labelled"] = int(len(frame))
    if not frame.empty:
        info["first"], info["last"] = frame[TIME_COLUMN].iloc[0], frame[TIME_COLUMN].iloc[-1]
        info["digest"] = frame_digest(frame, f"production {namespace}/{deployment} {labels_uri}")
    else:
        info["message"] = f"none of the {info['served']} served rows in the range has a label in {labels_uri}"
    return frame, info


def _rfc3339(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_rejections(frame: pd.DataFrame, target: str, checks: dict[str, Any] | None,
                   ) -> tuple[pd.Series, dict[str, int]]:
    """Which production rows fail the row-level data checks: ``(rejected mask, {check: count})``.

    A row is rejected for a missing label, a missing value in a column whose check allows none
    (``maxMissingFraction: 0``), a value outside a column's min/max, a value outside its allowed
    values. Counts are per check; a row failing two
    checks counts in both.
    """
    checks = _snake_keys(checks or {})
    rejected = pd.Series(False, index=frame.index)
    counts: dict[str, int] = {}

    def reject(name: str, mask: pd.Series) -> None:
        nonlocal rejected
        mask = mask.fillna(False).astype(bool)
        if mask.any():
            counts[name] = counts.get(name, 0) + int(mask.sum())
            rejected = rejected | mask

    if target in frame.columns:
        reject(f"label {target} missing", frame[target].isna())
    columns = checks.get("columns") or []
    if isinstance(columns, dict):
        columns = [{"name": name, **(spec or {})} for name, spec in columns.items()]
    for spec in columns:
        name = spec.get("name")
        if name not in frame.columns or name == target:
            continue
        values = frame[name]
        if spec.get("max_missing_fraction") == 0:
            reject(f"{name} missing", values.isna())
        numbers = pd.to_numeric(values, errors="coerce")
        if spec.get("min") is not None:
            reject(f"{name} below min {spec['min']:g}", numbers < float(spec["min"]))
        if spec.get("max") is not None:
            reject(f"{name} above max {spec['max']:g}", numbers > float(spec["max"]))
        if spec.get("allowed_values"):
            allowed = {str(v) for v in spec["allowed_values"]}
            reject(f"{name} not an allowed value", values.notna() & ~values.astype(str).isin(allowed))
    return rejected, counts


def _snake_keys(value: Any) -> Any:
    """camelCase keys (the API's spelling) as snake_case, recursively."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", str(k)).lower(): _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value
