"""ModelDeployment (md): a model version served through Seldon Core (MLServer) or the local data
plane, with canary, shadow, metric analysis, automatic rollback and an optional approval gate."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mlops_operator.api.common import (
    HTTP_URL,
    NAME_LENGTH_RULE,
    OBJECT_NAME,
    URI,
    KindInfo,
    Model,
    PrinterColumn,
    Resource,
    StatusBase,
)

# A non-negative Kubernetes resource quantity (100m, 0.5, 2Gi, 512Mi, ...): Kubernetes' own
# grammar without the sign, so "1.2.3" or "5mm" never reach the cost code.
QUANTITY = (r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
REGIONS = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1")


class ModelSource(Model):
    """Which model is served: exactly one of uri (with version) or fromTraining."""

    uri: str | None = Field(None, max_length=2048, pattern=URI)
    """URI of a model version directory (holding model-settings.json and the model file)."""
    version: str | None = Field(None, max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    """Version label of the model at uri; required with uri."""
    from_training: str | None = Field(None, min_length=1, max_length=253, pattern=OBJECT_NAME)
    """Name of a ModelTraining in the same namespace; its status.latestValidatedModel is served,
    so every newly validated version rolls out without editing this object."""
    name: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Model name at the inference endpoint (/v2/models/<name>/infer); defaults to the object's name."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.uri) != has(self.fromTraining)",
                    "message": "spec.model needs exactly one model source: uri (with version) or fromTraining",
                },
                {
                    "rule": "has(self.uri) == has(self.version)",
                    "message": "spec.model.version is required with spec.model.uri, and only with it",
                },
            ]
        }
    }


class ResourceList(Model):
    """Amounts of CPU and memory."""

    cpu: str | None = Field(None, max_length=32, pattern=QUANTITY)
    """CPU, as a Kubernetes quantity (e.g. 500m, 2); above 0 and at most 1024 cores."""
    memory: str | None = Field(None, max_length=32, pattern=QUANTITY)
    """Memory, as a Kubernetes quantity (e.g. 512Mi, 2Gi); above 0 and at most 64Ti."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.cpu) || !isQuantity(self.cpu) || (quantity(self.cpu).isGreaterThan(quantity('0')) && "
                    "quantity(self.cpu).compareTo(quantity('1024')) <= 0)",
                    "message": "cpu must be above 0 and at most 1024 cores",
                    "fieldPath": ".cpu",
                },
                {
                    "rule": "!has(self.memory) || !isQuantity(self.memory) || (quantity(self.memory).isGreaterThan(quantity('0')) && "
                    "quantity(self.memory).compareTo(quantity('64Ti')) <= 0)",
                    "message": "memory must be above 0 and at most 64Ti",
                    "fieldPath": ".memory",
                },
            ]
        }
    }


class Resources(Model):
    """Compute resources of each model server replica."""

    requests: ResourceList = Field(default_factory=ResourceList)
    """Guaranteed resources."""
    limits: ResourceList = Field(default_factory=ResourceList)
    """Upper bounds."""


