"""Evaluate: metrics of the fitted model on the held-out split.

Metric names match the ModelTraining API: ``accuracy``, ``f1`` (macro-averaged) and ``rocAuc``
(one-vs-rest, macro, for more than two classes) for classification; ``rmse``, ``mae`` and ``r2``
for regression.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn import metrics as skm

from mlops_operator.components.errors import reported

CLASSIFICATION_METRICS = ("accuracy", "f1", "rocAuc")
REGRESSION_METRICS = ("rmse", "mae", "r2")

log = logging.getLogger(__name__)


def evaluate_model(model: Any, test: pd.DataFrame, schema: dict[str, Any]) -> dict[str, float]:
    """Metrics of ``model`` on ``test`` for the schema's task (see the module docstring)."""
    features = test[schema["features"]]
    labels = test[schema["target"]]
    predicted = model.predict(features)
    if schema["task"] == "regression":
        return {
            "rmse": float(np.sqrt(skm.mean_squared_error(labels, predicted))),
            "mae": float(skm.mean_absolute_error(labels, predicted)),
            "r2": float(skm.r2_score(labels, predicted)),
        }
    scores = {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "f1": float(skm.f1_score(labels, predicted, average="macro")),
    }
    roc_auc = _roc_auc(model, features, labels)
    if roc_auc is not None:
        scores["rocAuc"] = roc_auc
    return scores


def _roc_auc(model: Any, features: pd.DataFrame, labels: pd.Series) -> float | None:
    """ROC-AUC from probabilities (or decision scores); None when the model or the split cannot give one."""
    classes = list(model.classes_)
    if hasattr(model, "predict_proba"):
        try:
            scores = model.predict_proba(features)
        except AttributeError:  # e.g. SVC(probability=False) exposes the method but refuses
            scores = None
    else:
        scores = None
    if scores is None and hasattr(model, "decision_function"):
        scores = model.decision_function(features)
    if scores is None:
        return None
    try:
        if len(classes) == 2:
            positive = scores[:, 1] if np.ndim(scores) == 2 else scores
            return float(skm.roc_auc_score(labels, positive))
        return float(skm.roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=classes))
    except ValueError as err:  # e.g. a class absent from the test split, or scores not probabilities
        log.warning("ROC-AUC not computed: %s", err)
        return None


@reported("evaluate")
def run_evaluate(model_path: str, test_path: str, schema: dict[str, Any], report_path: str | None = None) -> dict[str, float]:
    """Step entry: load the joblib model and the test Parquet; return (and optionally write) the metrics."""
    scores = evaluate_model(joblib.load(model_path), pd.read_parquet(test_path), schema)
    if report_path:
        with open(report_path, "w") as handle:
            json.dump(scores, handle, indent=2, sort_keys=True)
    return scores


def score_champion(test: pd.DataFrame, schema: dict[str, Any], champion_uri: str) -> dict[str, Any]:
    """The current validated model (the champion) scored on the challenger's holdout.

    Returns ``{"version", "uri", "metrics"}``, or ``{"uri", "message"}`` when it cannot be scored
    there (unreadable, or trained on other features).
    """
    import fsspec

    from mlops_operator.backends.artifacts import LINEAGE_FILE, MODEL_FILE, read_json_uri

    base = champion_uri.rstrip("/")
    result: dict[str, Any] = {"uri": champion_uri}
    try:
        lineage = read_json_uri(f"{base}/{LINEAGE_FILE}")
        with fsspec.open(f"{base}/{MODEL_FILE}", "rb") as handle:
            champion = joblib.load(handle)
    except Exception as err:  # a missing or unreadable version: compare with its recorded metrics instead
        return {**result, "message": f"cannot load the validated model: {type(err).__name__}: {err}"[:500]}
    if isinstance(lineage, dict) and lineage.get("version") is not None:
        result["version"] = int(lineage["version"])
    trained_on = list((lineage or {}).get("features") or [])
    if trained_on and trained_on != list(schema["features"]):
        return {**result, "message": "the validated model was trained on other features "
                                     f"({', '.join(trained_on[:8])}); it cannot be scored on this holdout"}
    try:
        result["metrics"] = evaluate_model(champion, test, schema)
    except Exception as err:  # e.g. a label it never saw: say so instead of failing the run
        return {**result, "message": f"cannot score the validated model: {type(err).__name__}: {err}"[:500]}
    return result


@reported("evaluate")
def run_evaluate_against(
    model_path: str,
    test_path: str,
    schema: dict[str, Any],
    champion_uri: str,
    recorded_baseline: dict[str, float] | None,
) -> dict[str, Any]:
    """Step entry: score the new model (challenger) and the current validated one (champion) on
    the same holdout. Returns ``{"metrics", "baseline", "comparison"}``: ``baseline`` is what the
    gate's maxRegression compares with (the champion's holdout metrics, else its recorded ones),
    ``comparison`` what lineage and status record."""
    test = pd.read_parquet(test_path)
    scores = evaluate_model(joblib.load(model_path), test, schema)
    holdout = dict(schema.get("holdout") or {"source": "dataset", "rows": int(len(test))})
    comparison: dict[str, Any] = {"holdout": holdout, "challenger": scores}
    baseline = dict(recorded_baseline or {})
    if champion_uri:
        champion = score_champion(test, schema, champion_uri)
        comparison["champion"] = champion
        if champion.get("metrics"):
            baseline = champion["metrics"]
        elif baseline:
            champion["message"] = champion.get("message", "") + "; the gate compares with its recorded metrics"
    return {"metrics": scores, "baseline": baseline, "comparison": comparison}
