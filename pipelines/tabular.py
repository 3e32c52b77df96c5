"""The built-in ``tabular-training`` pipeline (Kubeflow Pipelines v2 DSL).

extract → validate-data → split → train → evaluate (new vs validated model) → validate-model → export

Every component is a lightweight Python component whose body calls one
``mlops_operator.components.*.run_*`` function, so the logic lives (and is tested) in the package.
On a KFP cluster the components run in the operator image, which contains the package; locally
``kfp.local.SubprocessRunner(use_venv=False)`` runs them with the operator's own interpreter.

Compile with ``python pipelines/tabular.py [OUTPUT]`` (default: ``pipelines/tabular.yaml``,
which is committed; a unit test fails when it is stale).
"""


import sys
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

PIPELINE_NAME = "tabular-training"
BASE_IMAGE = "ghcr.io/mlops-operator/mlops-operator:0.1.0"
COMPILED = Path(__file__).with_name("tabular.yaml")


# The image already has kfp and the operator package; installing anything at run time would
# need network access and could change versions under a validated pipeline.
@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def extract(
    dataset_uri: str,
    dataset_format: str,
    target: str,
    features: list,
    production_data: dict,
    dataset: Output[Dataset],
    production: Output[Dataset],
) -> NamedTuple("ExtractOutputs", [("digest", str), ("rows", int), ("started_at", str), ("sources", list)]):
    """Read the dataset (the newest object when the URI names many) and the labelled production
    rows; write both as Parquet, with each source's URI, rows and sha256 digest."""
    from collections import namedtuple

    from mlops_operator.components.extract import run_extract_sources

    result = run_extract_sources(dataset_uri, dataset_format, target, features, production_data, dataset.path,
                                 production.path)
    dataset.metadata.update({"digest": result["digest"], "rows": result["rows"], "source": dataset_uri})
    outputs = namedtuple("ExtractOutputs", ["digest", "rows", "started_at", "sources"])
    return outputs(result["digest"], result["rows"], result["started_at"], result["sources"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_data(
    dataset: Input[Dataset],
    production: Input[Dataset],
    target: str,
    checks: dict,
    features: list,
    report: Output[Artifact],
    production_valid: Output[Dataset],
) -> NamedTuple("ValidateOutputs", [("production", dict)]):
    """Check the dataset (rows, missing values, columns, types, ranges; fail with
    DataValidationFailed) and the production rows one by one (rows that fail are counted, not trained on)."""
    from collections import namedtuple

    from mlops_operator.components.validate_data import run_validate_sources

    summary = run_validate_sources(dataset.path, production.path, target, checks, features, report.path,
                                   production_valid.path)
    return namedtuple("ValidateOutputs", ["production"])(summary)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def split(
    dataset: Input[Dataset],
    production: Input[Dataset],
    target: str,
    task: str,
    test_size: float,
    seed: int,
    features: list,
    estimator: str,
    mix: dict,
    train: Output[Dataset],
    test: Output[Dataset],
) -> NamedTuple("SplitOutputs", [("schema", dict), ("task", str)]):
    """Drop unlabelled rows, settle the task and split train/holdout: the newest production rows
    when there are enough, else the dataset's seeded (stratified) test split; mix the sources."""
    from collections import namedtuple

    from mlops_operator.components.split import run_split_sources

    schema = run_split_sources(dataset.path, production.path, target, task, test_size, seed, features, estimator,
                               mix, train.path, test.path)
    outputs = namedtuple("SplitOutputs", ["schema", "task"])
    return outputs(schema, schema["task"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    train: Input[Dataset],
    schema: dict,
    estimator: str,
    estimator_params: str,
    seed: int,
    model: Output[Model],
) -> NamedTuple("TrainOutputs", [("estimator_info", str)]):
    """Fit the named estimator inside the preprocessing pipeline and dump it with joblib.

    ``estimator_params`` and ``estimator_info`` are JSON text: KFP turns every number inside a
    dict parameter into a float, and 1 and 1.0 mean different things to some estimators.
    """
    import json
    from collections import namedtuple

    from mlops_operator.components.train import run_train

    info = run_train(train.path, schema, estimator, estimator_params, seed, model.path)
    model.metadata.update({"estimator": info["class"], "framework": "scikit-learn"})
    return namedtuple("TrainOutputs", ["estimator_info"])(json.dumps(info))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    test: Input[Dataset],
    schema: dict,
    champion_model_uri: str,
    baseline_metrics: dict,
    evaluation: Output[Metrics],
) -> NamedTuple("EvaluateOutputs", [("metrics", dict), ("baseline", dict), ("comparison", dict)]):
    """Score the new model and the current validated one on the same holdout
    (accuracy/f1/rocAuc or rmse/mae/r2)."""
    from collections import namedtuple

    from mlops_operator.components.evaluate import run_evaluate_against

    result = run_evaluate_against(model.path, test.path, schema, champion_model_uri, baseline_metrics)
    for name, value in result["metrics"].items():
        evaluation.log_metric(name, value)
    outputs = namedtuple("EvaluateOutputs", ["metrics", "baseline", "comparison"])
    return outputs(result["metrics"], result["baseline"], result["comparison"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_model(
    metrics: dict,
    gate: dict,
    baseline_metrics: dict,
    max_regression: dict,
) -> NamedTuple("GateOutputs", [("validated", bool), ("reasons", list)]):
    """The model gate: thresholds and no regression against the baseline. Never fails the run."""
    from collections import namedtuple

    from mlops_operator.components.gate import run_gate

    result = run_gate(metrics, gate, baseline_metrics, max_regression)
    return namedtuple("GateOutputs", ["validated", "reasons"])(result["validated"], result["reasons"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def export(
    model: Input[Model],
    train: Input[Dataset],
    schema: dict,
    metrics: dict,
    validated: bool,
    reasons: list,
    estimator_info: str,
    artifact_root: str,
    model_name: str,
    run_name: str,
    job_name: str,
    job_id: str,
    dataset_uri: str,
    dataset_format: str,
    dataset_digest: str,
    dataset_rows: int,
    test_size: float,
    seed: int,
    pipeline_digest: str,
    started_at: str,
    sources: list,
    production_validation: dict,
    comparison: dict,
    retrain_window: dict,
) -> NamedTuple("ExportOutputs", [("model_version", int), ("model_uri", str), ("profile_uri", str), ("validated", bool),
                                  ("sources", list)]):
    """Publish model.joblib, model-settings.json, metrics, profile and lineage as a model version."""
    import json
    from collections import namedtuple

    from mlops_operator.components.export import run_export

    for source in sources:  # the rows the production checks left out, beside the rows read
        if source.get("name") == "production":
            source["rejectedRows"] = int(production_validation.get("rejectedRows") or 0)
            if production_validation.get("rejections"):
                source["rejections"] = production_validation["rejections"]
    result = run_export(
        model_path=model.path,
        train_path=train.path,
        schema=schema,
        metrics=metrics,
        validated=validated,
        reasons=reasons,
        artifact_root=artifact_root,
        model_name=model_name,
        run_name=run_name or job_name,
        run_id=job_id,
        dataset={"uri": dataset_uri, "format": dataset_format, "digest": dataset_digest, "rows": dataset_rows},
        estimator=json.loads(estimator_info),
        split={"testSize": test_size, "seed": seed},
        pipeline_digest=pipeline_digest,
        started_at=started_at,
        sources=sources,
        comparison=comparison,
        retrain_window=retrain_window,
    )
    outputs = namedtuple("ExportOutputs", ["model_version", "model_uri", "profile_uri", "validated", "sources"])
    return outputs(result["model_version"], result["model_uri"], result["profile_uri"], result["validated"], sources)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Train, evaluate, gate and version a scikit-learn model on a tabular dataset.",
)
def tabular_training(
    dataset_uri: str,
    target: str,
    model_name: str,
    artifact_root: str,
    run_name: str = "",
    dataset_format: str = "auto",
    features: list = [],  # noqa: B006 - KFP reads defaults from the signature
    task: str = "auto",
    estimator: str = "",
    estimator_params: str = "{}",
    test_size: float = 0.25,
    seed: int = 42,
    validation: dict = {},  # noqa: B006
    gate: dict = {},  # noqa: B006
    baseline_metrics: dict = {},  # noqa: B006
    max_regression: dict = {},  # noqa: B006
    pipeline_digest: str = "",
    production_data: dict = {},  # noqa: B006
    mix: dict = {},  # noqa: B006
    champion_model_uri: str = "",
    retrain_window: dict = {},  # noqa: B006
) -> NamedTuple(
    "TabularTrainingOutputs",
    [
        ("model_version", int),
        ("model_uri", str),
        ("metrics", dict),
        ("validated", bool),
        ("validation_reasons", list),
        ("profile_uri", str),
        ("dataset_digest", str),
        ("sources", list),
        ("comparison", dict),
    ],
):
    """Train, evaluate, gate and version a model.

    ``estimator_params`` is a JSON object as text (numbers keep int vs float). ``pipeline_digest``
    is the sha256 of this compiled file, filled in by whoever submits it (it cannot be known at
    compile time). ``run_name`` keys the model version (defaults to the KFP job name).
    ``production_data`` names labelled production data (see steps.extract.run_extract_sources),
    ``mix`` how it joins the base dataset (see steps.split.split_sources), ``champion_model_uri``
    the current validated model scored on the same holdout, ``retrain_window`` the drift window
    of a retrain request (recorded in the lineage).
    """
    extract_task = extract(dataset_uri=dataset_uri, dataset_format=dataset_format, target=target,
                           features=features, production_data=production_data)
    validate_task = validate_data(
        dataset=extract_task.outputs["dataset"], production=extract_task.outputs["production"], target=target,
        checks=validation, features=features
    )
    split_task = split(
        dataset=extract_task.outputs["dataset"],
        production=validate_task.outputs["production_valid"],
        target=target,
        task=task,
        test_size=test_size,
        seed=seed,
        features=features,
        estimator=estimator,
        mix=mix,
    )
    train_task = train(
        train=split_task.outputs["train"],
        schema=split_task.outputs["schema"],
        estimator=estimator,
        estimator_params=estimator_params,
        seed=seed,
    )
    evaluate_task = evaluate(
        model=train_task.outputs["model"], test=split_task.outputs["test"], schema=split_task.outputs["schema"],
        champion_model_uri=champion_model_uri, baseline_metrics=baseline_metrics,
    )
    gate_task = validate_model(
        metrics=evaluate_task.outputs["metrics"],
        gate=gate,
        baseline_metrics=evaluate_task.outputs["baseline"],
        max_regression=max_regression,
    )
    export_task = export(
        model=train_task.outputs["model"],
        train=split_task.outputs["train"],
        schema=split_task.outputs["schema"],
        metrics=evaluate_task.outputs["metrics"],
        validated=gate_task.outputs["validated"],
        reasons=gate_task.outputs["reasons"],
        estimator_info=train_task.outputs["estimator_info"],
        artifact_root=artifact_root,
        model_name=model_name,
        run_name=run_name,
        job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset_uri=dataset_uri,
        dataset_format=dataset_format,
        dataset_digest=extract_task.outputs["digest"],
        dataset_rows=extract_task.outputs["rows"],
        test_size=test_size,
        seed=seed,
        pipeline_digest=pipeline_digest,
        started_at=extract_task.outputs["started_at"],
        sources=extract_task.outputs["sources"],
        production_validation=validate_task.outputs["production"],
        comparison=evaluate_task.outputs["comparison"],
        retrain_window=retrain_window,
    )
    # A retrain on the same URI must read the data again: never reuse cached step results.
    for task_ in (extract_task, validate_task, split_task, train_task, evaluate_task, gate_task, export_task):
        task_.set_caching_options(False)

    outputs = NamedTuple(
        "TabularTrainingOutputs",
        [
            ("model_version", int),
            ("model_uri", str),
            ("metrics", dict),
            ("validated", bool),
            ("validation_reasons", list),
            ("profile_uri", str),
            ("dataset_digest", str),
            ("sources", list),
            ("comparison", dict),
        ],
    )
    return outputs(
        model_version=export_task.outputs["model_version"],
        model_uri=export_task.outputs["model_uri"],
        metrics=evaluate_task.outputs["metrics"],
        validated=export_task.outputs["validated"],
        validation_reasons=gate_task.outputs["reasons"],
        profile_uri=export_task.outputs["profile_uri"],
        dataset_digest=extract_task.outputs["digest"],
        sources=export_task.outputs["sources"],
        comparison=evaluate_task.outputs["comparison"],
    )


def compile_pipeline(package_path: "str | Path" = COMPILED) -> Path:
    """Compile ``tabular_training`` to KFP IR YAML at ``package_path`` and return the path."""
    compiler.Compiler().compile(pipeline_func=tabular_training, package_path=str(package_path))
    return Path(package_path)


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else COMPILED))
