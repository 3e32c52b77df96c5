"""Checks of a parsed spec that the CRD schema and its CEL rules cannot express.

Each returns a list of readable problems; empty means valid. An object with problems is marked
InvalidSpec and not retried until its spec changes.
"""

from __future__ import annotations

import json
import posixpath
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import unquote, urlsplit


from mlops_operator.api.common import MAX_PARAMETERS_BYTES
from mlops_operator.api.driftmonitor import DriftMonitorSpec
from mlops_operator.api.errors import InvalidSpec
from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.reconcile.cost import parse_quantity
from mlops_operator.reconcile.durations import cron_from, cron_is_valid, parse_duration
from mlops_operator.reconcile.pipeline_parameters import TABULAR_PARAMETERS

SUPPORTED_URI_SCHEMES = ("file", "s3", "gs", "memory", "sklearn", "http", "https")
CLASSIFICATION_METRICS = ("accuracy", "f1", "rocAuc")
REGRESSION_METRICS = ("rmse", "mae", "r2")
# A schedule must fire within this horizon (a valid cron such as "0 0 31 2 *" never does).
SCHEDULE_HORIZON = timedelta(days=4 * 366)
MAX_CPU_CORES = 1024
MAX_MEMORY_BYTES = 64 * 2**40


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL with a host, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        return f"{url!r} is not a URL: {error}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http:// or https:// URL with a host"
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _endpoint(url: str) -> tuple[str, str, int, list[str]]:
    """(scheme, host, port, path segments) of an http(s) URL, the path normalised (``..`` resolved);
    ValueError if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    path = posixpath.normpath("/" + unquote(parts.path))
    return (parts.scheme, parts.hostname.rstrip("."), parts.port or _DEFAULT_PORTS[parts.scheme],
            [segment for segment in path.split("/") if segment])


def endpoint_problem(field: str, url: str | None, own: str | None, prefixes: Sequence[str]) -> str | None:
    """Why a service endpoint a spec names (``spec.kfp.host``, ``spec.rollout.analysis.prometheusUrl``) may not
    be called, or None.

    The operator calls it from its own network position (and sends a KFP token there), so it must be the
    operator's own endpoint for the field (``own``: MLOPS_KFP_HOST, MLOPS_PROMETHEUS_URL) or lie under one of the
    administrator's MLOPS_ENDPOINT_PREFIXES: same scheme, host and port, and the path under the prefix's path
    on a segment boundary. Unset (None or empty): the operator's own is used, nothing to check.
    """
    if not url:
        return None
    try:
        scheme, host, port, path = _endpoint(url)
    except ValueError:
        return None  # not a URL at all: http_url_problem says so
    allowed = [prefix for prefix in (own, *prefixes) if prefix]
    for prefix in allowed:
        try:
            p_scheme, p_host, p_port, p_path = _endpoint(prefix)
        except ValueError:
            continue
        if (scheme, host, port) == (p_scheme, p_host, p_port) and path[:len(p_path)] == p_path:
            return None
    listed = ", ".join(allowed) if allowed else "none is set"
    return (f"{field}: {url!r} is not an endpoint this operator may call (endpoint allow-list: the operator's own "
            f"and MLOPS_ENDPOINT_PREFIXES; {listed}); leave it empty to use the operator's own, or ask the "
            "platform team to allow it")


def schedule_problem(schedule: str, now: datetime | None = None) -> str | None:
    """Why a cron schedule is unusable (invalid, or never fires), or None."""
    if not cron_is_valid(schedule):
        return f"{schedule!r} is not a valid cron expression"
    start = now or datetime.now(UTC)
    try:
        following = cron_from(schedule, start).get_next(datetime)
    except Exception:  # croniter gives up on dates that never come (CroniterBadDateError and friends)
        following = None
    if following is None or following - start > SCHEDULE_HORIZON:
        return f"{schedule!r} never fires (no time matches it in the next four years)"
    return None


# The pipeline parameters the operator sets itself, and from what: a user's spec.pipeline.parameters may not
# name them (they would move the model registry, bypass the URI policy on the dataset, or forge the gate).
OPERATOR_PIPELINE_PARAMETERS: dict[str, str] = {parameter.name: parameter.source for parameter in TABULAR_PARAMETERS}


def parameters_problem(field: str, parameters: dict) -> str | None:
    """Why a free-form parameter map is unusable (too large, not JSON), or None."""
    try:
        size = len(json.dumps(parameters, separators=(",", ":")))
    except (TypeError, ValueError) as error:
        return f"{field}: not JSON: {error}"
    if size > MAX_PARAMETERS_BYTES:
        return f"{field}: {size} bytes as JSON, at most {MAX_PARAMETERS_BYTES} are allowed"
    return None


def training_spec_errors(spec: ModelTrainingSpec, default_kfp_host: str | None = None,
                         estimator_task: Callable[[str], str | None] | None = None) -> list[str]:
    """Problems with a ModelTraining spec, all found before any run starts.

    ``estimator_task`` tells an estimator name's task (classification, regression, None: unknown),
    so metrics that do not fit the task are refused at once rather than after training.
    """
    problems = []
    if spec.schedule:
        problem = schedule_problem(spec.schedule)
        if problem:
            problems.append(f"spec.schedule: {problem}")
    if _scheme(spec.dataset.uri) not in SUPPORTED_URI_SCHEMES:
        problems.append(f"spec.dataset.uri: unsupported scheme {_scheme(spec.dataset.uri)!r}")
    if spec.backend == "kfp" and not ((spec.kfp and spec.kfp.host) or default_kfp_host):
        problems.append("spec.kfp.host: backend kfp needs a KFP API host (here or in the operator's MLOPS_KFP_HOST)")
    if spec.backend == "kfp":
        host = (spec.kfp and spec.kfp.host) or default_kfp_host
        problem = http_url_problem(host) if host else None
        if problem:
            problems.append(f"spec.kfp.host: {problem}")
    for field, parameters in (("spec.training.parameters", spec.training.parameters),
                              ("spec.pipeline.parameters", spec.pipeline.parameters)):
        problem = parameters_problem(field, parameters)
        if problem:
            problems.append(problem)
    protected = sorted(set(spec.pipeline.parameters) & set(OPERATOR_PIPELINE_PARAMETERS))
    if protected:
        problems.append("spec.pipeline.parameters: " + "; ".join(
            f"{name} is set by the operator ({OPERATOR_PIPELINE_PARAMETERS[name]})" for name in protected)
            + ": it cannot be overridden here")
    task = spec.training.task
    if task == "auto" and estimator_task is not None:
        task = estimator_task(spec.training.estimator) or "auto"
    metrics = [t.metric for t in spec.validation.thresholds]
    wrong = [m for m in metrics if m in (REGRESSION_METRICS if task == "classification" else
                                         CLASSIFICATION_METRICS if task == "regression" else ())]
    if wrong:
        problems.append(f"spec.validation.thresholds: {', '.join(wrong)} do not apply to {task} "
                        f"(estimator {spec.training.estimator}); use "
                        f"{', '.join(CLASSIFICATION_METRICS if task == 'classification' else REGRESSION_METRICS)}")
    if spec.dataset.credentials_secret_ref and spec.backend == "kfp":
        problems.append("spec.dataset.credentialsSecretRef: honoured by backends local and job, not kfp; with kfp give "
                        "the runs' service account (MLOPS_KFP_SERVICE_ACCOUNT) access to the dataset (e.g. IRSA) "
                        "and leave it out")
    if spec.dataset.target in spec.dataset.features:
        problems.append("spec.dataset.features: must not contain the target column")
    for check in spec.data_validation.columns:
        if check.min is not None and check.max is not None and check.min > check.max:
            problems.append(f"spec.dataValidation.columns[{check.name}]: min exceeds max")
    return problems + _training_run_problems(spec)


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class EstimatorCatalog(Protocol):
    """What the installed packages say about an estimator name (``backends.estimators``)."""

    def estimator_task(self, name: str) -> str | None:
        """classification or regression; None for a name that resolves to neither (or to nothing)."""

    def resolve_estimator(self, name: str) -> type:
        """The class of a name; raises InvalidSpec (unknown, with a did-you-mean hint; not installed)."""

    def build_estimator(self, name: str, params: dict[str, Any] | None, task: str, seed: int
                        ) -> tuple[Any, dict[str, Any]]:
        """The estimator as the train step builds it; raises InvalidSpec (a parameter it does not
        take, the wrong kind for the task)."""

    def check_parameters(self, estimator: Any) -> None:
        """The estimator library's own checks of the parameter values; raises what they raise."""


