"""The built-in ``tabular-training`` pipeline (Kubeflow Pipelines v2 DSL).

Two tasks, seven steps:

    prepare-data: extract → validate data → split
    train-model:  train → evaluate (new vs validated model) → validate model → export

Each task is a process (a pod on a cluster) paying for Python's start and the imports of pandas,
scikit-learn and scipy, so the steps run back to back inside two tasks rather than one task each
(see mlops_operator.components.stages and benchmarks/training_bench.py). Every component is a
lightweight Python component whose body calls one ``mlops_operator.components.stages.run_*``
function, so the logic lives (and is tested) in the package.
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

from mlops_operator import __version__
from mlops_operator.settings import OPERATOR_IMAGE_REPOSITORY

PIPELINE_NAME = "tabular-training"
# The operator's own image and version: the default of the trainingImage setting, which replaces it
# at submit time (backends.training_kfp.with_component_image).
BASE_IMAGE = f"{OPERATOR_IMAGE_REPOSITORY}:{__version__}"
COMPILED = Path(__file__).with_name("tabular.yaml")


# The image already has kfp and the operator package; installing anything at run time would
# need network access and could change versions under a validated pipeline.
@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare_data(
    dataset_uri: str,
    dataset_format: str,
    target: str,
    features: list,
    production_data: dict,
    checks: dict,
    task: str,
    test_size: float,
    seed: int,
    estimator: str,
    mix: dict,
    dataset: Output[Dataset],
    production: Output[Dataset],
    report: Output[Artifact],
    production_valid: Output[Dataset],
    train: Output[Dataset],
    test: Output[Dataset],
) -> NamedTuple("PrepareOutputs", [("digest", str), ("rows", int), ("started_at", str), ("sources", list),
                                   ("production", dict), ("schema", dict)]):
    """Extract, validate data, split (mlops_operator.components.stages.run_prepare_data).

    Extract: the dataset (the newest object when the URI names many) and the labelled production
    rows, as Parquet, with each source's URI, rows and sha256 digest. Validate: the dataset's
    checks (rows, missing values, columns, types, ranges; DataValidationFailed) and the production
    rows one by one (rows that fail are counted, not trained on). Split: drop unlabelled rows,
    settle the task, hold out the newest production rows when there are enough, else the
    dataset's seeded (stratified) test split; mix the sources.
    """
    from collections import namedtuple

    from mlops_operator.components.stages import run_prepare_data

    result = run_prepare_data(
        dataset_uri=dataset_uri, dataset_format=dataset_format, target=target, features=features,
        production_data=production_data, checks=checks, task=task, test_size=test_size, seed=seed,
        estimator=estimator, mix=mix, dataset_path=dataset.path, production_path=production.path,
        report_path=report.path, production_valid_path=production_valid.path, train_path=train.path,
        test_path=test.path,
    )
    dataset.metadata.update({"digest": result["digest"], "rows": result["rows"], "source": dataset_uri})
    outputs = namedtuple("PrepareOutputs", ["digest", "rows", "started_at", "sources", "production", "schema"])
    return outputs(result["digest"], result["rows"], result["started_at"], result["sources"], result["production"],
                   result["schema"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_model(
    train: Input[Dataset],
    test: Input[Dataset],
    schema: dict,
    estimator: str,
    estimator_params: str,
    seed: int,
    champion_model_uri: str,
    baseline_metrics: dict,
    gate: dict,
    max_regression: dict,
    artifact_root: str,
    model_namespace: str,
    model_name: str,
    run_name: str,
    job_name: str,
    job_id: str,
    dataset_uri: str,
    dataset_format: str,
    dataset_digest: str,
    dataset_rows: int,
    test_size: float,
    pipeline_digest: str,
    started_at: str,
    sources: list,
    retrain_window: dict,
    model: Output[Model],
    evaluation: Output[Metrics],
) -> NamedTuple("TrainOutputs", [("model_version", int), ("model_uri", str), ("profile_uri", str),
                                 ("validated", bool), ("reasons", list), ("metrics", dict), ("comparison", dict),
                                 ("estimator_info", str)]):
    """Train, evaluate, validate model, export (mlops_operator.components.stages.run_train_model).

    Train: the named estimator inside the preprocessing pipeline, dumped with joblib
    (``estimator_params`` is JSON text: KFP turns every number inside a dict parameter into a
    float, and 1 and 1.0 mean different things to some estimators). Evaluate: the new model and
    the current validated one on the same holdout (accuracy/f1/rocAuc or rmse/mae/r2). Validate
    model: thresholds and no regression against the baseline (never fails the run). Export:
    model.joblib, model-settings.json, metrics, profile and lineage as a model version.
    """
    import json
    from collections import namedtuple

    from mlops_operator.components.stages import run_train_model

    result = run_train_model(
        train_path=train.path, test_path=test.path, schema=schema, estimator=estimator,
        estimator_params=estimator_params, seed=seed, champion_model_uri=champion_model_uri,
        baseline_metrics=baseline_metrics, gate=gate, max_regression=max_regression, model_path=model.path,
        artifact_root=artifact_root, model_namespace=model_namespace, model_name=model_name, run_name=run_name or job_name, run_id=job_id,
        dataset={"uri": dataset_uri, "format": dataset_format, "digest": dataset_digest, "rows": dataset_rows},
        test_size=test_size, pipeline_digest=pipeline_digest, started_at=started_at, sources=sources,
        retrain_window=retrain_window,
    )
    info = result["estimator_info"]
    model.metadata.update({"estimator": info["class"], "framework": "scikit-learn"})
    for name, value in result["metrics"].items():
        evaluation.log_metric(name, value)
    outputs = namedtuple("TrainOutputs", ["model_version", "model_uri", "profile_uri", "validated", "reasons",
                                          "metrics", "comparison", "estimator_info"])
    return outputs(result["model_version"], result["model_uri"], result["profile_uri"], result["validated"],
                   result["reasons"], result["metrics"], result["comparison"], json.dumps(info))


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Train, evaluate, gate and version a scikit-learn model on a tabular dataset.",
)
def tabular_training(
    dataset_uri: str,
    target: str,
    model_name: str,
    model_namespace: str,
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
    prepare_task = prepare_data(
        dataset_uri=dataset_uri,
        dataset_format=dataset_format,
        target=target,
        features=features,
        production_data=production_data,
        checks=validation,
        task=task,
        test_size=test_size,
        seed=seed,
        estimator=estimator,
        mix=mix,
    )
    train_task = train_model(
        train=prepare_task.outputs["train"],
        test=prepare_task.outputs["test"],
        schema=prepare_task.outputs["schema"],
        estimator=estimator,
        estimator_params=estimator_params,
        seed=seed,
        champion_model_uri=champion_model_uri,
        baseline_metrics=baseline_metrics,
        gate=gate,
        max_regression=max_regression,
        artifact_root=artifact_root,
        model_namespace=model_namespace,
        model_name=model_name,
        run_name=run_name,
        job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset_uri=dataset_uri,
        dataset_format=dataset_format,
        dataset_digest=prepare_task.outputs["digest"],
        dataset_rows=prepare_task.outputs["rows"],
        test_size=test_size,
        pipeline_digest=pipeline_digest,
        started_at=prepare_task.outputs["started_at"],
        sources=prepare_task.outputs["sources"],
        retrain_window=retrain_window,
    )
    # A retrain on the same URI must read the data again: never reuse cached step results.
    for task_ in (prepare_task, train_task):
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
        model_version=train_task.outputs["model_version"],
        model_uri=train_task.outputs["model_uri"],
        metrics=train_task.outputs["metrics"],
        validated=train_task.outputs["validated"],
        validation_reasons=train_task.outputs["reasons"],
        profile_uri=train_task.outputs["profile_uri"],
        dataset_digest=prepare_task.outputs["digest"],
        sources=prepare_task.outputs["sources"],
        comparison=train_task.outputs["comparison"],
    )


def compile_pipeline(package_path: "str | Path" = COMPILED) -> Path:
    """Compile ``tabular_training`` to KFP IR YAML at ``package_path`` and return the path."""
    compiler.Compiler().compile(pipeline_func=tabular_training, package_path=str(package_path))
    return Path(package_path)


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else COMPILED))
