"""ModelTraining (mt): a model trained, evaluated, validated and versioned by a Kubeflow Pipelines run.

A run starts when the spec's generation changes (unless ``spec.runOnChange`` is false), when the
``mlops.dev/retrain-requested`` annotation changes, or when ``spec.schedule`` fires.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from mlops_operator.api.common import (
    DNS_LABEL,
    DURATION,
    HTTP_URL,
    NAME_LENGTH_RULE,
    URI,
    ColumnName,
    ConfigMapKeyReference,
    KindInfo,
    LocalObjectReference,
    Model,
    PrinterColumn,
    Resource,
    SecretKeyReference,
    StatusBase,
)

METRIC_NAMES = ("accuracy", "f1", "rocAuc", "rmse", "mae", "r2")
MetricName = Literal["accuracy", "f1", "rocAuc", "rmse", "mae", "r2"]
# Matches one cron field; the whole expression is five fields or a macro. The operator parses it
# with croniter as well, so this is the first line of defence, not the only one.
_CRON_FIELD = r"(\*|[0-9]{1,2}|[0-9]{1,2}-[0-9]{1,2}|\*/[0-9]{1,2}|[0-9]{1,2}(-[0-9]{1,2})?/[0-9]{1,2})(,(\*|[0-9]{1,2}|[0-9]{1,2}-[0-9]{1,2}|[0-9]{1,2}(-[0-9]{1,2})?/[0-9]{1,2}))*"
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + " +".join([_CRON_FIELD] * 5)
    + r")$"
)


class PipelineSource(Model):
    """Which compiled Kubeflow pipeline runs. At most one of template, configMapRef and uri;
    with none, the built-in ``tabular`` template runs."""

    template: Literal["tabular"] | None = None
    """A built-in pipeline template: ``tabular`` (extract, validate data, split, train, evaluate,
    validate the model, export with lineage and a reference data profile)."""
    config_map_ref: ConfigMapKeyReference | None = None
    """A ConfigMap key holding a compiled KFP v2 pipeline package (IR YAML)."""
    uri: str | None = Field(None, max_length=2048, pattern=URI)
    """A URI (file://, s3://, https://) of a compiled KFP v2 pipeline package (IR YAML)."""
    parameters: dict[str, Any] = Field(default_factory=dict, max_length=64)
    """Extra pipeline parameters, passed to the run as they are (values: string, number, bool, object)."""


class Dataset(Model):
    """Where the training data comes from."""

    uri: str = Field(min_length=1, max_length=2048, pattern=URI)
    """Dataset URI read through fsspec: file://, s3://, a plain path, or sklearn://<name> for the
    datasets bundled with scikit-learn (iris, wine, breast_cancer, diabetes, digits). Data that
    grows: a glob (s3://b/sales/*/part.parquet) or a prefix ending in / reads the newest object by
    name on each run; a date template (s3://b/sales/dt={date:%Y-%m-%d}/part.parquet) the newest
    partition not after the run's date. The object read is in status.latestRun.sources."""
    format: Literal["auto", "csv", "parquet"] = "auto"
    """File format; auto picks it from the URI's extension."""
    target: ColumnName
    """Name of the label column."""
    features: list[ColumnName] = Field(default_factory=list, max_length=512,
                                       json_schema_extra={"x-kubernetes-list-type": "set"})
    """Feature columns to use; empty means every column except the target."""
    credentials_secret_ref: LocalObjectReference | None = None
    """A Secret in the same namespace whose keys are passed to fsspec as storage options for the
    dataset: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL,
    AWS_REGION, or fsspec option names (key, secret, endpoint_url, ...). Read when a run starts and
    handed to it through its environment (backend job: mounted in the run's Pod); never copied into
    status, events or logs. Backends local and job; without it the run uses the operator's own
    credentials (environment or IRSA), or on job the Pod's (storageSecretName, its service account)."""


class ProductionWindow(Model):
    """Which served requests count. A retrain requested by a DriftMonitor starts at the beginning
    of the window the monitor saw instead of ``duration``; ``rows`` applies either way."""

    duration: str | None = Field("7d", max_length=32, pattern=DURATION)
    """Only requests younger than this when the run starts (e.g. 1h, 7d); unset: no age limit."""
    rows: int | None = Field(100_000, ge=1, le=100_000_000)
    """At most this many labelled rows, the newest."""


class DataMix(Model):
    """How labelled production rows and the base dataset are combined. Applies when the run has
    at least minRows labelled production rows; with fewer it trains on the base dataset alone."""

    min_rows: int = Field(30, ge=2, le=10_000_000)
    """Fewest labelled production rows (after validation) for production data to be used."""
    max_base_rows: int | None = Field(None, ge=0, le=1_000_000_000)
    """At most this many rows of the base dataset's training split are kept (a seeded sample);
    0 trains on production data alone (the recent window); unset keeps them all."""
    production_weight: float = Field(1.0, gt=0, le=1000)
    """Sample weight of a production row relative to a base row (the estimator's fit must take
    sample_weight unless this is 1)."""


class ProductionData(Model):
    """Labelled production data: the requests a ModelDeployment served (its inference log) joined
    with ground-truth labels. The newest testSize fraction of them is the holdout on which the new
    model and the current validated model are both scored."""

    deployment_ref: LocalObjectReference
    """The ModelDeployment whose served requests are used (same namespace)."""
    labels_uri: str = Field(min_length=1, max_length=2048, pattern=URI)
    """Ground-truth labels, the same feed a DriftMonitor's spec.performance reads: a CSV or Parquet
    file (or a directory of them) with columns id (request id), label and optionally row."""
    window: ProductionWindow = Field(default_factory=ProductionWindow, json_schema_extra={"default": {}})
    """Which served requests count."""
    mix: DataMix = Field(default_factory=DataMix, json_schema_extra={"default": {}})
    """How production rows and the base dataset are combined."""


class ColumnCheck(Model):
    """Expectations for one column of the dataset."""

    name: ColumnName
    """Column name; the column must exist."""
    type: Literal["numeric", "integer", "categorical", "boolean"] | None = None
    """Expected type of the column's values."""
    min: float | None = None
    """Smallest allowed value (numeric columns)."""
    max: float | None = None
    """Largest allowed value (numeric columns)."""
    allowed_values: list[Annotated[str, Field(max_length=253)]] = Field(default_factory=list, max_length=256)
    """Allowed values (categorical columns); empty allows any."""
    max_missing_fraction: float | None = Field(None, ge=0, le=1)
    """Largest allowed fraction of missing values in this column."""


class DataValidation(Model):
    """Checks on the extracted data; a failed check fails the run with reason DataValidationFailed."""

    min_rows: int = Field(10, ge=1, le=1_000_000_000)
    """Fewest rows the dataset must have."""
    max_missing_fraction: float = Field(0.1, ge=0, le=1)
    """Largest allowed fraction of missing values in any column."""
    columns: list[ColumnCheck] = Field(
        default_factory=list, max_length=512,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    """Per-column expectations."""


class Training(Model):
    """The estimator and how the data is split."""

    estimator: str = Field("RandomForestClassifier", min_length=1, max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9_.]*$")
    """A scikit-learn estimator class name (e.g. RandomForestClassifier, LogisticRegression,
    GradientBoostingRegressor), or XGBClassifier/LGBMClassifier and friends when installed."""
    parameters: dict[str, Any] = Field(default_factory=dict, max_length=64)
    """Constructor parameters of the estimator (at most 16 KiB as JSON; the operator checks them
    against the estimator before any run starts)."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """Learning task; auto infers it from the estimator."""
    test_size: float = Field(0.25, gt=0, lt=1)
    """Fraction of rows held out for evaluation."""
    seed: int = Field(42, ge=0, le=2**31 - 1)
    """Random seed of the split and of the estimator when it takes one."""


class MetricThreshold(Model):
    """A bound a metric must meet for the model to be validated."""

    metric: MetricName
    """Metric name: accuracy, f1, rocAuc (classification); rmse, mae, r2 (regression)."""
    min: float | None = None
    """The metric must be at least this."""
    max: float | None = None
    """The metric must be at most this."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "has(self.min) || has(self.max)", "message": "a threshold needs min or max"},
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                    "message": "min must not exceed max",
                },
                {
                    "rule": "!(self.metric in ['accuracy', 'f1', 'rocAuc']) || "
                    "((!has(self.min) || (self.min >= 0.0 && self.min <= 1.0)) && "
                    "(!has(self.max) || (self.max >= 0.0 && self.max <= 1.0)))",
                    "message": "accuracy, f1 and rocAuc lie in [0, 1]: a bound outside can never be met or never fail",
                },
                {
                    "rule": "!(self.metric in ['rmse', 'mae']) || ((!has(self.min) || self.min >= 0.0) && "
                    "(!has(self.max) || self.max > 0.0))",
                    "message": "rmse and mae are at least 0: max must be above 0 and min not below 0",
                },
                {
                    "rule": "self.metric != 'r2' || ((!has(self.min) || self.min <= 1.0) && (!has(self.max) || self.max <= 1.0))",
                    "message": "r2 is at most 1: a bound above 1 can never be met or never fail",
                },
            ]
        }
    }


