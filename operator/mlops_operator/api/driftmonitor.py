"""DriftMonitor (dm): data and concept drift of what a ModelDeployment actually receives, and the
retrain request that closes the loop."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mlops_operator.api.common import (
    DURATION,
    NAME_LENGTH_RULE,
    KindInfo,
    LocalObjectReference,
    Model,
    PrinterColumn,
    Resource,
    StatusBase,
)

TestName = Literal["psi", "ks", "chi2", "js", "wasserstein"]


class Reference(Model):
    """What live data is compared with. At most one of profileUri and datasetUri; with neither, the
    reference profile of the model version the deployment serves (written by its training run)."""

    profile_uri: str | None = Field(None, max_length=2048)
    """A reference data profile (profile.json written by a training run)."""
    dataset_uri: str | None = Field(None, max_length=2048)
    """A reference dataset (CSV or Parquet through fsspec, or sklearn://<name>)."""
    target: str | None = Field(None, max_length=253)
    """Label column of the reference dataset, excluded from the comparison."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.profileUri) && has(self.datasetUri))",
                    "message": "spec.reference takes at most one of profileUri and datasetUri",
                }
            ]
        }
    }


class Window(Model):
    """Which recent requests are compared with the reference."""

    rows: int | None = Field(1000, ge=1, le=10_000_000)
    """Most recent requests to use."""
    duration: str | None = Field(None, max_length=32, pattern=DURATION)
    """Only requests younger than this (e.g. 15m, 1h, 7d)."""
    min_samples: int = Field(100, ge=1, le=10_000_000)
    """Fewest requests needed for a verdict; fewer is reported as InsufficientData, not drift."""


class DriftTest(Model):
    """One statistical test with its threshold."""

    name: TestName
    """psi, wasserstein (numeric features; score above threshold is drift), ks (numeric; p-value
    below threshold is drift), chi2 (categorical; p-value below threshold), js (categorical,
    Jensen-Shannon distance in [0, 1]; score above threshold)."""
    threshold: float = Field(ge=0, le=100)
    """The test's threshold (a score or a p-value, see name)."""


class Performance(Model):
    """Concept drift: the live model metric from ground-truth labels, compared with training."""

    labels_uri: str = Field(min_length=1, max_length=2048)
    """A CSV or Parquet file (or a directory of them) with columns id (the request id) and label."""
    metric: Literal["accuracy", "f1", "rmse", "mae"] = "accuracy"
    """Metric computed on the labelled requests."""
    max_degradation: float = Field(0.05, ge=0)
    """How much worse than the training metric the live metric may be (absolute)."""


class RetrainPolicy(Model):
    """Ask a ModelTraining for a new run when drift is detected."""

    training_ref: LocalObjectReference
    """The ModelTraining to retrain (same namespace)."""
    cooldown: str = Field("1h", max_length=32, pattern=DURATION)
    """Least time between two retrain requests."""
    max_per_day: int = Field(3, ge=1, le=1000)
    """Most retrain requests in any 24 hours."""


class OnDrift(Model):
    """What happens when drift is detected."""

    retrain: RetrainPolicy | None = None
    """Request a retrain of a ModelTraining."""


class DriftMonitorSpec(Model):
    """Desired state of a DriftMonitor."""

    deployment_ref: LocalObjectReference
    """The ModelDeployment whose inference log is watched (same namespace)."""
    reference: Reference = Field(default_factory=Reference, json_schema_extra={"default": {}})
    """What live data is compared with."""
    window: Window = Field(default_factory=Window, json_schema_extra={"default": {}})
    """Which recent requests are compared."""
    interval: str = Field("5m", max_length=32, pattern=DURATION)
    """How often to check."""
    features: list[str] = Field(default_factory=list, max_length=512)
    """Features to check; empty means all features of the reference."""
    tests: list[DriftTest] = Field(
        default_factory=lambda: [
            DriftTest(name="psi", threshold=0.2),
            DriftTest(name="ks", threshold=0.05),
            DriftTest(name="chi2", threshold=0.05),
        ],
        max_length=5,
        json_schema_extra={
            "default": [
                {"name": "psi", "threshold": 0.2},
                {"name": "ks", "threshold": 0.05},
                {"name": "chi2", "threshold": 0.05},
            ],
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    """Tests to run; each test applies to the feature types it supports."""
    correction: Literal["bonferroni", "fdr", "none"] = "bonferroni"
    """Multiple-testing correction of p-value tests across features."""
    drift_share: float = Field(0.0, ge=0, le=1)
    """Overall drift is declared when more than this fraction of features drift (0: any feature)."""
    performance: Performance | None = None
    """Concept drift from ground-truth labels."""
    on_drift: OnDrift = Field(default_factory=OnDrift)
    """What happens when drift is detected."""


class FeatureResult(Model):
    """The result of one test on one feature."""

    feature: str = Field(max_length=253)
    """Feature name."""
    test: TestName
    """Test name."""
    score: float
    """Test statistic or score."""
    p_value: float | None = None
    """p-value, for ks and chi2 (after correction)."""
    threshold: float
    """Threshold the verdict used."""
    drifted: bool
    """Whether this test calls the feature drifted."""


class PerformanceResult(Model):
    """Live model quality from ground-truth labels."""

    metric: str
    """Metric name."""
    live: float | None = None
    """The metric on labelled live requests."""
    training: float | None = None
    """The metric at training time."""
    samples: int = 0
    """Labelled requests used."""
    degraded: bool = False
    """Whether live is worse than training by more than maxDegradation."""


class DriftMonitorStatus(StatusBase):
    """Observed state of a DriftMonitor."""

    phase: Literal["Pending", "InsufficientData", "NoDrift", "Drift", "Invalid", "Error"] | None = None
    """Summary of the last check for printing."""
    last_check_time: str | None = None
    """When the last check ran (RFC 3339)."""
    sample_size: int | None = Field(None, ge=0)
    """Requests in the last check's window."""
    reference_size: int | None = Field(None, ge=0)
    """Rows behind the reference."""
    model_version: str | None = Field(None, max_length=63)
    """Model version whose reference was used."""
    drifted_features: int | None = Field(None, ge=0)
    """How many features drifted in the last check."""
    results: list[FeatureResult] = Field(default_factory=list, max_length=512)
    """Per feature and test results of the last check."""
    performance: PerformanceResult | None = None
    """Concept drift result."""
    last_retrain_request: str | None = None
    """When a retrain was last requested (RFC 3339)."""
    retrain_requests: list[str] = Field(default_factory=list, max_length=1000)
    """Times of the retrain requests of the last 24 hours (for maxPerDay)."""


class DriftMonitor(Resource):
    """Data and concept drift monitoring of a ModelDeployment, with retraining on drift."""

    info: ClassVar[KindInfo] = KindInfo(
        kind="DriftMonitor",
        plural="driftmonitors",
        short_names=("dm",),
        printer_columns=(
            PrinterColumn("Drift", '.status.conditions[?(@.type=="DriftDetected")].status'),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Deployment", ".spec.deploymentRef.name"),
            PrinterColumn("Version", ".status.modelVersion"),
            PrinterColumn("Samples", ".status.sampleSize", "integer"),
            PrinterColumn("Last Check", ".status.lastCheckTime", "date", priority=1),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
        root_validations=(NAME_LENGTH_RULE,),
    )

    spec: DriftMonitorSpec
    """Desired state."""
    status: DriftMonitorStatus = Field(default_factory=DriftMonitorStatus)
    """Observed state, written by the operator."""
