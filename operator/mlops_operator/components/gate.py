"""Validate model: the gate a model must pass to be marked validated.

Two kinds of checks, both optional:

* absolute thresholds, ``{"accuracy": {"min": 0.9}, "rmse": {"max": 60}}``; a bare number means
  ``min`` for metrics where higher is better and ``max`` for the others;
* no regression against the current validated model: ``baseline`` holds its metrics and
  ``max_regression`` how much worse each metric may be: a number for every metric, or
  ``{"accuracy": 0.02, "*": 0.05}`` per metric (``*`` for the rest). For the bounded scores
  (accuracy, f1, rocAuc, r2) it is absolute (0.02 = two points); for the error metrics, which
  have the target's units (rmse, mae), it is a fraction of the baseline (0.02 = 2% higher).
  Without ``max_regression`` the baseline is not compared.

A failed gate does not fail the run: the model is still exported, marked not validated, with
the reasons.
"""

from __future__ import annotations

import math
from typing import Any

from mlops_operator.components.errors import InvalidSpec, reported

HIGHER_IS_BETTER = frozenset({"accuracy", "f1", "rocAuc", "r2"})
LOWER_IS_BETTER = frozenset({"rmse", "mae"})


def evaluate_gate(
    metrics: dict[str, float],
    thresholds: dict[str, Any] | None = None,
    baseline: dict[str, float] | None = None,
    max_regression: float | dict[str, float] | None = None,
) -> tuple[bool, list[str]]:
    """Return ``(validated, reasons)``; ``reasons`` lists every failed check, readable on its own."""
    reasons: list[str] = []
    for metric, bound in sorted((thresholds or {}).items()):
        low, high = _bounds(metric, bound)
        value = metrics.get(metric)
        if value is None or _nan(value):
            reasons.append(f"{metric} was not computed for this model, so its threshold cannot be met")
            continue
        if low is not None and value < low:
            reasons.append(f"{metric} {value:.4g} is below the minimum {low:g}")
        if high is not None and value > high:
            reasons.append(f"{metric} {value:.4g} is above the maximum {high:g}")
    if baseline and max_regression not in (None, {}):
        for metric, reference in sorted(baseline.items()):
            allowed = _allowed_regression(metric, max_regression)
            value = metrics.get(metric)
            if allowed is None or value is None or reference is None or _nan(value) or _nan(reference):
                continue
            if metric in LOWER_IS_BETTER and value > reference + allowed * abs(reference):
                reasons.append(
                    f"{metric} {value:.4g} is worse than the validated model's {reference:.4g} "
                    f"by more than {allowed:.0%}"
                )
            elif metric in HIGHER_IS_BETTER and value < reference - allowed:
                reasons.append(
                    f"{metric} {value:.4g} is worse than the validated model's {reference:.4g} by more than {allowed:g}"
                )
    return not reasons, reasons


def _bounds(metric: str, bound: Any) -> tuple[float | None, float | None]:
    if isinstance(bound, (int, float)) and not isinstance(bound, bool):
        if metric in LOWER_IS_BETTER:
            return None, float(bound)
        return float(bound), None
    if isinstance(bound, dict) and ("min" in bound or "max" in bound):
        low, high = bound.get("min"), bound.get("max")
        return (None if low is None else float(low)), (None if high is None else float(high))
    raise InvalidSpec(f"threshold for {metric} must be a number or {{'min': x, 'max': y}}, got {bound!r}")


def _allowed_regression(metric: str, max_regression: float | dict[str, float]) -> float | None:
    if metric not in HIGHER_IS_BETTER and metric not in LOWER_IS_BETTER:
        return None
    if isinstance(max_regression, dict):
        value = max_regression.get(metric, max_regression.get("*"))
        return None if value is None else float(value)
    return float(max_regression)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


@reported("validate-model")
def run_gate(
    metrics: dict[str, float],
    thresholds: dict[str, Any] | None,
    baseline: dict[str, float] | None,
    max_regression: float | dict[str, float] | None,
) -> dict[str, Any]:
    """Step entry: ``{"validated": bool, "reasons": [...]}``."""
    validated, reasons = evaluate_gate(metrics, thresholds, baseline, max_regression)
    return {"validated": validated, "reasons": reasons}