class Validation(Model):
    """The model validation gate. A model that fails it is kept as a version but not validated,
    so ModelDeployments following this training do not pick it up."""

    thresholds: list[MetricThreshold] = Field(
        default_factory=list, max_length=12,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["metric"]})
    """Absolute bounds on evaluation metrics."""
    max_regression: float | None = Field(None, ge=0, le=1)
    """If set, no metric may be worse than the current validated model's by more than this: an
    absolute amount for accuracy, f1, rocAuc and r2 (0.02 = two points of accuracy), a fraction of
    the baseline for rmse and mae (0.02 = 2% higher error)."""


class KfpBackend(Model):
    """Connection to a Kubeflow Pipelines v2 API (backend kfp). Unset fields use the operator's settings."""

    host: str | None = Field(None, max_length=2048, pattern=HTTP_URL)
    """KFP API endpoint, e.g. http://ml-pipeline.kubeflow.svc:8888."""
    namespace: str | None = Field(None, max_length=63, pattern=DNS_LABEL)
    """Kubeflow profile namespace (multi-user mode)."""
    experiment: str = Field("mlops-operator", min_length=1, max_length=128)
    """KFP experiment the runs are filed under."""
    token_secret_ref: SecretKeyReference | None = None
    """A Secret key holding a bearer token for the KFP API. Read when needed, never copied."""


