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
from collections.abc import Mapping
from typing import Any

# A stage takes its component's arguments as KFP passes them (the component's ``locals()``: names and
# types are declared once, by the component's signature in pipelines/tabular.py), artifacts as
# objects with a ``path``, and returns the component's outputs. Each stage imports its own steps
# only (a task process pays for every module it imports).


class Outputs(dict):
    """A stage's outputs by name; KFP's executor reads a component's NamedTuple outputs as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def run_prepare_data(arguments: Mapping[str, Any]) -> Outputs:
    """Extract, validate and split. Returns ``{"digest", "rows", "started_at", "sources",
    "production", "schema"}``: ``sources`` as extract gives them, the production source with the
    rows the checks left out (``rejectedRows``, ``rejections``); ``production`` the checks' summary."""
    from mlops_operator.components.extract import run_extract_sources
    from mlops_operator.components.split import run_split_sources
    from mlops_operator.components.validate_data import run_validate_sources

    get = arguments.__getitem__
    dataset, production_path, valid_path = get("dataset").path, get("production").path, get("production_valid").path
    target, features = get("target"), get("features")
    extracted = run_extract_sources(get("dataset_uri"), get("dataset_format"), target, features, get("production_data"),
                                    dataset, production_path)
    production = run_validate_sources(dataset, production_path, target, get("checks"), features, get("report").path,
                                      valid_path)
    schema = run_split_sources(dataset, valid_path, target, get("task"), get("test_size"), get("seed"), features,
                               get("estimator"), get("mix"), get("train").path, get("test").path)
    sources = [dict(source) for source in extracted["sources"]]
    for source in sources:  # the rows the production checks left out, beside the rows read
        if source.get("name") == "production":
            source["rejectedRows"] = int(production.get("rejectedRows") or 0)
            if production.get("rejections"):
                source["rejections"] = production["rejections"]
    return Outputs(digest=extracted["digest"], rows=extracted["rows"], started_at=extracted["started_at"],
                   sources=sources, production=production, schema=schema)


def run_train_model(arguments: Mapping[str, Any]) -> Outputs:
    """Train, evaluate (against the validated model too), gate and export. Returns
    ``{"estimator_info", "metrics", "comparison", "validated", "reasons", "model_version",
    "model_uri", "profile_uri"}`` (``estimator_info`` as JSON text); ``validated`` is the published
    version's (a re-run of an export returns the version as it was published)."""
    from mlops_operator.components.evaluate import run_evaluate_against
    from mlops_operator.components.export import run_export
    from mlops_operator.components.gate import run_gate
    from mlops_operator.components.train import run_train

    get = arguments.__getitem__
    train_path, test_path, model_path, schema = get("train").path, get("test").path, get("model").path, get("schema")
    info = run_train(train_path, schema, get("estimator"), get("estimator_params"), get("seed"), model_path)
    evaluated = run_evaluate_against(model_path, test_path, schema, get("champion_model_uri"), get("baseline_metrics"))
    gated = run_gate(evaluated["metrics"], get("gate"), evaluated["baseline"], get("max_regression"))
    published = run_export(
        model_path=model_path,
        train_path=train_path,
        schema=schema,
        metrics=evaluated["metrics"],
        validated=gated["validated"],
        reasons=gated["reasons"],
        artifact_root=get("artifact_root"),
        model_namespace=get("model_namespace"),
        model_name=get("model_name"),
        run_name=get("run_name") or get("job_name"),
        run_id=get("job_id"),
        dataset={"uri": get("dataset_uri"), "format": get("dataset_format"), "digest": get("dataset_digest"),
                 "rows": get("dataset_rows")},
        estimator=json.loads(json.dumps(info)),
        split={"testSize": get("test_size"), "seed": get("seed")},
        pipeline_digest=get("pipeline_digest"),
        started_at=get("started_at"),
        sources=get("sources"),
        comparison=evaluated["comparison"],
        retrain_window=get("retrain_window"),
    )
    return Outputs(
        estimator_info=json.dumps(info),
        metrics=evaluated["metrics"],
        comparison=evaluated["comparison"],
        validated=published["validated"],
        reasons=gated["reasons"],
        model_version=published["model_version"],
        model_uri=published["model_uri"],
        profile_uri=published["profile_uri"],
    )