class Autoscaling(Model):
    """Horizontal autoscaling of the model server (autoscaling/v2 HPA on the seldon backend)."""

    min_replicas: int = Field(1, ge=1, le=100)
    """Fewest replicas."""
    max_replicas: int = Field(ge=1, le=100)
    """Most replicas."""
    target_cpu_utilization_percentage: int = Field(70, ge=1, le=100)
    """Average CPU utilisation the autoscaler aims for."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}
            ]
        }
    }


class RolloutStep(Model):
    """One canary step: send this share of traffic to the candidate, wait, then analyse."""

    weight: int = Field(ge=1, le=100)
    """Percent of traffic sent to the candidate (1-100)."""
    pause_seconds: int = Field(60, ge=0, le=86400)
    """How long to hold this weight before the analysis decides."""


class Shadow(Model):
    """The shadow phase of strategy shadow: the candidate gets a mirrored copy of live traffic whose
    answers are discarded, before any real traffic moves."""

    mirror_percent: int = Field(100, ge=1, le=100)
    """Percent of requests mirrored to the candidate."""
    duration_seconds: int = Field(60, ge=0, le=86400)
    """How long to mirror before the analysis decides."""


class ModelMetricCheck(Model):
    """A bound on one of the candidate's training metrics (from the model version's metrics.json)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    """Metric name, e.g. accuracy."""
    min: float | None = None
    """The metric must be at least this."""
    max: float | None = None
    """The metric must be at most this."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "has(self.min) || has(self.max)", "message": "a metric bound needs min or max"},
                {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                 "message": "min must not exceed max"},
                {
                    "rule": "!(self.name in ['accuracy', 'f1', 'rocAuc']) || "
                    "((!has(self.min) || (self.min >= 0.0 && self.min <= 1.0)) && "
                    "(!has(self.max) || (self.max >= 0.0 && self.max <= 1.0)))",
                    "message": "accuracy, f1 and rocAuc lie in [0, 1]: a bound outside can never be met or never fail",
                },
                {
                    "rule": "!(self.name in ['rmse', 'mae']) || ((!has(self.min) || self.min >= 0.0) && "
                    "(!has(self.max) || self.max > 0.0))",
                    "message": "rmse and mae are at least 0",
                },
            ]
        }
    }


class Analysis(Model):
    """Thresholds the candidate must meet at every step."""

    max_error_rate: float = Field(0.05, ge=0, le=1)
    """Largest allowed fraction of failed requests at the candidate."""
    max_latency_p99_ms: float | None = Field(None, gt=0, le=600000)
    """Largest allowed 99th percentile latency at the candidate, in milliseconds."""
    min_requests: int = Field(20, ge=0, le=1_000_000)
    """Fewest candidate requests needed before deciding; fewer extend the step."""
    max_extensions: int = Field(10, ge=0, le=1000)
    """How many times a step may be extended for lack of requests before the rollout is aborted."""
    model_metric: ModelMetricCheck | None = None
    """Optionally, a bound on one of the candidate's evaluation metrics."""
    prometheus_url: str | None = Field(None, max_length=2048, pattern=HTTP_URL)
    """Read request metrics from this Prometheus (HTTP query API) instead of the router."""


class PostPromotion(Model):
    """The guard after a promotion: an anomaly of the new stable version within the bake period rolls
    back to the previous stable version (approval automatic) or asks for approval of the rollback
    (approval manual)."""

    bake_seconds: int = Field(600, ge=0, le=7 * 86400)
    """How long after a promotion the guard watches the new version (0: no guard)."""
    metrics: list[Literal["errorRate", "latencyP50Ms", "latencyP99Ms"]] = Field(
        default_factory=lambda: ["errorRate", "latencyP99Ms"], max_length=3,
        json_schema_extra={"default": ["errorRate", "latencyP99Ms"]})
    """Which anomalies trigger it: server error rate (5xx) and latency percentiles."""


