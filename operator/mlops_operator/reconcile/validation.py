"""Checks of a parsed spec that the CRD schema and its CEL rules cannot express.

Each returns a list of readable problems; empty means valid. An object with problems is marked
InvalidSpec and not retried until its spec changes.
"""

from __future__ import annotations

from croniter import croniter

from mlops_operator.api.driftmonitor import DriftMonitorSpec
from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.reconcile.durations import parse_duration

SUPPORTED_URI_SCHEMES = ("file", "s3", "gs", "memory", "sklearn", "http", "https")


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def training_spec_errors(spec: ModelTrainingSpec, default_kfp_host: str | None = None) -> list[str]:
    """Problems with a ModelTraining spec."""
    problems = []
    if spec.schedule and not croniter.is_valid(spec.schedule):
        problems.append(f"spec.schedule: {spec.schedule!r} is not a valid cron expression")
    if _scheme(spec.dataset.uri) not in SUPPORTED_URI_SCHEMES:
        problems.append(f"spec.dataset.uri: unsupported scheme {_scheme(spec.dataset.uri)!r}")
    if spec.backend == "kfp" and not ((spec.kfp and spec.kfp.host) or default_kfp_host):
        problems.append("spec.kfp.host: backend kfp needs a KFP API host (here or in the operator's MLOPS_KFP_HOST)")
    if spec.dataset.target in spec.dataset.features:
        problems.append("spec.dataset.features: must not contain the target column")
    for check in spec.data_validation.columns:
        if check.min is not None and check.max is not None and check.min > check.max:
            problems.append(f"spec.dataValidation.columns[{check.name}]: min exceeds max")
    return problems


def deployment_spec_errors(spec: ModelDeploymentSpec, known_instance_types: set[str] | None = None) -> list[str]:
    """Problems with a ModelDeployment spec."""
    problems = []
    if spec.model.uri and _scheme(spec.model.uri) not in SUPPORTED_URI_SCHEMES:
        problems.append(f"spec.model.uri: unsupported scheme {_scheme(spec.model.uri)!r}")
    if spec.runtime != "sklearn" and spec.backend == "local":
        problems.append(f"spec.runtime: the local backend serves sklearn models only, not {spec.runtime}")
    metric = spec.rollout.analysis.model_metric
    if metric and metric.min is None and metric.max is None:
        problems.append("spec.rollout.analysis.modelMetric: needs min or max")
    if spec.instance_type and known_instance_types is not None and spec.instance_type not in known_instance_types:
        problems.append(
            f"spec.instanceType: {spec.instance_type!r} is not in the price table "
            f"({', '.join(sorted(known_instance_types))})"
        )
    return problems


def drift_spec_errors(spec: DriftMonitorSpec) -> list[str]:
    """Problems with a DriftMonitor spec."""
    problems = []
    for field, value in (("spec.interval", spec.interval), ("spec.window.duration", spec.window.duration)):
        if value is None:
            continue
        try:
            if parse_duration(value).total_seconds() <= 0:
                problems.append(f"{field}: must be positive")
        except ValueError as error:
            problems.append(f"{field}: {error}")
    if spec.window.rows is None and spec.window.duration is None:
        problems.append("spec.window: needs rows or duration")
    if spec.on_drift.retrain:
        try:
            parse_duration(spec.on_drift.retrain.cooldown)
        except ValueError as error:
            problems.append(f"spec.onDrift.retrain.cooldown: {error}")
    names = [test.name for test in spec.tests]
    if len(names) != len(set(names)):
        problems.append("spec.tests: each test may appear once")
    return problems
