"""Reference profiles: a training frame summarised in bounded size (quantiles, top-N counts).

The format (``formatVersion`` 1) and the error each test makes against a profile are described in
:mod:`mlops_operator.drift.stats`, which reads profiles; this module writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlops_operator.drift.stats import (
    CATEGORICAL,
    DEFAULT_MAX_CATEGORIES,
    DEFAULT_QUANTILE_COUNT,
    NUMERIC,
    PROFILE_FORMAT_VERSION,
    _columns,
    _is_categorical,
    _is_numeric,
    _row_count,
    category_counts,
    numeric_values,
)


def build_profile(
    frame: pd.DataFrame,
    categorical: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    *,
    quantile_count: int = DEFAULT_QUANTILE_COUNT,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> dict[str, Any]:
    """Reference profile of a training frame (format in the module docstring); JSON-serialisable.

    Object, category, string and bool columns are categorical, and so are the columns named in
    ``categorical`` (e.g. integer codes); other numeric columns are numeric; any other dtype
    (e.g. datetime) must be listed in ``exclude``. Size does not grow with rows: K+1 quantiles per numeric column, at most
    ``max_categories`` labels per categorical one.
    """
    if quantile_count < 2:
        raise ValueError("quantile_count must be >= 2")
    if max_categories < 1:
        raise ValueError("max_categories must be >= 1")
    columns = _columns(frame)
    excluded = set(exclude)
    categorical_names = set(categorical or ())
    if unknown := categorical_names - set(columns):
        raise ValueError(f"categorical columns not in the frame: {sorted(unknown)}")
    features: dict[str, Any] = {}
    for name, values in columns.items():
        if name in excluded:
            continue
        if name in categorical_names or _is_categorical(values):
            features[name] = _categorical_profile(values, max_categories)
        elif _is_numeric(values):
            features[name] = _numeric_profile(values, quantile_count)
        else:
            raise ValueError(f"column {name!r} has unsupported dtype {values.dtype}; list it in exclude")
    return {
        "formatVersion": PROFILE_FORMAT_VERSION,
        "rows": _row_count(columns),
        "quantileCount": quantile_count,
        "features": features,
    }


def _numeric_profile(values: Any, quantile_count: int) -> dict[str, Any]:
    kept, missing = numeric_values(values)
    n = kept.size
    if n == 0:
        return {"kind": NUMERIC, "count": 0, "missing": missing, "min": None, "max": None, "mean": None,
                "std": None, "quantiles": []}
    ordered = np.sort(kept)
    # Inverted-CDF quantile j/K is order statistic ceil(n*j/K) (1-based); integer maths so no
    # rounding of n*j/K can pick a neighbour.
    j = np.arange(quantile_count + 1, dtype=np.int64)
    index = np.maximum((n * j + quantile_count - 1) // quantile_count - 1, 0)
    return {
        "kind": NUMERIC,
        "count": int(n),
        "missing": missing,
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "mean": float(ordered.mean()),
        "std": float(ordered.std()),
        "quantiles": ordered[index].tolist(),
    }


def _categorical_profile(values: Any, max_categories: int) -> dict[str, Any]:
    counts, missing = category_counts(values)
    top = dict(list(counts.items())[:max_categories])
    total = sum(counts.values())
    return {
        "kind": CATEGORICAL,
        "count": total,
        "missing": missing,
        "distinct": len(counts),
        "frequencies": top,
        "otherCount": total - sum(top.values()),
    }
