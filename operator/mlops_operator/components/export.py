"""Export: publish the model as a new version in the registry, with its profile and lineage.

The version is allocated here, keyed by the run name, so a re-executed export of the same run
reuses its version; a version that is already complete is returned as it is, never rewritten.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

import mlops_operator
from mlops_operator.backends import artifacts
from mlops_operator.components.errors import InvalidSpec, reported

PIPELINE_NAME = "tabular-training"


def build_lineage(
    *,
    model_name: str,
    version: int,
    run_name: str,
    run_id: str,
    dataset: dict[str, Any],
    schema: dict[str, Any],
    estimator: dict[str, Any],
    split: dict[str, Any],
    pipeline_digest: str,
    metrics: dict[str, float],
    validated: bool,
    started_at: str,
    finished_at: str,
    sources: list[dict[str, Any]] | None = None,
    comparison: dict[str, Any] | None = None,
    retrain_window: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage record stored as ``lineage.json``.

    ``sources``: every data source the run read (base dataset, labelled production data) with its
    URI, rows, content digest and rejected rows; ``comparison``: the new and the current validated
    model scored on the same holdout; ``retrainWindow``: the drift window a retrain request carried.
    """
    optional = {"sources": sources, "comparison": comparison, "retrainWindow": retrain_window,
                "mix": schema.get("mix"), "holdout": schema.get("holdout")}
    record = {
        "model": model_name,
        "version": int(version),
        "run": {"name": run_name, "id": run_id},
        "dataset": dataset,
        "target": schema["target"],
        "task": schema["task"],
        "features": schema["features"],
        "categorical": schema["categorical"],
        # Counts come back from KFP dict outputs as floats.
        "rows": {k: int(v) for k, v in (schema.get("rows") or {}).items()},
        "estimator": estimator,
        "split": split,
        "pipeline": {"name": PIPELINE_NAME, "digest": pipeline_digest},
        "operatorVersion": mlops_operator.__version__,
        "metrics": metrics,
        "validated": bool(validated),
        "started": started_at,
        "finished": finished_at,
    }
    record.update({k: v for k, v in optional.items() if v})
    return record


def model_signature(schema: dict[str, Any], target: pd.Series) -> dict[str, Any]:
    """The model's V2 inputs and outputs from the training schema, for ``model-settings.json``.

    All-numeric features: one ``FP64`` tensor ``[-1, n]`` with the columns in training order (what
    clients send today under any name). With categorical features the model needs a table: one
    input per feature in training order (``BYTES`` as strings for categorical ones, ``FP64`` for
    numeric ones), decoded by MLServer's pandas codec. The output ``predict`` is one value per row.
    """
    features = list(schema["features"])
    categorical = set(schema.get("categorical") or ())
    if not categorical:
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(features)],
                   "parameters": {"features": features}}]
        parameters: dict[str, Any] = {}
    else:
        inputs = [{"name": name, "datatype": "BYTES", "shape": [-1], "parameters": {"content_type": "str"}}
                  if name in categorical else {"name": name, "datatype": "FP64", "shape": [-1]}
                  for name in features]
        parameters = {"content_type": "pd"}
    if schema.get("task") == "regression":
        datatype = "FP64"
    elif pd.api.types.is_bool_dtype(target):
        datatype = "BOOL"
    elif pd.api.types.is_integer_dtype(target):
        datatype = "INT64"
    elif pd.api.types.is_float_dtype(target):
        datatype = "FP64"
    else:
        datatype = "BYTES"
    outputs = [{"name": "predict", "datatype": datatype, "shape": [-1, 1],
                "parameters": {"target": schema["target"]}}]
    return {"inputs": inputs, "outputs": outputs, "parameters": parameters}


@reported("export")
def run_export(
    *,
    model_path: str,
    train_path: str,
    schema: dict[str, Any],
    metrics: dict[str, float],
    validated: bool,
    reasons: list[str],
    artifact_root: str,
    model_namespace: str,
    model_name: str,
    run_name: str,
    **lineage: Any,
) -> dict[str, Any]:
    """Step entry: allocate (or reuse) the run's version and write its files; ``lineage`` are the
    rest of :func:`build_lineage`'s arguments (run_id, dataset, estimator, split, pipeline_digest,
    started_at, and optionally sources, comparison, retrain_window).

    Returns ``{"model_version", "model_uri", "profile_uri", "validated", "reused"}``.
    """
    from mlops_operator.drift import build_profile

    if not artifact_root:
        raise InvalidSpec("artifact_root is empty")
    try:
        version = artifacts.allocate_version(artifact_root, model_namespace, model_name, run_name or None)
    except ValueError as err:
        raise InvalidSpec(str(err)) from err
    if artifacts.is_complete(artifact_root, model_namespace, model_name, version):
        info = artifacts.read_model_version(artifact_root, model_namespace, model_name, version)
        return _published(version, info, reused=True)
    train = pd.read_parquet(train_path)
    profile = build_profile(
        train[schema["features"] + [schema["target"]]],
        categorical=schema["categorical"] or None,
        exclude=(schema["target"],),
    )
    finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    record = build_lineage(model_name=model_name, version=version, run_name=run_name, schema=schema, metrics=metrics,
                           validated=validated, finished_at=finished_at, **lineage)
    info = artifacts.publish_model_version(
        artifact_root, model_namespace, model_name, version, model_file=model_path, metrics=metrics,
        validated=validated, reasons=reasons, profile=profile, lineage=record,
        signature=model_signature(schema, train[schema["target"]]),
    )
    return _published(version, info, reused=False)


def _published(version: int, info: dict[str, Any], *, reused: bool) -> dict[str, Any]:
    return {"model_version": version, "model_uri": info["uri"], "profile_uri": info["profileUri"],
            "validated": info["validated"], "reused": reused}
