"""The pipeline's two tasks: the steps run back to back in one process each.

Every task of a pipeline is a process (a pod on a cluster) that starts Python and imports pandas,
scikit-learn and scipy before it does any work: seconds each, far more than the steps themselves
on a small dataset. So the built-in pipeline runs the seven steps as two tasks:

- ``prepare-data``: extract → validate data → split (reads the data; fails early on bad data);
- ``train-model``: train → evaluate → validate model → export (the task that resources such as a
  GPU are for).

Each step keeps its function, its failure reason and step name (``step extract: ...``), and its
files (the dataset, the validation report, the train and test splits, the model are still task
artifacts); a stage only hands one step's files and values to the next.
"""

from __future__ import annotations

import json
from typing import Any

# Each stage imports its own steps only (a task process pays for every module it imports).


def run_prepare_data(
    *,
    dataset_uri: str,
    dataset_format: str,
    target: str,
    features: list[str] | None,
    production_data: dict[str, Any] | None,
    checks: dict[str, Any] | None,
    task: str,
    test_size: float,
    seed: int,
    estimator: str,
    mix: dict[str, Any] | None,
    dataset_path: str,
    production_path: str,
    report_path: str,
    production_valid_path: str,
    train_path: str,
    test_path: str,
) -> dict[str, Any]:
    """Extract, validate and split. Returns ``{"digest", "rows", "started_at", "sources",
    "production", "schema"}``: ``sources`` as extract gives them, the production source with the
    rows the checks left out (``rejectedRows``, ``rejections``); ``production`` the checks' summary."""
    from mlops_operator.components.extract import run_extract_sources
    from mlops_operator.components.split import run_split_sources
    from mlops_operator.components.validate_data import run_validate_sources

    extracted = run_extract_sources(dataset_uri, dataset_format, target, features, production_data, dataset_path,
                                    production_path)
    production = run_validate_sources(dataset_path, production_path, target, checks, features, report_path,
                                      production_valid_path)
    schema = run_split_sources(dataset_path, production_valid_path, target, task, test_size, seed, features,
                               estimator, mix, train_path, test_path)
    sources = [dict(source) for source in extracted["sources"]]
    for source in sources:  # the rows the production checks left out, beside the rows read
        if source.get("name") == "production":
            source["rejectedRows"] = int(production.get("rejectedRows") or 0)
            if production.get("rejections"):
                source["rejections"] = production["rejections"]
    return {"digest": extracted["digest"], "rows": extracted["rows"], "started_at": extracted["started_at"],
            "sources": sources, "production": production, "schema": schema}


def run_train_model(
    *,
    train_path: str,
    test_path: str,
    schema: dict[str, Any],
    estimator: str,
    estimator_params: dict[str, Any] | str | None,
    seed: int,
    champion_model_uri: str,
    baseline_metrics: dict[str, float] | None,
    gate: dict[str, Any] | None,
    max_regression: float | dict[str, float] | None,
    model_path: str,
    artifact_root: str,
    model_namespace: str,
    model_name: str,
    run_name: str,
    run_id: str,
    dataset: dict[str, Any],
    test_size: float,
    pipeline_digest: str,
    started_at: str,
    sources: list[dict[str, Any]] | None,
    retrain_window: dict[str, Any] | None,
) -> dict[str, Any]:
    """Train, evaluate (against the validated model too), gate and export. Returns
    ``{"estimator_info", "metrics", "comparison", "validated", "reasons", "model_version",
    "model_uri", "profile_uri"}``; ``validated`` is the published version's (a re-run of an export
    returns the version as it was published)."""
    from mlops_operator.components.evaluate import run_evaluate_against
    from mlops_operator.components.export import run_export
    from mlops_operator.components.gate import run_gate
    from mlops_operator.components.train import run_train

    info = run_train(train_path, schema, estimator, estimator_params, seed, model_path)
    evaluated = run_evaluate_against(model_path, test_path, schema, champion_model_uri, baseline_metrics)
    gated = run_gate(evaluated["metrics"], gate, evaluated["baseline"], max_regression)
    published = run_export(
        model_path=model_path,
        train_path=train_path,
        schema=schema,
        metrics=evaluated["metrics"],
        validated=gated["validated"],
        reasons=gated["reasons"],
        artifact_root=artifact_root,
        model_namespace=model_namespace,
        model_name=model_name,
        run_name=run_name,
        run_id=run_id,
        dataset=dataset,
        estimator=json.loads(json.dumps(info)),
        split={"testSize": test_size, "seed": seed},
        pipeline_digest=pipeline_digest,
        started_at=started_at,
        sources=sources,
        comparison=evaluated["comparison"],
        retrain_window=retrain_window,
    )
    return {
        "estimator_info": info,
        "metrics": evaluated["metrics"],
        "comparison": evaluated["comparison"],
        "validated": published["validated"],
        "reasons": gated["reasons"],
        "model_version": published["model_version"],
        "model_uri": published["model_uri"],
        "profile_uri": published["profile_uri"],
    }