def estimator_problems(spec: ModelTrainingSpec, catalog: EstimatorCatalog) -> list[str]:
    """The estimator and its parameters, judged as the train step will build them, before any run
    (the built-in pipeline only: a custom pipeline interprets spec.training itself)."""
    if spec.pipeline.config_map_ref or spec.pipeline.uri:
        return []
    training = spec.training
    try:
        kind = catalog.estimator_task(training.estimator)
        if kind is None:
            catalog.resolve_estimator(training.estimator)  # unknown: raises with a did-you-mean hint
            return [f"spec.training.estimator: {training.estimator} is neither a classifier nor a regressor"]
        task = training.task if training.task != "auto" else kind
        estimator, _ = catalog.build_estimator(training.estimator, dict(training.parameters), task, training.seed)
        catalog.check_parameters(estimator)
    except InvalidSpec as error:
        return [f"spec.training: {error.message}"]
    except Exception as error:  # InvalidParameterError (ValueError + TypeError) and anything the class raises
        return [f"spec.training.parameters: estimator {training.estimator}: {error}"[:1024]]
    return []


def local_training_problem(spec: ModelTrainingSpec, runs_in_pod: bool, allowed_in_pod: bool) -> str | None:
    """Backend local inside the operator's Pod: refused unless the installation allows it (the runs would
    share the operator Pod's CPU and memory, one at a time beside the controller, lost on a restart)."""
    if spec.backend != "local" or not runs_in_pod or allowed_in_pod:
        return None
    return ("spec.backend: local training would run inside the operator's Pod (its CPU and memory, lost when the "
            "Pod restarts); this installation does not allow it: use backend job (a Kubernetes Job per run) or kfp, "
            "or have the operator's "
            "MLOPS_LOCAL_TRAINING_IN_POD (chart: operator.localTrainingInPod) set to true")


