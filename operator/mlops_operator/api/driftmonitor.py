"""DriftMonitor (dm): data and concept drift of what a ModelDeployment actually receives, and the
retrain request that closes the loop."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mlops_operator.api.common import (
    DNS_LABEL,
    DURATION,
    NAME_LENGTH_RULE,
    OBJECT_NAME,
    URI,
    ColumnName,
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

    profile_uri: str | None = Field(None, max_length=2048, pattern=URI)
    """A reference data profile (profile.json written by a training run)."""
    dataset_uri: str | None = Field(None, max_length=2048, pattern=URI)
    """A reference dataset (CSV or Parquet through fsspec, or sklearn://<name>)."""
    target: ColumnName | None = None
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
    """Which recent requests are compared with the reference: the successful, non-shadow requests
    of the deployment's inference log, whichever predictor served them (stable and canary see the
    same input distribution; a shadow only mirrors it)."""

    rows: int | None = Field(1000, ge=1, le=10_000_000)
    """Most recent rows to use (a request with several rows counts each)."""
    duration: str | None = Field(None, max_length=32, pattern=DURATION)
    """Only requests younger than this (e.g. 15m, 1h, 7d)."""
    min_samples: int = Field(50, ge=1, le=10_000_000)
    """Fewest rows (and non-missing values per feature, in the window and in the reference) needed
    for a verdict; fewer is reported as InsufficientData, not drift. A test that needs more (psi:
    5 per bin, 50 with its 10 bins) says so in its result."""


class DriftTest(Model):
    """One statistical test with its effect-size threshold. A test flags drift only when its score
    exceeds the threshold AND its p-value, after spec.correction, is below spec.alpha: the threshold
    says how large a change matters, alpha bounds how often unchanged data is flagged."""

    name: TestName
    """psi (numeric and categorical; score: population stability index), ks (numeric; score: the
    Kolmogorov-Smirnov distance D in [0, 1]), wasserstein (numeric; score: Wasserstein-1 distance in
    reference standard deviations), chi2 (categorical; score: Cramer's V of the chi-squared test,
    in [0, 1]), js (categorical; score: Jensen-Shannon distance in [0, 1])."""
    threshold: float = Field(ge=0, le=100)
    """Smallest score that counts as drift (an effect size; see name for each test's score; 0 lets
    significance alone decide)."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(self.name in ['ks', 'chi2', 'js']) || self.threshold < 1.0",
                    "message": "the ks, chi2 and js scores lie in [0, 1]: a threshold of 1 or more can never be "
                    "crossed (it is an effect size; significance is spec.alpha)",
                },
            ]
        }
    }


class Performance(Model):
    """Concept drift: the live model metric from ground-truth labels, compared with training."""

    labels_uri: str = Field(min_length=1, max_length=2048, pattern=URI)
    """A CSV or Parquet file (or a directory of them) read through fsspec, with columns id (the
    request id of the inference log) and label, and optionally row (the row within a
    multi-row request; without it a label belongs to row 0)."""
    metric: Literal["accuracy", "f1", "rmse", "mae"] = "accuracy"
    """Metric computed on the labelled requests."""
    max_degradation: float = Field(0.05, ge=0, le=1_000_000)
    """How much worse than the training metric the live metric may be (absolute)."""
    min_samples: int = Field(30, ge=1, le=10_000_000)
    """Fewest labelled requests in the window needed for a verdict."""


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


class DeploymentReference(Model):
    """The ModelDeployment watched: in the same namespace."""

    name: str = Field(max_length=253, min_length=1, pattern=OBJECT_NAME)
    """Name of the ModelDeployment."""
    namespace: str | None = Field(None, max_length=63, pattern=DNS_LABEL)
    """Only the DriftMonitor's own namespace is allowed (a different one is reported as InvalidSpec,
    not silently ignored)."""


class DriftMonitorSpec(Model):
    """Desired state of a DriftMonitor."""

    deployment_ref: DeploymentReference
    """The ModelDeployment whose inference log is watched (same namespace)."""
    reference: Reference = Field(default_factory=Reference, json_schema_extra={"default": {}})
    """What live data is compared with."""
    window: Window = Field(default_factory=Window, json_schema_extra={"default": {}})
    """Which recent requests are compared."""
    interval: str = Field("5m", max_length=32, pattern=DURATION)
    """How often to check."""
    features: list[ColumnName] = Field(default_factory=list, max_length=512,
                                       json_schema_extra={"x-kubernetes-list-type": "set"})
    """Features to check; empty means all features of the reference."""
    tests: list[DriftTest] = Field(
        default_factory=lambda: [
            DriftTest(name="psi", threshold=0.2),
            DriftTest(name="ks", threshold=0.1),
            DriftTest(name="chi2", threshold=0.1),
        ],
        min_length=1,
        max_length=5,
        json_schema_extra={
            "default": [
                {"name": "psi", "threshold": 0.2},
                {"name": "ks", "threshold": 0.1},
                {"name": "chi2", "threshold": 0.1},
            ],
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    """Tests to run; each test applies to the feature types it supports. Default thresholds: psi 0.2
    ("PSI >= 0.2: significant change", https://capymoa.org/api/modules/capymoa.drift.detectors.PSI.md),
    chi2 0.1 (Cohen's "small" effect w = 0.10, Statistical Power Analysis 1988 p. 227, which equals
    Cramer's V for a 2 x k table; https://peterstatistics.com/CrashCourse/2-SingleVar/Nominal/Nominal-2c-Effect-Size.html)
    and ks 0.1 (the KS distance of a 0.25 standard deviation shift of a normal, 2*Phi(0.125)-1)."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level: with bonferroni, the chance that a check of unchanged data flags any
    feature is at most alpha (measured: benchmarks/drift_calibration_bench.py)."""
    correction: Literal["bonferroni", "fdr", "none"] = "bonferroni"
    """Multiple-testing correction of the p-values of all tests of all features of one check together:
    bonferroni (family-wise error), fdr (Benjamini-Hochberg false discovery rate) or none."""
    drift_share: float = Field(0.0, ge=0, le=1)
    """Overall drift is declared when more than this fraction of the features with a verdict drift
    (0: any feature)."""
    performance: Performance | None = None
    """Concept drift from ground-truth labels."""
    on_drift: OnDrift = Field(default_factory=OnDrift)
    """What happens when drift is detected."""


class TestResult(Model):
    """The outcome of one test on one feature."""

    __test__ = False  # not a pytest test class

    test: TestName
    """Test name."""
    verdict: Literal["Drift", "NoDrift", "InsufficientData"] = "NoDrift"
    """Drift when score > threshold and adjustedPValue < alpha; InsufficientData when the window or
    the reference had fewer values than the test needs (message says how many)."""
    score: float | None = None
    """The effect size compared with threshold (psi: PSI, ks: D, wasserstein: distance in reference
    standard deviations, chi2: Cramer's V, js: Jensen-Shannon distance)."""
    threshold: float
    """Smallest score that counts as drift."""
    p_value: float | None = None
    """p-value under "no change", accounting for both sample sizes (pValueMethod says how)."""
    adjusted_p_value: float | None = None
    """p-value after the multiple-testing correction (spec.correction); compared with alpha."""
    alpha: float | None = None
    """Significance level the adjusted p-value is compared with (spec.alpha)."""
    p_value_method: Literal["exact", "asymptotic", "monte-carlo"] | None = None
    """exact (KS lattice count), asymptotic (chi-squared or Smirnov limit) or monte-carlo (simulated
    null with a fixed seed; never below 1/(1+draws))."""
    drifted: bool
    """Whether this test calls the feature drifted."""
    message: str = Field("", max_length=256)
    """Why there is no verdict (InsufficientData), if so."""


class FeatureResult(Model):
    """The results of all tests on one feature."""

    feature: str = Field(max_length=253)
    """Feature name (as in the reference)."""
    kind: Literal["numeric", "categorical"]
    """How the feature was compared."""
    verdict: Literal["Drift", "NoDrift", "InsufficientData"]
    """Drift when any of its tests drifted; InsufficientData when no test had enough values (never
    drift)."""
    samples: int = Field(ge=0)
    """Non-missing values of the feature in the window."""
    reference_samples: int | None = Field(None, ge=0)
    """Non-missing values of the feature in the reference."""
    tests: list[TestResult] = Field(
        default_factory=list,
        max_length=5,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["test"]},
    )
    """One result per test that applies to the feature's kind."""


class PerformanceResult(Model):
    """Live model quality from ground-truth labels (concept drift)."""

    metric: str = Field(max_length=63)
    """Metric name."""
    live: float | None = None
    """The metric on the labelled requests of the window."""
    training: float | None = None
    """The metric of the model version at training time (its metrics.json)."""
    samples: int = Field(0, ge=0)
    """Labelled requests used."""
    degraded: bool = False
    """Whether live is worse than training by more than maxDegradation."""
    message: str = Field("", max_length=1024)
    """Why there is no verdict (too few labels, no training metric, unreadable labels), if so."""


class ReportStatus(Model):
    """Where the last drift report is."""

    uri: str = Field(max_length=2048)
    """The report of that check (self-contained HTML, under the artifact root beside the inference
    log: drift-reports/<namespace>/<monitor>/)."""
    latest_uri: str | None = Field(None, max_length=2048)
    """A copy that is always the newest report of this monitor."""
    time: str
    """When the check it shows ran (RFC 3339)."""
    verdict: str = Field(max_length=63)
    """The verdict it shows."""
    request: str | None = Field(None, max_length=1024)
    """The mlops.dev/report-requested value it answered, when it was written on request."""


class DriftMonitorStatus(StatusBase):
    """Observed state of a DriftMonitor."""

    condition_types: ClassVar[tuple[str, ...]] = ("Ready", "DriftDetected")
    summary_condition: ClassVar[str] = "Ready"

    phase: Literal["Pending", "InsufficientData", "NoDrift", "Drift", "Invalid", "Error"] | None = None
    """Summary of the last check: NoDrift, Drift, InsufficientData (too few requests for a verdict),
    Error (the check could not run; the Ready condition says why), Invalid (spec), Pending."""
    last_check_time: str | None = None
    """When the last check (or failed attempt) ran (RFC 3339)."""
    sample_size: int | None = Field(None, ge=0)
    """Requests (rows) in the last check's window."""
    window_start: str | None = None
    """Time of the oldest request in the last check's window (RFC 3339)."""
    window_end: str | None = None
    """Time of the newest request in the last check's window (RFC 3339)."""
    reference_uri: str | None = Field(None, max_length=2048)
    """The profile or dataset the last check compared with."""
    reference_size: int | None = Field(None, ge=0)
    """Rows behind the reference."""
    model_version: str | None = Field(None, max_length=63)
    """The deployment's stable (served) model version at the last check."""
    evaluated_features: int | None = Field(None, ge=0)
    """Features with enough samples for a verdict in the last check."""
    drifted_features: int | None = Field(None, ge=0)
    """How many features drifted in the last check."""
    results: list[FeatureResult] = Field(
        default_factory=list,
        max_length=512,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["feature"]},
    )
    """Per-feature results of the last check."""
    performance: PerformanceResult | None = None
    """Concept drift result of the last check (with spec.performance)."""
    alpha: float | None = None
    """Significance level of the last check (spec.alpha)."""
    report: ReportStatus | None = None
    """The HTML drift report last written (on a changed verdict, or on request)."""
    cause: str | None = Field(None, max_length=1024)
    """With a Drift verdict: the likely cause and its evidence (root-cause hints from what the operator
    saw on the deployment: a version change, client errors, a traffic change, restarts)."""
    last_retrain_request: str | None = None
    """When a retrain was last requested (RFC 3339)."""
    last_retrain_reason: str | None = Field(None, max_length=1024)
    """The reason written into the last retrain request."""
    retrain_requests: list[str] = Field(default_factory=list, max_length=1000)
    """Times of the retrain requests of the last 24 hours (for maxPerDay), oldest first."""


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
            PrinterColumn("Drifted", ".status.driftedFeatures", "integer"),
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
