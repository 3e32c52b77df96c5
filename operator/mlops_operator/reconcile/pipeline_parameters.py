"""The built-in ``tabular-training`` pipeline's parameters, declared once.

``pipelines/tabular.py`` builds the pipeline function's signature from :data:`TABULAR_PARAMETERS`
and hands each task the pipeline arguments its component declares; the operator fills them in
(``reconcile.modeltraining.pipeline_parameters``) and refuses a ``spec.pipeline.parameters`` that
names one of them (``reconcile.validation``): each would move the model registry, bypass the URI
policy on the dataset, or forge the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REQUIRED: Any = ...
"""The default of a parameter every run must give."""


@dataclass(frozen=True)
class PipelineParameter:
    """One input of the pipeline."""

    name: str
    type: type
    """str, int, float, bool, list or dict (KFP's parameter types)."""
    source: str
    """Where the operator takes the value from (said when a spec tries to set it)."""
    default: Any = REQUIRED
    """What the pipeline uses when a run does not give it."""


TABULAR_PARAMETERS: tuple[PipelineParameter, ...] = (
    PipelineParameter("dataset_uri", str, "from spec.dataset.uri, checked by the URI policy"),
    PipelineParameter("target", str, "from spec.dataset.target"),
    PipelineParameter("model_name", str, "from spec.model"),
    PipelineParameter("model_namespace", str, "the ModelTraining's namespace: its part of the model registry"),
    PipelineParameter("artifact_root", str, "from the operator's artifact root: the model registry"),
    # Keys the model version (KFP's job name when empty).
    PipelineParameter("run_name", str, "the run's own name", ""),
    PipelineParameter("dataset_format", str, "from spec.dataset.format", "auto"),
    PipelineParameter("features", list, "from spec.dataset.features", []),
    PipelineParameter("task", str, "from spec.training.task", "auto"),
    PipelineParameter("estimator", str, "from spec.training.estimator", ""),
    # A JSON object as text: KFP turns every number inside a dict parameter into a float, and 1 and
    # 1.0 mean different things to some estimators.
    PipelineParameter("estimator_params", str, "from spec.training.parameters", "{}"),
    PipelineParameter("test_size", float, "from spec.training.testSize", 0.25),
    PipelineParameter("seed", int, "from spec.training.seed", 42),
    PipelineParameter("validation", dict, "from spec.dataValidation", {}),
    PipelineParameter("gate", dict, "from spec.validation.thresholds", {}),
    PipelineParameter("baseline_metrics", dict, "from the current validated version", {}),
    PipelineParameter("max_regression", dict, "from spec.validation.maxRegression", {}),
    # The sha256 of the compiled file, filled in by whoever submits it (unknown at compile time).
    PipelineParameter("pipeline_digest", str, "the digest of the compiled pipeline", ""),
    PipelineParameter("production_data", dict, "from spec.productionData", {}),
    PipelineParameter("mix", dict, "from spec.productionData.mix", {}),
    PipelineParameter("champion_model_uri", str, "the current validated version", ""),
    PipelineParameter("retrain_window", dict, "from the DriftMonitor's retrain request", {}),
)