# What KFP's PipelineTask.set_cpu_request/limit and set_memory_request/limit accept (kfp/dsl/pipeline_task.py):
# the values go into the pipeline spec as kfp's compiler writes them.
CPU_QUANTITY = r"^([0-9]*[.])?[0-9]+m?$"
MEMORY_QUANTITY = r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$"
GPU_RESOURCE = "nvidia.com/gpu"


class TrainingResourceList(Model):
    """Amounts of CPU, memory and NVIDIA GPUs for each step of a run."""

    cpu: str | None = Field(None, max_length=32, pattern=CPU_QUANTITY)
    """CPU: cores, or millicores with m (500m, 2, 1.5)."""
    memory: str | None = Field(None, max_length=32, pattern=MEMORY_QUANTITY)
    """Memory: bytes, or a whole number with E, P, T, G, M, K or their binary forms Ei ... Ki (512Mi, 4Gi)."""
    gpu: int | None = Field(None, alias=GPU_RESOURCE, ge=1, le=64)
    """NVIDIA GPUs (nvidia.com/gpu). Kubernetes takes an extended resource's request as equal to its
    limit: set it in limits (a request alone is taken as the limit)."""


class TrainingResources(Model):
    """Compute resources of each step's container (backend kfp)."""

    requests: TrainingResourceList | None = None
    """What the scheduler reserves."""
    limits: TrainingResourceList | None = None
    """Upper bounds."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.requests) || !has(self.limits) || !has(self.requests.cpu) || "
                    "!has(self.limits.cpu) || quantity(self.requests.cpu).compareTo(quantity(self.limits.cpu)) <= 0",
                    "message": "the cpu request must not exceed the cpu limit",
                },
                {
                    "rule": "!has(self.requests) || !has(self.limits) || !has(self.requests.memory) || "
                    "!has(self.limits.memory) || "
                    "quantity(self.requests.memory).compareTo(quantity(self.limits.memory)) <= 0",
                    "message": "the memory request must not exceed the memory limit",
                },
            ]
        }
    }


class Toleration(Model):
    """A toleration of the step Pods for a node taint (as in a Pod spec)."""

    key: str | None = Field(None, max_length=316, pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    """The taint key; empty with operator Exists matches every taint."""
    operator: Literal["Equal", "Exists"] = "Equal"
    """Equal: key and value must match; Exists: any value."""
    value: str | None = Field(None, max_length=63)
    """The taint value (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect to match; empty matches every effect."""
    toleration_seconds: int | None = Field(None, ge=0, le=31_536_000)
    """With effect NoExecute: how long the Pod stays bound after the taint appears."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "has(self.key) || self.operator == 'Exists'",
                 "message": "a toleration without a key needs operator Exists"},
                {"rule": "self.operator != 'Exists' || !has(self.value)",
                 "message": "a toleration with operator Exists takes no value"},
                {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                 "message": "tolerationSeconds applies to effect NoExecute only"},
            ]
        }
    }


