"""The built-in ``tabular-training`` pipeline (Kubeflow Pipelines v2 DSL).

Two tasks, seven steps:

    prepare-data: extract → validate data → split
    train-model:  train → evaluate (new vs validated model) → validate model → export

Each task is a process (a pod on a cluster) paying for Python's start and the imports of pandas,
scikit-learn and scipy, so the steps run back to back inside two tasks rather than one task each
(see mlops_operator.components.stages and benchmarks/training_bench.py). Every component is a
lightweight Python component whose body calls one ``mlops_operator.components.stages.run_*``
function, so the logic lives (and is tested) in the package. The pipeline's parameters are declared
once, in ``mlops_operator.reconcile.pipeline_parameters`` (the operator fills them in and keeps a spec
from overriding them); each component declares its inputs in its signature (KFP reads the source of
a component), each task gets the pipeline arguments of the same name, and each component's body
hands its arguments to its stage as they are.
On a KFP cluster the components run in the operator image, which contains the package; locally
``kfp.local.SubprocessRunner(use_venv=False)`` runs them with the operator's own interpreter.

Compile with ``python pipelines/tabular.py [OUTPUT]`` (default: ``pipelines/tabular.yaml``,
which is committed; a unit test fails when it is stale).
"""


import inspect
import sys
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from mlops_operator import __version__
from mlops_operator.reconcile.pipeline_parameters import REQUIRED, TABULAR_PARAMETERS, PipelineParameter
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
    arguments = dict(locals())  # the parameters above, by name: declared once, in this signature
    from mlops_operator.components.stages import run_prepare_data

    outputs = run_prepare_data(arguments)
    dataset.metadata.update({"digest": outputs.digest, "rows": outputs.rows, "source": dataset_uri})
    return outputs


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
    arguments = dict(locals())  # the parameters above, by name: declared once, in this signature
    import json

    from mlops_operator.components.stages import run_train_model

    outputs = run_train_model(arguments)
    model.metadata.update({"estimator": json.loads(outputs.estimator_info)["class"], "framework": "scikit-learn"})
    for name, value in outputs.metrics.items():
        evaluation.log_metric(name, value)
    return outputs


TabularTrainingOutputs = NamedTuple("TabularTrainingOutputs", [
    ("model_version", int),
    ("model_uri", str),
    ("metrics", dict),
    ("validated", bool),
    ("validation_reasons", list),
    ("profile_uri", str),
    ("dataset_digest", str),
    ("sources", list),
    ("comparison", dict),
])


def with_parameters(parameters: "tuple[PipelineParameter, ...]"):
    """Give a pipeline body ``(arguments: dict)`` the signature KFP reads the pipeline's inputs from:
    one parameter per declared PipelineParameter, with its type and default."""

    def decorate(body):
        names = [parameter.name for parameter in parameters]

        def pipeline(*values):  # KFP calls it with one channel per parameter, in signature order
            return body(dict(zip(names, values)))

        pipeline.__name__, pipeline.__qualname__, pipeline.__doc__ = body.__name__, body.__qualname__, body.__doc__
        pipeline.__signature__ = inspect.Signature(
            [inspect.Parameter(parameter.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=parameter.type,
                               default=inspect.Parameter.empty if parameter.default is REQUIRED else parameter.default)
             for parameter in parameters],
            return_annotation=inspect.signature(body).return_annotation)
        return pipeline

    return decorate


def task_inputs(component, arguments: dict) -> dict:
    """The pipeline arguments a component declares an input of the same name for."""
    return {name: value for name, value in arguments.items() if name in component.component_spec.inputs}


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Train, evaluate, gate and version a scikit-learn model on a tabular dataset.",
)
@with_parameters(TABULAR_PARAMETERS)
def tabular_training(arguments: dict) -> TabularTrainingOutputs:
    """Train, evaluate, gate and version a model.

    The parameters are mlops_operator.reconcile.pipeline_parameters.TABULAR_PARAMETERS (what each
    is and where the operator takes it from). ``production_data`` names labelled production data
    (see components.extract.run_extract_sources), ``mix`` how it joins the base dataset (see
    components.split.split_sources), ``champion_model_uri`` the current validated model scored on
    the same holdout, ``retrain_window`` the drift window of a retrain request (recorded in the lineage).
    """
    prepare_task = prepare_data(**task_inputs(prepare_data, arguments), checks=arguments["validation"])
    train_task = train_model(
        **task_inputs(train_model, arguments),
        train=prepare_task.outputs["train"],
        test=prepare_task.outputs["test"],
        schema=prepare_task.outputs["schema"],
        job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset_digest=prepare_task.outputs["digest"],
        dataset_rows=prepare_task.outputs["rows"],
        started_at=prepare_task.outputs["started_at"],
        sources=prepare_task.outputs["sources"],
    )
    # A retrain on the same URI must read the data again: never reuse cached step results.
    for task_ in (prepare_task, train_task):
        task_.set_caching_options(False)

    return TabularTrainingOutputs(
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
