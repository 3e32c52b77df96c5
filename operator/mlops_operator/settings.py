"""Operator settings, read from the environment (prefix ``MLOPS_``) by pydantic-settings."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "mlops-operator"


# The operator's published image (the chart's image.repository); its tag is the operator's version.
OPERATOR_IMAGE_REPOSITORY = "ghcr.io/mlops-operator/mlops-operator"


class Settings(BaseSettings):
    """Everything the operator process is configured with. Each field is ``MLOPS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", use_attribute_docstrings=True, extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to watch, comma separated; empty watches the whole cluster."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics server binds (0.0.0.0 in a pod so Prometheus can scrape it)."""
    metrics_port: int = Field(8080, ge=0, le=65535)
    """Port of the Prometheus metrics endpoint (/metrics); 0 disables it."""
    health_port: int = Field(8081, ge=0, le=65535)
    """Port of the liveness endpoint (/healthz); 0 disables it."""
    data_dir: Path = Field(default_factory=_default_data_dir)
    """Working directory of the local backends: run directories, model server and router state."""
    artifact_root: str | None = None
    """fsspec URI under which model versions and inference logs are stored; default <dataDir>/artifacts.
    The one setting for both: the local router, the Seldon request-logger sink and the DriftMonitor
    all use ``<artifactRoot>/inference/<namespace>/<deployment>/`` (``s3://bucket/prefix`` on a
    cluster, with credentials from the environment: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or
    AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), and AWS_ENDPOINT_URL for other S3 servers)."""
    log_format: Literal["text", "json"] = "text"
    """Log line format."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level that is logged."""
    kfp_host: str | None = None
    """Default Kubeflow Pipelines API endpoint for backend kfp."""
    kfp_namespace: str | None = None
    """Default Kubeflow profile namespace for backend kfp."""
    kfp_pipeline_root: str | None = Field(None, pattern=r"^\S+$")
    """Where KFP runs of backend kfp keep their artifacts (`s3://bucket/prefix`); default the KFP installation's own."""
    kfp_service_account: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    """Kubernetes service account the pods of KFP runs use; default the KFP profile's."""
    training_service_account: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    """Kubernetes service account (in each ModelTraining's namespace) the Pods of backend job's Jobs use, e.g. one with
    an IAM role (IRSA) for the artifact store; default the namespace's `default`."""
    training_image: str | None = Field(None, pattern=r"^[^\s@]+(@sha256:[0-9a-f]{64})?$")
    """Image the built-in pipeline's steps run in on KFP, and backend job's Jobs; default the operator's own image and version,
    `ghcr.io/mlops-operator/mlops-operator:<version>` (the chart sets the image it deploys)."""
    local_training_in_pod: bool = False
    """Allow backend local training when the operator runs in a Pod (KUBERNETES_SERVICE_HOST set): the runs
    then share the operator Pod's CPU and memory and are lost when it restarts. Off: such a ModelTraining is
    InvalidSpec (use backend job or kfp). Outside a Pod local training is always allowed."""
    training_zygote: bool = True
    """Fork backend local's training runners from one warm process (the zygote: started on the first local run,
    it has imported kfp, pandas, pyarrow and scikit-learn once: 226 MiB resident, as benchmarks/training_bench.py reports; it exits with the operator)
    instead of starting each as a fresh interpreter (seconds of imports per run). Runs outlive the operator either
    way; a zygote that cannot start or fails falls back to fresh interpreters."""
    prometheus_url: str | None = None
    """Default Prometheus for rollout analysis; without it the analysis reads the router's statistics."""
    endpoint_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Service endpoints a spec may name besides the operator's own MLOPS_KFP_HOST and MLOPS_PROMETHEUS_URL
    (`spec.kfp.host`, `spec.rollout.analysis.prometheusUrl`): http(s) URL prefixes, comma separated (e.g.
    http://prometheus.team-a.svc:9090,https://kfp.example.com/). The operator calls these from its own network
    position (and sends a KFP token there), so a tenant may name no other endpoint. Empty: only the operator's own."""
    seldon_routing: Literal["none", "istio", "ambassador"] = "none"
    """How the cluster routes a Seldon canary's and shadow's traffic (backend seldon): `istio` or `ambassador`
    (Seldon writes the mesh's weights and mirror), or `none` (no mesh: the operator routes through a Service
    named like the ModelDeployment that selects every predictor's Pods, so kube-proxy splits requests in
    proportion to ready replicas, and sets the canary's and stable's replica counts from the step's weight;
    shadow is refused)."""
    seldon_split_max_replicas: int = Field(10, ge=2, le=100)
    """With `MLOPS_SELDON_ROUTING=none`: most replicas (stable + canary) a canary step may use to approximate its
    weight (10 gives every multiple of 10%; 2 gives only 50%); the status reports the share the replicas give."""
    allow_pause_only_analysis: bool = False
    """Let an automatic canary or shadow on backend seldon without a metrics source (no Prometheus) pass its
    steps on their pauses alone. Off: such a rollout is refused before any traffic (RolloutAborted naming
    what to set); with approval manual a person decides either way."""
    poll_interval_seconds: float = Field(5.0, gt=0, le=3600)
    """How often what is in progress is observed: running trainings, rollouts, local model servers, a KFP
    schedule's fires. Idle objects are not polled: a change, a watch event or their next schedule time wakes them."""
    max_concurrent_reconciles: int = Field(16, ge=1, le=1024)
    """How many objects of one kind are reconciled at the same time (controller-runtime's
    MaxConcurrentReconciles); the others wait their turn, first come first served. Bounds the memory of a burst
    (a thousand objects applied at once) and lets the first applied finish first."""
    io_threads: int = Field(32, ge=4, le=256)
    """Threads for the operator's blocking calls (the Kubernetes API through its Python client, object stores,
    files), and the size of the Kubernetes client's connection pool: while many objects are reconciled at once
    their API calls wait on the API server in parallel, not in Python's default handful of threads."""
    backend_retry_seconds: float = Field(30.0, gt=0, le=3600)
    """How soon an object is reconciled again after its backend could not be reached (Seldon Core's CRD not
    installed, the KFP API down): each further failure doubles the wait, up to four times this."""
    leader_election: bool = False
    """Run as one of several replicas: only the holder of a Lease reconciles, the others wait on standby
    and take over when it stops (at once after a clean stop, after the lease duration after a crash)."""
    leader_election_namespace: str | None = None
    """Namespace of the Lease; default the pod's own namespace (from its service account), else `default`."""
    pod_name: str | None = None
    """Name of the operator's own Pod (the chart sets it from the downward API); the leader labels it
    mlops.dev/leader=true, which the Seldon logger sink's Service selects."""
    leader_election_lease_name: str = Field("mlops-operator", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    """Name of the Lease the replicas share."""
    leader_election_lease_seconds: float = Field(15.0, gt=0, le=600)
    """How long a lease lasts without renewal before a standby takes over (client-go's default, 15)."""
    leader_election_renew_deadline_seconds: float = Field(10.0, gt=0, le=600)
    """How long the leader keeps trying to renew before it stops leading and exits (client-go's default, 10);
    shorter than the lease, so the old leader has stopped before a standby can take over."""
    leader_election_retry_seconds: float = Field(2.0, gt=0, le=60)
    """How often the leader renews and a standby looks at the Lease (client-go's default, 2)."""
    serving_host: str = "127.0.0.1"
    """Address the local data plane (routers, model servers) binds."""
    uri_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["file", "s3", "gs", "sklearn", "https", "http"])
    """URI policy: schemes the URIs of a spec (datasets, models, profiles, labels, pipelines) may use, comma
    separated (the operator reads them with its own privileges)."""
    uri_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """URI policy: if set, every URI of a spec (but sklearn:// built-ins) must start with one of these
    prefixes, comma separated (e.g. s3://team-data/,https://data.example.com/); `{namespace}` in a prefix is the
    object's namespace, so each team reads only its own part (s3://team-data/{namespace}/). URIs are compared with
    their `..` segments resolved."""
    uri_file_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """URI policy: directories file:// URIs and plain paths may be under, comma separated; empty: the data
    dir and (when local) the artifact root. Symbolic links are resolved before the check. Whatever this allows, of
    the data dir only the namespace's labels/<namespace>/ and datasets/<namespace>/ may be read (the rest is the
    operator's state), and of the artifact root only the namespace's own models/, inference/ and drift-reports/
    parts (and anything outside those three)."""
    uri_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """URI policy: CIDRs http(s) URIs of a spec may reach although loopback, link-local
    (169.254.0.0/16, fe80::/10: cloud metadata) or private/cluster-internal; comma separated. Empty: none."""

    @field_validator("namespaces", "uri_schemes", "uri_prefixes", "uri_file_roots", "uri_allowed_networks",
                     "endpoint_prefixes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _election_timing(self) -> "Settings":
        if self.leader_election and not (self.leader_election_retry_seconds < self.leader_election_renew_deadline_seconds
                                         < self.leader_election_lease_seconds):
            raise ValueError("leader election needs retry < renew deadline < lease seconds (MLOPS_LEADER_ELECTION_*)")
        return self

    @field_validator("endpoint_prefixes")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for prefix in value:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{prefix!r} is not an http:// or https:// URL prefix with a host")
        return value

    @field_validator("uri_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError: pydantic reports the bad CIDR
        return value

    @property
    def artifact_root_uri(self) -> str:
        """The artifact root as a URI."""
        return self.artifact_root or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def runs_in_pod(self) -> bool:
        """Whether the operator runs in a Kubernetes Pod (the kubelet sets KUBERNETES_SERVICE_HOST in every container)."""
        return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    @property
    def training_image_ref(self) -> str:
        """The image the built-in pipeline's steps run in on KFP: the setting, else the operator's own."""
        from mlops_operator import __version__

        return self.training_image or f"{OPERATOR_IMAGE_REPOSITORY}:{__version__}"

    @property
    def inference_log_root_uri(self) -> str:
        """Where inference logs are written and read: the artifact root (one setting for both)."""
        return self.artifact_root_uri


def settings_table(*models: type[BaseSettings]) -> str:
    """The README's settings table (Markdown), generated from ``models`` (default: :class:`Settings`) so
    every setting is listed, each under its model's environment prefix."""
    home = str(Path.home())
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for model in models or (Settings,):
        prefix = model.model_config.get("env_prefix", "")
        for name, field in model.model_fields.items():
            default = field.default_factory() if field.default_factory is not None else field.default
            if default is None or default == []:
                shown = ""
            else:
                text = ",".join(default) if isinstance(default, list) else str(default)  # lists are comma separated
                shown = "`" + text.replace(home, "~", 1) + "`"
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            rows.append(f"| `{prefix}{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"
