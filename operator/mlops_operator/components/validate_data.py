"""Validate data: checks on the extracted dataset before anything is trained on it.

The checks dict (keys in snake_case or camelCase, the shape of the ModelTraining
``spec.dataValidation``)::

    {"min_rows": 10,                    # fewest rows
     "max_missing_fraction": 0.1,       # largest missing fraction in any column
     "columns": [{"name": "age",        # the column must exist
                  "type": "numeric",    # numeric | integer | float | categorical | boolean | string
                  "min": 0, "max": 120, # value range (numeric columns)
                  "allowed_values": [], # allowed values (compared as strings)
                  "max_missing_fraction": 0.0}]}

``columns`` may also be a mapping of name to expectations. The target column, and each requested
feature column, must always be present. Every failing check is listed in the
DataValidationFailed message.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd
from pandas.api import types as ptypes

from mlops_operator.components.errors import DataValidationFailed, InvalidSpec, reported

COLUMN_TYPES = ("numeric", "integer", "float", "categorical", "boolean", "string")
# How many offending values a message quotes.
_EXAMPLES = 5


def snake_keys(value: Any) -> Any:
    """Recursively convert camelCase dict keys to snake_case (API models dump camelCase)."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", str(k)).lower(): snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


def check_dataset(
    frame: pd.DataFrame, target: str, checks: dict[str, Any] | None, features: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run every check; return ``[{"check", "column", "passed", "detail"}]`` in a stable order."""
    checks = snake_keys(checks or {})
    results: list[dict[str, Any]] = []

    def record(check: str, column: str | None, passed: bool, detail: str) -> None:
        results.append({"check": check, "column": column, "passed": bool(passed), "detail": detail})

    rows = len(frame)
    record("target_present", target, target in frame.columns,
           f"target column {target!r} {'present' if target in frame.columns else 'missing'}")
    for feature in features or []:
        record("feature_present", feature, feature in frame.columns,
               f"feature column {feature!r} {'present' if feature in frame.columns else 'missing'}")

    min_rows = checks.get("min_rows")
    if min_rows is not None:
        record("min_rows", None, rows >= int(min_rows), f"rows {rows} {'>=' if rows >= int(min_rows) else '<'} min_rows {min_rows}")

    max_missing = checks.get("max_missing_fraction")
    if max_missing is not None:
        for column in frame.columns:
            fraction = _missing_fraction(frame[column])
            record("max_missing_fraction", column, fraction <= float(max_missing),
                   f"column {column!r} missing fraction {fraction:.3f} (max {float(max_missing):g})")

    for spec in _column_specs(checks.get("columns")):
        name = spec["name"]
        if name not in frame.columns:
            record("column_present", name, False, f"column {name!r} missing")
            continue
        series = frame[name]
        record("column_present", name, True, f"column {name!r} present")
        if spec.get("type"):
            ok = column_has_type(series, spec["type"])
            record("type", name, ok, f"column {name!r} dtype {series.dtype} {'is' if ok else 'is not'} {spec['type']}")
        if spec.get("max_missing_fraction") is not None:
            fraction = _missing_fraction(series)
            limit = float(spec["max_missing_fraction"])
            record("max_missing_fraction", name, fraction <= limit,
                   f"column {name!r} missing fraction {fraction:.3f} (max {limit:g})")
        if spec.get("min") is not None or spec.get("max") is not None:
            results.append(_range_check(name, series, spec.get("min"), spec.get("max")))
        if spec.get("allowed_values"):
            allowed = {str(v) for v in spec["allowed_values"]}
            unexpected = sorted({str(v) for v in series.dropna().unique()} - allowed)
            record("allowed_values", name, not unexpected,
                   f"column {name!r} has values outside the allowed set: {unexpected[:_EXAMPLES]}"
                   if unexpected else f"column {name!r} values all allowed")
    return results


def column_has_type(series: pd.Series, expected: str) -> bool:
    """Whether a column's dtype matches an expected type name (see COLUMN_TYPES)."""
    dtype = series.dtype
    if expected == "numeric":
        return ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype)
    if expected == "integer":
        if ptypes.is_integer_dtype(dtype) and not ptypes.is_bool_dtype(dtype):
            return True
        # CSV turns integer columns with gaps into float; accept whole numbers.
        values = series.dropna()
        return ptypes.is_float_dtype(dtype) and bool((values == values.round()).all())
    if expected == "float":
        return ptypes.is_float_dtype(dtype)
    if expected == "boolean":
        return ptypes.is_bool_dtype(dtype) or set(series.dropna().unique()) <= {0, 1, True, False}
    if expected == "categorical":
        # Discrete values: strings, categories, booleans or integer codes.
        return not ptypes.is_float_dtype(dtype) and not ptypes.is_datetime64_any_dtype(dtype)
    if expected == "string":
        return ptypes.is_string_dtype(dtype) or ptypes.is_object_dtype(dtype)
    raise InvalidSpec(f"unknown column type {expected!r}; use one of {', '.join(COLUMN_TYPES)}")