def _training_run_problems(spec: ModelTrainingSpec) -> list[str]:
    """spec.timeout, resources and nodeSelector beyond what the schema checks."""
    problems = []
    if spec.timeout is not None:
        try:
            if parse_duration(spec.timeout).total_seconds() <= 0:
                problems.append("spec.timeout: must be above 0")
        except ValueError as error:
            problems.append(f"spec.timeout: {error}")
    resources = spec.resources
    if resources is not None:
        for kind, amounts in (("requests", resources.requests), ("limits", resources.limits)):
            for name in ("cpu", "memory"):
                value = getattr(amounts, name) if amounts else None
                if value is not None and parse_quantity(value) <= 0:
                    problems.append(f"spec.resources.{kind}.{name}: {value!r} must be above 0")
        gpus = [amounts.gpu for amounts in (resources.requests, resources.limits) if amounts and amounts.gpu]
        if len(gpus) == 2 and gpus[0] != gpus[1]:
            problems.append("spec.resources: the nvidia.com/gpu request and limit must be equal (an extended "
                            "resource is never overcommitted); set it in limits only")
    for key, value in (spec.node_selector or {}).items():
        if len(key) > 316 or not _LABEL_KEY.match(key) or len(key.rsplit("/", 1)[0]) > 253:
            problems.append(f"spec.nodeSelector: {key!r} is not a label key")
        elif not _LABEL_VALUE.match(value):
            problems.append(f"spec.nodeSelector.{key}: {value!r} is not a label value")
    return problems


def deployment_spec_errors(spec: ModelDeploymentSpec, known_instance_types: set[str] | None = None) -> list[str]:
    """Problems with a ModelDeployment spec."""
    problems = []
    for kind in ("requests", "limits"):
        amounts = getattr(spec.resources, kind)
        for resource, value, most in (("cpu", amounts.cpu, MAX_CPU_CORES), ("memory", amounts.memory, MAX_MEMORY_BYTES)):
            if value is None:
                continue
            try:
                amount = parse_quantity(value)
            except (ValueError, ArithmeticError):
                problems.append(f"spec.resources.{kind}.{resource}: {value!r} is not a Kubernetes quantity")
                continue
            if not 0 < amount <= most:
                problems.append(f"spec.resources.{kind}.{resource}: {value!r} must be above 0 and at most "
                                f"{'1024 cores' if resource == 'cpu' else '64Ti'}")
    url = spec.rollout.analysis.prometheus_url
    if url:
        problem = http_url_problem(url)
        if problem:
            problems.append(f"spec.rollout.analysis.prometheusUrl: {problem}")
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


BOUNDED_SCORES = frozenset({"ks", "chi2", "js"})
"""Tests whose score (an effect size) cannot exceed 1."""


def drift_spec_errors(spec: DriftMonitorSpec, namespace: str | None = None) -> list[str]:
    """Problems with a DriftMonitor spec (``namespace``: the DriftMonitor's own)."""
    problems = []
    ref_namespace = spec.deployment_ref.namespace
    if ref_namespace and namespace and ref_namespace != namespace:
        problems.append(f"spec.deploymentRef.namespace: {ref_namespace!r} is not this DriftMonitor's namespace "
                        f"{namespace!r}; the ModelDeployment must be in the same namespace")
    if not spec.tests:
        problems.append("spec.tests: needs at least one test")
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
    for test in spec.tests:
        if test.name in BOUNDED_SCORES and test.threshold >= 1:
            problems.append(f"spec.tests[{test.name}].threshold: {test.name}'s score is in [0, 1], so a threshold of "
                            f"{test.threshold:g} never flags drift (it is an effect size; significance is spec.alpha)")
    return problems
