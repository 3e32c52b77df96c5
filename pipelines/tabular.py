"""The built-in ``tabular-training`` pipeline (Kubeflow Pipelines v2 DSL).

extract → validate-data → split → train → evaluate → validate-model → export

Every component is a lightweight Python component whose body calls one
``mlops_operator.steps.*.run_*`` function, so the logic lives (and is tested) in the package.
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
    dataset: Output[Dataset],
) -> NamedTuple("ExtractOutputs", [("digest", str), ("rows", int), ("started_at", str)]):
    """Read the dataset (fsspec URI or sklearn://name) and write it as Parquet, with its sha256 digest."""
    from collections import namedtuple

    from mlops_operator.steps.extract import run_extract

    result = run_extract(dataset_uri, dataset_format, dataset.path)
    dataset.metadata.update({"digest": result["digest"], "rows": result["rows"], "source": dataset_uri})
    outputs = namedtuple("ExtractOutputs", ["digest", "rows", "started_at"])
    return outputs(result["digest"], result["rows"], result["started_at"])


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_data(
    dataset: Input[Dataset],
    target: str,
    checks: dict,
    features: list,
    report: Output[Artifact],
):
    """Check rows, missing values, columns, types and ranges; fail with DataValidationFailed."""
    from mlops_operator.steps.validate_data import run_validate_data

    run_validate_data(dataset.path, target, checks, features, report.path)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def split(
    dataset: Input[Dataset],
    target: str,
    task: str,
    test_size: float,
    seed: int,
    features: list,
    estimator: str,
    train: Output[Dataset],
    test: Output[Dataset],
) -> NamedTuple("SplitOutputs", [("schema", dict), ("task", str)]):
    """Drop unlabelled rows, settle the task and split train/test (seeded, stratified for classification)."""
    from collections import namedtuple

    from mlops_operator.steps.split import run_split

    schema = run_split(dataset.path, target, task, test_size, seed, features, estimator, train.path, test.path)
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

    from mlops_operator.steps.train import run_train

    info = run_train(train.path, schema, estimator, estimator_params, seed, model.path)
    model.metadata.update({"estimator": info["class"], "framework": "scikit-learn"})
    return namedtuple("TrainOutputs", ["estimator_info"])(json.dumps(info))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    test: Input[Dataset],
    schema: dict,
    evaluation: Output[Metrics],
) -> NamedTuple("EvaluateOutputs", [("metrics", dict)]):
    """Score the model on the held-out split (accuracy/f1/rocAuc or rmse/mae/r2)."""
    from collections import namedtuple

    from mlops_operator.steps.evaluate import run_evaluate

    scores = run_evaluate(model.path, test.path, schema)
    for name, value in scores.items():
        evaluation.log_metric(name, value)
    return namedtuple("EvaluateOutputs", ["metrics"])(scores)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_model(
    metrics: dict,
    gate: dict,
    baseline_metrics: dict,
    max_regression: dict,
) -> NamedTuple("GateOutputs", [("validated", bool), ("reasons", list)]):
    """The model gate: thresholds and no regression against the baseline. Never fails the run."""
    from collections import namedtuple

    from mlops_operator.steps.gate import run_gate

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
) -> NamedTuple("ExportOutputs", [("model_version", int), ("model_uri", str), ("profile_uri", str), ("validated", bool)]):
    """Publish model.joblib, model-settings.json, metrics, profile and lineage as a model version."""
    import json
    from collections import namedtuple

    from mlops_operator.steps.export import run_export

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
    )
    outputs = namedtuple("ExportOutputs", ["model_version", "model_uri", "profile_uri", "validated"])
    return outputs(result["model_version"], result["model_uri"], result["profile_uri"], result["validated"])


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
    ],
):
    """Train, evaluate, gate and version a model.

    ``estimator_params`` is a JSON object as text (numbers keep int vs float). ``pipeline_digest``
    is the sha256 of this compiled file, filled in by whoever submits it (it cannot be known at
    compile time). ``run_name`` keys the model version (defaults to the KFP job name).
    """
    extract_task = extract(dataset_uri=dataset_uri, dataset_format=dataset_format)
    validate_task = validate_data(
        dataset=extract_task.outputs["dataset"], target=target, checks=validation, features=features
    )
    split_task = split(
        dataset=extract_task.outputs["dataset"],
        target=target,
        task=task,
        test_size=test_size,
        seed=seed,
        features=features,
        estimator=estimator,
    ).after(validate_task)
    train_task = train(
        train=split_task.outputs["train"],
        schema=split_task.outputs["schema"],
        estimator=estimator,
        estimator_params=estimator_params,
        seed=seed,
    )
    evaluate_task = evaluate(
        model=train_task.outputs["model"], test=split_task.outputs["test"], schema=split_task.outputs["schema"]
    )
    gate_task = validate_model(
        metrics=evaluate_task.outputs["metrics"],
        gate=gate,
        baseline_metrics=baseline_metrics,
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
    )


def compile_pipeline(package_path: "str | Path" = COMPILED) -> Path:
    """Compile ``tabular_training`` to KFP IR YAML at ``package_path`` and return the path."""
    compiler.Compiler().compile(pipeline_func=tabular_training, package_path=str(package_path))
    return Path(package_path)


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else COMPILED))