def failure_message(results: list[dict[str, Any]]) -> str:
    """One readable line listing every failed check."""
    failed = [r for r in results if not r["passed"]]
    return f"{len(failed)} of {len(results)} data checks failed: " + "; ".join(r["detail"] for r in failed)


@reported("validate-data")
def run_validate_data(
    dataset_path: str, target: str, checks: dict[str, Any] | None, features: list[str] | None, report_path: str
) -> dict[str, Any]:
    """Step entry: check the Parquet dataset, write the JSON report, raise if any check failed.

    Returns ``{"passed", "checks", "failed"}`` (the report).
    """
    frame = pd.read_parquet(dataset_path)
    results = check_dataset(frame, target, checks, features)
    failed = [r for r in results if not r["passed"]]
    report = {"passed": not failed, "checks": len(results), "failed": len(failed), "results": results}
    with open(report_path, "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    if failed:
        raise DataValidationFailed(failure_message(results), {"failed": failed})
    return {"passed": True, "checks": len(results), "failed": 0}


def _column_specs(columns: Any) -> list[dict[str, Any]]:
    if not columns:
        return []
    if isinstance(columns, dict):
        return [{"name": name, **(spec or {})} for name, spec in columns.items()]
    specs = []
    for spec in columns:
        if not isinstance(spec, dict) or not spec.get("name"):
            raise InvalidSpec(f"a column check needs a name: {spec!r}")
        specs.append(spec)
    return specs


def _missing_fraction(series: pd.Series) -> float:
    return float(series.isna().mean()) if len(series) else 0.0


def _range_check(name: str, series: pd.Series, low: Any, high: Any) -> dict[str, Any]:
    check = {"check": "range", "column": name}
    if not ptypes.is_numeric_dtype(series.dtype) or ptypes.is_bool_dtype(series.dtype):
        return {**check, "passed": False, "detail": f"column {name!r} is not numeric, cannot check its range"}
    values = series.dropna()
    problems = []
    if low is not None and (values < float(low)).any():
        problems.append(f"{int((values < float(low)).sum())} values below min {low:g} (lowest {values.min():g})")
    if high is not None and (values > float(high)).any():
        problems.append(f"{int((values > float(high)).sum())} values above max {high:g} (highest {values.max():g})")
    if problems:
        return {**check, "passed": False, "detail": f"column {name!r} " + ", ".join(problems)}
    return {**check, "passed": True, "detail": f"column {name!r} within range"}


@reported("validate-data")
def run_validate_sources(
    dataset_path: str,
    production_path: str,
    target: str,
    checks: dict[str, Any] | None,
    features: list[str] | None,
    report_path: str,
    production_output_path: str,
) -> dict[str, Any]:
    """Step entry: the checks on every source.

    The base dataset must pass every check (else DataValidationFailed, as in run_validate_data).
    Labelled production rows are checked row by row (missing label, range, allowed values, no
    missing values where a column allows none): rows that fail are left out of training and
    counted per check in the report and the return value ``{"rows", "rejectedRows",
    "rejections"}``, never dropped silently. The rows kept go to ``production_output_path``.
    """
    from mlops_operator.backends.training_data import row_rejections

    frame = pd.read_parquet(dataset_path)
    results = check_dataset(frame, target, checks, features)
    failed = [r for r in results if not r["passed"]]
    production = pd.read_parquet(production_path)
    rejected, counts = row_rejections(production, target, checks)
    kept = production.loc[~rejected].reset_index(drop=True)
    kept.to_parquet(production_output_path, index=False)
    summary = {"rows": int(len(kept)), "rejectedRows": int(rejected.sum()), "rejections": counts}
    report = {"passed": not failed, "checks": len(results), "failed": len(failed), "results": results,
              "production": summary}
    with open(report_path, "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    if failed:
        raise DataValidationFailed(failure_message(results), {"failed": failed})
    return summary