class ModelTrainingSpec(Model):
    """Desired state of a ModelTraining."""

    model: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    """Registry name of the model; versions are stored under <artifactRoot>/models/<namespace>/<model>/<version>/, so each namespace has its own models."""
    dataset: Dataset
    """The training data."""
    training: Training = Field(default_factory=Training, json_schema_extra={"default": {}})
    """Estimator, parameters and split."""
    production_data: ProductionData | None = None
    """Labelled production data to train and evaluate on beside the base dataset."""
    data_validation: DataValidation = Field(default_factory=DataValidation, json_schema_extra={"default": {}})
    """Checks on the data before training: the base dataset must pass them all; production rows
    that fail a row-level check (label, range, allowed values) are counted and left out."""
    validation: Validation = Field(default_factory=Validation)
    """The model validation gate."""
    pipeline: PipelineSource = Field(default_factory=PipelineSource)
    """Which compiled KFP pipeline runs (default: the built-in tabular template)."""
    backend: Literal["local", "kfp", "job"] = "local"
    """Where runs execute: local (kfp.local beside the operator, no cluster services), kfp (a Kubeflow
    Pipelines API) or job (the same compiled pipeline through kfp.local inside a Kubernetes Job per run,
    in the operator's image; needs an object-storage artifact root such as s3://)."""
    kfp: KfpBackend | None = None
    """KFP API connection; only with backend kfp."""
    schedule: str | None = Field(None, max_length=128, pattern=CRON_PATTERN)
    """Cron schedule (five fields, or @hourly/@daily/...) for recurring runs, in UTC."""
    suspend: bool = False
    """Suspends scheduled runs; on-demand runs still start."""
    run_on_change: bool = True
    """Whether a new spec (the object's creation, an edit) starts a run. false: runs start only when
    spec.schedule fires and on retrain requests (a DriftMonitor's, kubectl mlops retrain), as a
    CronJob's do."""
    concurrency_policy: Literal["Forbid", "Replace"] = "Forbid"
    """What a new trigger does while a run is active: Forbid waits for it, Replace cancels it."""
    history_limit: int = Field(10, ge=1, le=10)
    """How many finished runs status.history keeps."""
    resources: TrainingResources | None = None
    """CPU, memory and GPUs of each step's container. Backend kfp (in the pipeline spec); backend job:
    the Job's one container, which runs every step; backend local runs the steps as processes beside
    the operator, which has no per-step resources."""
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(None, max_length=64)
    """Node labels the step Pods must run on (e.g. a GPU node pool). Backend kfp (KFP's Kubernetes
    platform spec, as kfp-kubernetes writes it) and job (the Job's Pod)."""
    tolerations: list[Toleration] | None = Field(None, max_length=32)
    """Taints the step Pods tolerate (e.g. nvidia.com/gpu on GPU nodes). Backend kfp (KFP's
    Kubernetes platform spec, as kfp-kubernetes writes it) and job (the Job's Pod)."""
    timeout: str | None = Field(None, max_length=32, pattern=DURATION)
    """Longest a run may take from its start (e.g. 30m, 2h, 1d): a run still active then is stopped
    and fails with reason DeadlineExceeded. Every backend; backend job also sets it as the Job's
    activeDeadlineSeconds, so Kubernetes stops the Pod even while the operator is down."""
    retries: int = Field(0, ge=0, le=10)
    """How often a failed run is tried again. Backend kfp: each step is retried this many times (KFP
    retry policy, backoff from 0 s doubling up to 1 h); backend local: the whole pipeline is run again,
    except after InvalidSpec or DataValidationFailed, which a retry cannot change; backend job: the
    Job's backoffLimit (a new Pod runs the whole pipeline again), with the same two exceptions (a Pod
    failure policy fails the Job at once)."""
    storage_secret_name: str | None = Field(None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Backend job: a Secret in this namespace with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
    optionally AWS_SESSION_TOKEN) for the artifact root; the Job's Pod references its keys
    (secretKeyRef), the operator never copies them. Not needed with an IAM-bound service account
    (IRSA)."""
    caching: bool = False
    """Let KFP reuse a step's earlier result for the same inputs (backend kfp). Off by default: a run
    on the same dataset URI must read the data again. kfp.local does not cache."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.kfp) || self.backend == 'kfp'",
                    "message": "spec.kfp is only valid with backend: kfp",
                    "fieldPath": ".kfp",
                },
                {
                    "rule": "!has(self.pipeline) || [has(self.pipeline.template), has(self.pipeline.configMapRef), "
                    "has(self.pipeline.uri)].filter(x, x).size() <= 1",
                    "message": "spec.pipeline takes at most one of template, configMapRef and uri",
                    "fieldPath": ".pipeline",
                },
                {
                    "rule": "self.backend in ['kfp', 'job'] || (!has(self.resources) && !has(self.nodeSelector) && "
                    "!has(self.tolerations))",
                    "message": "resources, nodeSelector and tolerations apply to the Pods of backends kfp and job; "
                    "backend local runs the steps as processes beside the operator",
                    "fieldPath": ".backend",
                },
                {
                    "rule": "!has(self.storageSecretName) || self.backend == 'job'",
                    "message": "spec.storageSecretName is only valid with backend: job",
                    "fieldPath": ".storageSecretName",
                },
                {
                    "rule": "self.backend == 'kfp' || !self.caching",
                    "message": "caching needs backend kfp (kfp.local does not cache)",
                    "fieldPath": ".caching",
                },
                {
                    "rule": "!has(self.schedule) || self.backend in ['local', 'kfp', 'job']",
                    "message": "spec.schedule needs a backend that can schedule runs (local, kfp or job)",
                    "fieldPath": ".schedule",
                },
            ]
        }
    }


