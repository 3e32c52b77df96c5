"""Datasets by URI: the loader the training pipeline's extract step and the drift data backend share.

Sources: any fsspec URI or plain path (CSV, optionally gzip'd, and Parquet, by extension or an
explicit format), and ``sklearn://<name>`` for the datasets bundled with scikit-learn (no
download): iris, wine, breast_cancer, digits (classification) and diabetes (regression). The
sklearn frames keep their label in the column ``target``.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import fsspec
import pandas as pd

from mlops_operator.api.errors import DatasetUnavailable, InvalidSpec
from mlops_operator.backends import uri_policy

SKLEARN_SCHEME = "sklearn://"
SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")
FORMATS = ("csv", "parquet")
HTTP_TIMEOUT_SECONDS = 60.0
"""How long one HTTP read of a dataset may take (connect and each read), not the whole transfer."""


def dataset_format(uri: str, declared: str = "") -> str:
    """The dataset's format: the declared one (csv|parquet), else from the URI's extension."""
    declared = (declared or "").strip().lower()
    if declared and declared != "auto":
        if declared not in FORMATS:
            raise InvalidSpec(f"unknown dataset format {declared!r}; use one of {', '.join(FORMATS)}")
        return declared
    name = uri.split("?", 1)[0].lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".txt")):
        return "csv"
    raise InvalidSpec(f"cannot tell the format of {uri!r} from its extension; set the dataset format (csv or parquet)")


def load_dataset(uri: str, declared_format: str = "", storage_options: dict[str, Any] | None = None
                 ) -> tuple[pd.DataFrame, str]:
    """Load a dataset and return ``(frame, sha256 hex digest)``.

    ``storage_options`` go to fsspec (credentials of the dataset's store; default: the environment's).
    The digest is of the source bytes, or, for ``sklearn://`` datasets, of a canonical CSV dump.
    Raises DatasetUnavailable when the source is missing, unreachable, unreadable or refused by the
    URI policy at fetch time (http(s): see :func:`mlops_operator.backends.uri_policy.http_get`), and
    InvalidSpec for an unknown format or sklearn dataset name.
    """
    if uri.startswith(SKLEARN_SCHEME):
        return _load_sklearn(uri[len(SKLEARN_SCHEME):].strip("/"))
    fmt = dataset_format(uri, declared_format)
    try:
        if uri.lower().startswith(("http://", "https://")):
            raw = _http_get(uri, (storage_options or {}).get("headers") or {})
        else:
            with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
                raw = handle.read()
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DatasetUnavailable(f"dataset {uri} not found") from err
    except ImportError as err:  # e.g. s3fs missing for s3://
        raise DatasetUnavailable(f"cannot read {uri}: {err}") from err
    except (OSError, ValueError) as err:
        raise DatasetUnavailable(f"cannot read {uri}: {type(err).__name__}: {err}") from err
    digest = hashlib.sha256(raw).hexdigest()
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(io.BytesIO(raw))
        else:
            compression = "gzip" if uri.split("?", 1)[0].lower().endswith(".gz") else None
            frame = pd.read_csv(io.BytesIO(raw), compression=compression)
    except Exception as err:  # pandas/pyarrow raise many types for bad content
        raise DatasetUnavailable(f"dataset {uri} is not readable as {fmt}: {type(err).__name__}: {err}") from err
    frame.columns = [str(column) for column in frame.columns]
    return frame, digest


def _http_get(uri: str, headers: dict[str, str]) -> bytes:
    """The body at an http(s) URI, read under this process's URI policy: the checked address is the one
    connected to, and each redirect's target is checked before it is followed."""
    return uri_policy.http_get(uri, uri_policy.environment_policy(), headers=headers, timeout=HTTP_TIMEOUT_SECONDS)


def _load_sklearn(name: str) -> tuple[pd.DataFrame, str]:
    if name not in SKLEARN_DATASETS:
        raise InvalidSpec(f"unknown bundled dataset sklearn://{name}; available: {', '.join(SKLEARN_DATASETS)}")
    from sklearn import datasets

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    frame.columns = [str(column) for column in frame.columns]
    canonical = f"sklearn://{name}\n".encode() + frame.to_csv(index=False).encode()
    return frame, hashlib.sha256(canonical).hexdigest()