class Rollout(Model):
    """How a new model version replaces the serving one."""

    strategy: Literal["direct", "canary", "shadow"] = "canary"
    """direct replaces at once; canary moves traffic in steps; shadow mirrors first, then runs the canary steps."""
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [RolloutStep(weight=10, pause_seconds=30), RolloutStep(weight=50, pause_seconds=30)],
        max_length=10,
        json_schema_extra={"default": [{"weight": 10, "pauseSeconds": 30}, {"weight": 50, "pauseSeconds": 30}]},
    )
    """Canary steps with strictly ascending weights; promotion follows the last one."""
    shadow: Shadow = Field(default_factory=Shadow, json_schema_extra={"default": {}})
    """The shadow phase (strategy shadow)."""
    analysis: Analysis = Field(default_factory=Analysis, json_schema_extra={"default": {}})
    """Thresholds checked after each step."""
    approval: Literal["automatic", "manual"] = "automatic"
    """automatic promotes when the analysis passes (continuous deployment); manual waits until the
    annotation mlops.dev/approve names the candidate version (continuous delivery)."""
    post_promotion: PostPromotion = Field(default_factory=PostPromotion, json_schema_extra={"default": {}})
    """The guard after a promotion (self-healing)."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.steps) || (self.steps.map(s, s.weight).isSorted() && "
                    "self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight)))",
                    "message": "rollout step weights must be strictly ascending",
                    "fieldPath": ".steps",
                },
                {
                    "rule": "!has(self.strategy) || self.strategy == 'direct' || (has(self.steps) && size(self.steps) > 0)",
                    "message": "canary and shadow rollouts need at least one step",
                    "fieldPath": ".steps",
                },
            ]
        }
    }


class AnomalyDetection(Model):
    """Anomaly detection on the serving telemetry (router statistics or Prometheus): a rolling
    median/MAD baseline per metric and version, with a daily term once a day of history exists."""

    enabled: bool = True
    """Whether to watch at all."""
    interval_seconds: int = Field(30, ge=1, le=3600)
    """How often a point is read (each point covers the time since the previous one)."""
    min_duration_seconds: int = Field(60, ge=0, le=86400)
    """How long a metric must stay outside its band before an anomaly opens (and inside before it closes)."""
    sensitivity: float = Field(4.0, gt=0, le=20)
    """Half-width of the band in robust standard deviations."""
    warmup_points: int = Field(20, ge=3, le=1000)
    """Points learned before anything is judged."""


class RegionLatency(Model):
    """A candidate region and the latency from the deployment's users to it."""

    region: str = Field(max_length=32, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
    """AWS region code, e.g. ap-south-1."""
    latency_ms: float = Field(gt=0, le=60000)
    """Round-trip latency from the users, in milliseconds (declared or measured)."""


class Placement(Model):
    """Where to run: candidate regions ranked by cost under a latency budget (advice in status.placement)."""

    regions: list[RegionLatency] = Field(min_length=1, max_length=30)
    """Candidate regions with their latency to the users."""
    latency_budget_ms: float | None = Field(None, gt=0, le=60000)
    """Most latency the users may see; unset: the cheapest region wins."""


class ModelDeploymentSpec(Model):
    """Desired state of a ModelDeployment."""

    model: ModelSource
    """The model to serve."""
    runtime: Literal["sklearn", "xgboost", "lightgbm", "mlflow"] = "sklearn"
    """MLServer runtime that loads the model."""
    backend: Literal["local", "seldon"] = "local"
    """seldon creates a SeldonDeployment (Seldon Core v1, protocol v2); local runs MLServer processes
    behind a router on this machine (no cluster services needed)."""
    replicas: int | None = Field(None, ge=0, le=100)
    """Model server replicas (default 1); not with autoscaling."""
    autoscaling: Autoscaling | None = None
    """Horizontal autoscaling instead of a fixed replica count."""
    resources: Resources = Field(default_factory=Resources)
    """Compute resources per replica."""
    rollout: Rollout = Field(default_factory=Rollout, json_schema_extra={"default": {}})
    """How new model versions roll out."""
    anomaly_detection: AnomalyDetection = Field(default_factory=AnomalyDetection, json_schema_extra={"default": {}})
    """Anomaly detection on the serving telemetry."""
    placement: Placement | None = None
    """Candidate regions for cost and latency-aware placement advice (status.placement); nothing moves."""
    region: Literal["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1"] | None = None
    """AWS region for the cost estimate in status.estimatedMonthlyCost."""
    instance_type: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*$")
    """Instance type for the cost estimate; default: the smallest in the price table that fits the requests."""
    service_account_name: str | None = Field(None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Service account the model servers run as (backend seldon), e.g. one bound to an IAM role (EKS
    IRSA) that may read the s3:// artifact root."""
    storage_secret_name: str | None = Field(None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Secret holding the model download credentials as RCLONE_CONFIG_* variables (backend seldon;
    Seldon's envSecretRefName). Not needed with an IAM-bound service account."""
    progress_deadline_seconds: int = Field(300, ge=30, le=3600)
    """Backend seldon: seconds a predictor's Deployment may take to become available before Seldon
    reports it Failed (its progressDeadlineSeconds; Kubernetes' default of 600 s is too long to wait
    for a model that cannot load)."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.replicas) && has(self.autoscaling))",
                    "message": "set either spec.replicas or spec.autoscaling, not both",
                },
                {
                    "rule": "!has(self.instanceType) || has(self.region)",
                    "message": "spec.instanceType needs spec.region",
                    "fieldPath": ".instanceType",
                },
            ]
        }
    }


class TrafficTarget(Model):
    """Where a share of the traffic goes."""

    predictor: Literal["stable", "canary", "shadow"]
    """Predictor name."""
    version: str = Field(max_length=63)
    """Model version it serves."""
    weight: int = Field(ge=0, le=100)
    """Percent of live traffic (for the shadow: percent mirrored)."""
    shadow: bool = False
    """Whether the predictor only receives mirrored traffic."""


class AnalysisResult(Model):
    """The outcome of one analysis of the candidate."""

    time: str
    """When the analysis ran (RFC 3339)."""
    version: str | None = Field(None, max_length=63)
    """Candidate version analysed."""
    predictor: str | None = Field(None, max_length=63)
    """Predictor whose requests were analysed (shadow or canary)."""
    source: Literal["router", "prometheus", "none"] | None = None
    """Where the request metrics came from: the local router, Prometheus, or none (model metric only)."""
    requests: int = Field(ge=0)
    """Candidate requests in the window."""
    error_rate: float | None = None
    """Fraction of failed candidate requests."""
    latency_p99_ms: float | None = None
    """99th percentile latency of the candidate, in milliseconds."""
    passed: bool
    """Whether every threshold held."""
    message: str = Field("", max_length=4096)
    """Which threshold failed, or why no decision was made."""


class RolloutStatus(Model):
    """Progress of the rollout in flight."""

    phase: Literal["Shadow", "Canary", "AwaitingApproval", "Promoting"]
    """Where the rollout is: Shadow (mirrored traffic only), Canary (a share of live traffic),
    AwaitingApproval (analysis passed; waiting for mlops.dev/approve), Promoting (waiting for the
    candidate's model server before it takes all traffic)."""
    step: int = Field(0, ge=0)
    """Index of the current canary step."""
    step_started: str | None = None
    """When the current step (or the shadow phase) began taking traffic (RFC 3339); unset while the
    candidate's model server is starting."""
    started: str
    """When the rollout began (RFC 3339)."""
    extensions: int = Field(0, ge=0)
    """How often the current step was extended for lack of requests."""


class RolloutRecord(Model):
    """How the latest rollout ended."""

    version: str = Field(max_length=63)
    """Candidate version of that rollout."""
    result: Literal["promoted", "aborted", "rolledback", "superseded"]
    """promoted: it became stable; aborted: the analysis or its model server failed; rolledback: by
    hand (mlops.dev/rollback); superseded: a newer version (or the stable one) was asked for instead."""
    started: str
    """When the rollout began (RFC 3339)."""
    finished: str
    """When it ended (RFC 3339)."""
    message: str = Field("", max_length=4096)
    """Why it ended so."""
    cause: str | None = Field(None, max_length=1024)
    """For an aborted or rolled-back rollout: the likely cause and its evidence (root-cause hints)."""


class Cost(Model):
    """An estimate of what the requested serving capacity costs per month."""

    amount: float = Field(ge=0)
    """Estimated cost per month."""
    currency: str = "USD"
    """Currency of the amount."""
    instance_type: str
    """Instance type the estimate assumes."""
    basis: str = Field(max_length=1024)
    """How the estimate was made (replicas, price per hour, price source and date)."""


class AnomalyRecord(Model):
    """An open or recently closed anomaly of one serving metric."""

    metric: str = Field(max_length=63)
    """errorRate, latencyP50Ms, latencyP99Ms or requestRate."""
    version: str | None = Field(None, max_length=63)
    """The served version (unset: the whole deployment)."""
    observed: float
    """The latest value outside the band."""
    expected: float
    """What the baseline expected."""
    low: float
    """Lower edge of the expected band."""
    high: float
    """Upper edge of the expected band."""
    unit: str = Field("", max_length=16)
    """Unit of the values."""
    since: str
    """When the metric left its band (RFC 3339)."""
    closed: str | None = None
    """When the anomaly closed (RFC 3339); unset while open."""
    close_reason: str | None = Field(None, max_length=256)
    """Why it closed."""
    message: str = Field("", max_length=1024)
    """The anomaly in words."""
    cause: str | None = Field(None, max_length=1024)
    """The likely cause and its evidence, when the operator found one."""


class ServingCost(Model):
    """What serving costs: the monthly estimate and per 1,000 predictions at the observed rate."""

    monthly: float = Field(ge=0)
    """Estimated cost per month."""
    currency: str = "USD"
    """Currency of the amounts."""
    instance_type: str
    """Instance type the estimate assumes."""
    requests_per_second: float | None = Field(None, ge=0)
    """Observed request rate (latest telemetry point)."""
    per_thousand_predictions: float | None = Field(None, ge=0)
    """Cost of 1,000 predictions at the observed rate."""
    basis: str = Field(max_length=1024)
    """How the estimate was made, with the price's source and date."""


class RankedRegion(Model):
    """One candidate region in the placement advice."""

    region: str = Field(max_length=32)
    """AWS region code."""
    latency_ms: float
    """Latency from the users."""
    monthly_cost: float | None = None
    """What the deployment would cost there per month (unset: no sourced price)."""
    within_budget: bool = False
    """Whether it meets spec.placement.latencyBudgetMs."""


class PlacementAdvice(Model):
    """Regions ranked by monthly cost under the latency budget."""

    choice: str | None = Field(None, max_length=32)
    """The cheapest priced region within the budget (unset: none)."""
    message: str = Field("", max_length=2048)
    """The advice, and what the latency costs."""
    ranked: list[RankedRegion] = Field(default_factory=list, max_length=30)
    """Priced regions in order of preference, then unpriced ones."""


class RightSizing(Model):
    """Suggested requests from the observed use of the stable version's model servers (never applied)."""

    cpu: str | None = Field(None, max_length=32)
    """Suggested CPU request (95th percentile of use plus headroom)."""
    memory: str | None = Field(None, max_length=32)
    """Suggested memory request (the most used plus headroom)."""
    verdict: Literal["over", "under", "fits", "unset"]
    """How the current requests compare."""
    message: str = Field("", max_length=2048)
    """What was observed and what is suggested."""
    samples: int = Field(0, ge=0)
    """Observations behind the suggestion."""


class ModelDeploymentStatus(StatusBase):
    """Observed state of a ModelDeployment."""

    condition_types: ClassVar[tuple[str, ...]] = ("Ready", "Progressing", "AwaitingApproval", "Degraded", "Anomalous")
    summary_condition: ClassVar[str] = "Ready"

    phase: Literal["Pending", "Progressing", "AwaitingApproval", "Ready", "Degraded", "Invalid"] | None = None
    """Summary for printing; the conditions carry the details."""
    stable_version: str | None = Field(None, max_length=63)
    """The model version that serves live traffic."""
    stable_uri: str | None = Field(None, max_length=2048)
    """Where the stable model version is stored."""
    candidate_version: str | None = Field(None, max_length=63)
    """The model version being rolled out."""
    candidate_uri: str | None = Field(None, max_length=2048)
    """Where the candidate model version is stored."""
    traffic: list[TrafficTarget] = Field(default_factory=list, max_length=3)
    """Current traffic split."""
    rollout: RolloutStatus | None = None
    """Progress of the rollout in flight."""
    last_analysis: AnalysisResult | None = None
    """The latest analysis of a candidate."""
    previous_stable_version: str | None = Field(None, max_length=63)
    """The version that was stable before the current one (what mlops.dev/rollback returns to)."""
    previous_stable_uri: str | None = Field(None, max_length=2048)
    """Where the previous stable version is stored."""
    last_rollout: RolloutRecord | None = None
    """How the latest finished rollout ended."""
    rejected_versions: list[str] = Field(default_factory=list, max_length=20)
    """Versions rolled back by the analysis or by hand; they are not rolled out again (newest last)."""
    endpoint: str | None = Field(None, max_length=2048)
    """Model endpoint of the Open Inference Protocol (V2): POST <endpoint>/infer, GET <endpoint>/ready."""
    ready_replicas: int | None = Field(None, ge=0)
    """Model server replicas that are ready."""
    estimated_monthly_cost: Cost | None = None
    """Cost estimate for spec.region."""
    cost: ServingCost | None = None
    """Cost estimate for spec.region with the cost per 1,000 predictions from observed traffic."""
    anomalies: list[AnomalyRecord] = Field(default_factory=list, max_length=10)
    """Open anomalies (oldest first), then the latest closed ones."""
    placement: PlacementAdvice | None = None
    """Advice from spec.placement."""
    right_sizing: RightSizing | None = None
    """Suggested requests from observed use (backend local); spec.resources is never changed."""
    seldon_deployment: str | None = Field(None, max_length=253)
    """Name of the owned SeldonDeployment (backend seldon)."""


class ModelDeployment(Resource):
    """A model version served with canary, shadow, analysis, rollback and approval."""

    info: ClassVar[KindInfo] = KindInfo(
        kind="ModelDeployment",
        plural="modeldeployments",
        short_names=("md",),
        printer_columns=(
            PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Stable", ".status.stableVersion", description="Model version serving live traffic"),
            PrinterColumn("Candidate", ".status.candidateVersion", description="Model version rolling out"),
            PrinterColumn("Canary%", '.status.traffic[?(@.predictor=="canary")].weight', "integer",
                          description="Percent of live traffic at the candidate"),
            PrinterColumn("Endpoint", ".status.endpoint", priority=1),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
        root_validations=(NAME_LENGTH_RULE,),
    )

    spec: ModelDeploymentSpec
    """Desired state."""
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)
    """Observed state, written by the operator."""