class DataSource(Model):
    """One source of a run's data."""

    name: Literal["base", "production"]
    """base (spec.dataset) or production (labelled served requests)."""
    uri: str = Field(max_length=4096)
    """Where it was read from (for production: the inference log and the label feed)."""
    resolved_uri: str | None = Field(None, max_length=2048)
    """The object read when the dataset URI names many (glob, prefix, date template)."""
    rows: int = Field(0, ge=0)
    """Rows read (production: labelled rows)."""
    digest: str | None = Field(None, max_length=128)
    """Content digest (sha256)."""
    served_rows: int | None = Field(None, ge=0)
    """Production: served rows in the range."""
    unlabelled_rows: int | None = Field(None, ge=0)
    """Production: served rows without a label (not used)."""
    rejected_rows: int | None = Field(None, ge=0)
    """Production: labelled rows that failed a data check (not used)."""
    rejections: dict[str, int] = Field(default_factory=dict, max_length=64)
    """Production: rejected rows per failed check."""
    from_: str | None = Field(None, alias="from")
    """Production: time of the oldest row used (RFC 3339)."""
    to: str | None = None
    """Production: time of the newest row used (RFC 3339)."""
    message: str | None = Field(None, max_length=1024)
    """Why nothing (or less) was used, if so."""


class ModelScore(Model):
    """A model's metrics on the holdout."""

    version: int | None = Field(None, ge=1)
    """Model version (the new one has none until exported)."""
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)
    """Its metrics on the holdout."""
    message: str | None = Field(None, max_length=1024)
    """Why it could not be scored, if so."""


class ModelComparison(Model):
    """The new model (challenger) and the current validated one (champion) on the same holdout;
    the gate's maxRegression compares these two."""

    holdout: str = Field(max_length=32)
    """production (the newest labelled production rows) or dataset (the dataset's test split)."""
    holdout_rows: int = Field(0, ge=0)
    """Rows in the holdout."""
    challenger: ModelScore
    """The new model."""
    champion: ModelScore | None = None
    """The validated model it would replace (none on the first run)."""


class RetrainWindow(Model):
    """The window a DriftMonitor saw when it requested the retrain."""

    monitor: str | None = Field(None, max_length=253)
    """The DriftMonitor."""
    start: str | None = None
    """Oldest request of the window (RFC 3339); production data is read from here on."""
    end: str | None = None
    """Newest request of the window (RFC 3339)."""
    rows: int | None = Field(None, ge=0)
    """Rows in the window."""
    drifted_features: list[str] = Field(default_factory=list, max_length=512)
    """The features that drifted."""


