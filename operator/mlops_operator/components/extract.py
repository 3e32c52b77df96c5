"""Extract: read the dataset by URI and write it as a Parquet artifact, with its content digest.

The reading itself (sources, formats, digest) is :func:`mlops_operator.backends.datasets.load_dataset`,
shared with the DriftMonitor's reference data.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

from mlops_operator.api.errors import DatasetUnavailable
from mlops_operator.backends.datasets import load_dataset
from mlops_operator.backends.storage_credentials import DATASET_STORAGE_OPTIONS_ENV, dataset_storage_options
from mlops_operator.components.errors import reported

# fsspec storage options for the dataset (JSON), set by the operator from spec.dataset.credentialsSecretRef.
STORAGE_OPTIONS_ENV = DATASET_STORAGE_OPTIONS_ENV


@reported("extract")
def run_extract(dataset_uri: str, declared_format: str, output_path: str) -> dict[str, Any]:
    """Step entry: load the dataset, write it as Parquet to ``output_path``.

    Returns ``{"digest", "rows", "columns", "started_at"}``.
    """
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    options = dataset_storage_options()
    frame, digest = load_dataset(dataset_uri, declared_format, options)
    frame.to_parquet(output_path, index=False)
    return {"digest": digest, "rows": int(len(frame)), "columns": list(frame.columns), "started_at": started_at}


@reported("extract")
def run_extract_sources(
    dataset_uri: str,
    declared_format: str,
    target: str,
    features: list[str] | None,
    production_data: dict[str, Any] | None,
    output_path: str,
    production_path: str,
) -> dict[str, Any]:
    """Step entry: the base dataset (the newest object when the URI names many) to ``output_path``
    and, with ``production_data``, the labelled production rows to ``production_path`` (Parquet).

    ``production_data``: ``root`` (where inference logs live), ``namespace``, ``deployment``,
    ``labelsUri``, optional ``since`` / ``until`` (RFC 3339) and ``maxRows``. Returns ``{"digest",
    "rows", "started_at", "sources"}``: one entry per source with its URI, rows and content digest.
    """
    from mlops_operator.backends import training_data

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    options = dataset_storage_options()
    try:
        resolved = training_data.resolve_dataset_uri(dataset_uri, storage_options=options)
    except training_data.NoData as err:
        raise DatasetUnavailable(str(err)) from err
    except (OSError, ValueError) as err:
        raise DatasetUnavailable(f"cannot list {dataset_uri}: {type(err).__name__}: {err}") from err
    frame, digest = load_dataset(resolved, declared_format, options)
    frame.to_parquet(output_path, index=False)
    base: dict[str, Any] = {"name": training_data.BASE, "uri": dataset_uri, "rows": int(len(frame)), "digest": digest}
    if resolved != dataset_uri:
        base["resolvedUri"] = resolved
    sources = [base]
    columns = list(features) if features else [c for c in frame.columns if c != target]
    production_frame = pd.DataFrame(columns=[*columns, target, training_data.TIME_COLUMN])
    if production_data and production_data.get("deployment"):
        since, until = (_timestamp(production_data.get(key)) for key in ("since", "until"))
        try:
            production_frame, info = training_data.read_labelled_production(
                root=production_data["root"], namespace=production_data.get("namespace") or "default",
                deployment=production_data["deployment"], labels_uri=production_data["labelsUri"],
                features=columns, target=target, since=since, until=until,
                max_rows=production_data.get("maxRows"))
        except (OSError, ValueError) as err:
            raise DatasetUnavailable(f"labelled production data of {production_data['deployment']}: "
                                     f"{type(err).__name__}: {err}") from err
        source = {"name": training_data.PRODUCTION,
                  "uri": f"{production_data['root'].rstrip('/')}/inference/{production_data.get('namespace')}/"
                         f"{production_data['deployment']} + {production_data['labelsUri']}",
                  "rows": info["labelled"], "servedRows": info["served"], "unlabelledRows": info["unlabelled"]}
        for key, field in (("digest", "digest"), ("first", "from"), ("last", "to"), ("message", "message")):
            if info.get(key):
                source[field] = info[key]
        if since or until:
            source["range"] = {k: v for k, v in (("since", production_data.get("since")),
                                                  ("until", production_data.get("until"))) if v}
        sources.append(source)
    # Parquet needs one type per column: labels read from CSV may be text.
    production_frame.to_parquet(production_path, index=False)
    return {"digest": digest, "rows": int(len(frame)), "started_at": started_at, "sources": sources}


def _timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