class RunRecord(Model):
    """One training run."""

    name: str = Field(max_length=253)
    """Deterministic run name (from the object's uid and the trigger)."""
    trigger: str = Field(max_length=1024)
    """What started the run: spec (generation N), retrain (with the requested reason) or schedule (time)."""
    state: Literal["Pending", "Running", "Succeeded", "Failed", "Canceled"]
    """State of the run."""
    backend_run_id: str | None = Field(None, max_length=253)
    """The run's id in the backend (KFP run id, the local run directory name, or the Job's name)."""
    started: str | None = None
    """When the run started (RFC 3339)."""
    finished: str | None = None
    """When the run finished (RFC 3339)."""
    reason: str | None = Field(None, max_length=128)
    """Why the run failed, CamelCase (DatasetUnavailable, DataValidationFailed, InvalidSpec, ...)."""
    message: str | None = Field(None, max_length=4096)
    """A readable account of a failure."""
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)
    """Evaluation metrics on the held-out split."""
    validated: bool | None = None
    """Whether the model passed the validation gate."""
    model_version: int | None = Field(None, ge=1)
    """Model version the run produced."""
    model_uri: str | None = Field(None, max_length=2048)
    """Where the model version is stored."""
    profile_uri: str | None = Field(None, max_length=2048)
    """The reference data profile for drift monitoring."""
    dataset_digest: str | None = Field(None, max_length=128)
    """Content digest of the training data (sha256)."""
    sources: list[DataSource] = Field(default_factory=list, max_length=2)
    """Each data source with its URI, rows and content digest (also in the version's lineage.json)."""
    comparison: ModelComparison | None = None
    """The new and the current validated model scored on the same holdout."""
    retrain_window: RetrainWindow | None = None
    """The drift window of the retrain request that started the run."""


class ValidatedModel(Model):
    """The newest model version that passed the validation gate; what ModelDeployments follow."""

    version: int = Field(ge=1)
    """Model version."""
    uri: str = Field(max_length=2048)
    """Where the model version is stored (directory with model-settings.json)."""
    metrics: dict[str, float] = Field(default_factory=dict, max_length=32)
    """Its evaluation metrics."""
    profile_uri: str | None = Field(None, max_length=2048)
    """Its reference data profile."""
    run: str | None = Field(None, max_length=253)
    """The run that produced it."""


class ModelTrainingStatus(StatusBase):
    """Observed state of a ModelTraining."""

    condition_types: ClassVar[tuple[str, ...]] = ("Succeeded", "Validated")
    summary_condition: ClassVar[str] = "Succeeded"

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Invalid"] | None = None
    """Summary of the latest run for printing; the conditions carry the details."""
    latest_run: RunRecord | None = None
    """The most recent run."""
    history: list[RunRecord] = Field(default_factory=list, max_length=10)
    """Finished runs, newest first."""
    latest_validated_model: ValidatedModel | None = None
    """The newest model version that passed the validation gate."""
    triggered_generation: int | None = Field(None, ge=0)
    """The newest .metadata.generation a run was started for."""
    observed_retrain_request: str | None = Field(None, max_length=1024)
    """The mlops.dev/retrain-requested annotation value the operator last acted on."""
    last_schedule_time: str | None = None
    """The last time the schedule fired."""
    next_schedule_time: str | None = None
    """The next time the schedule fires."""
    recurring_run_id: str | None = Field(None, max_length=253)
    """The backend's own schedule of spec.schedule (backend kfp: the KFP recurring run's id)."""


class ModelTraining(Resource):
    """A model trained, evaluated, validated and versioned by a Kubeflow Pipelines run."""

    info: ClassVar[KindInfo] = KindInfo(
        kind="ModelTraining",
        plural="modeltrainings",
        short_names=("mt",),
        printer_columns=(
            PrinterColumn("Succeeded", '.status.conditions[?(@.type=="Succeeded")].status'),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Model", ".spec.model"),
            PrinterColumn("Version", ".status.latestValidatedModel.version", "integer",
                          "Newest validated model version"),
            PrinterColumn("Backend", ".spec.backend", priority=1),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
        root_validations=(NAME_LENGTH_RULE,),
    )

    spec: ModelTrainingSpec
    """Desired state."""
    status: ModelTrainingStatus = Field(default_factory=ModelTrainingStatus)
    """Observed state, written by the operator."""
