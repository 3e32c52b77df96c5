"""The operator's Prometheus metrics, in one place.

Controller metrics mirror controller-runtime's names under the ``mlops_`` prefix; domain metrics
carry only bounded labels (kind, namespace/name of the owning resource, feature, test).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_TOTAL = Counter(
    "mlops_reconcile_total", "Reconciliations per kind and result (success, error, requeue).", ["kind", "result"]
)
RECONCILE_ERRORS = Counter(
    "mlops_reconcile_errors_total", "Reconciliations that ended in an error of the operator (never a user's spec).",
    ["kind"])
INVALID_SPECS = Counter(
    "mlops_invalid_spec_total",
    "Reconciliations that found the spec invalid (InvalidSpec condition): the user's to fix, not an operator fault.",
    ["kind"])
RECONCILE_TIME = Histogram(
    "mlops_reconcile_time_seconds",
    "Time spent in one reconciliation.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

LEADER = Gauge("mlops_leader", "1 on the operator replica that leads (holds the Lease, or runs alone), 0 on a standby.")

TRAINING_RUNS = Counter("mlops_training_runs_total", "Finished training runs by result.", ["result"])
TRAINING_DURATION = Histogram(
    "mlops_training_duration_seconds",
    "Wall time of finished training runs.",
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, 7200),
)
VALIDATED_METRIC = Gauge(
    "mlops_model_validated_metric",
    "Evaluation metric of the newest validated model version.",
    ["namespace", "model", "metric"],
)
MODEL_VERSION = Gauge(
    "mlops_model_validated_version", "Newest validated model version.", ["namespace", "model"]
)

DEPLOYMENT_READY = Gauge("mlops_deployment_ready", "1 when the ModelDeployment serves.", ["namespace", "name"])
TRAFFIC_WEIGHT = Gauge(
    "mlops_deployment_traffic_weight",
    "Percent of live traffic per predictor (mirrored percent for a shadow).",
    ["namespace", "name", "predictor"],
)
ANOMALY_ACTIVE = Gauge(
    "mlops_anomaly_active",
    "1 while an anomaly of this serving metric is open for the ModelDeployment (any served version).",
    ["namespace", "name", "metric"],
)
ANOMALY_LEARNING = Gauge(
    "mlops_anomaly_learning",
    "1 while the detector still learns this serving metric's baseline for the stable version (nothing is judged "
    "yet: a fault now is learned as normal), 0 once it judges.",
    ["namespace", "name", "metric"],
)
ROLLOUTS = Counter("mlops_rollouts_total", "Finished rollouts by result (promoted, aborted, rolledback).", ["result"])

DRIFT_SCORE = Gauge(
    "mlops_drift_score", "Latest drift score per feature and test.", ["namespace", "name", "feature", "test"]
)
DRIFT_DETECTED = Gauge("mlops_drift_detected", "1 when the DriftMonitor's last check found drift.", ["namespace", "name"])
DRIFT_CHECKS = Counter("mlops_drift_checks_total", "Drift checks by result (drift, nodrift, insufficient, error).", ["result"])
RETRAIN_REQUESTS = Counter("mlops_retrain_requests_total", "Retrain requests made by DriftMonitors.", ["namespace", "name"])


@contextmanager
def reconcile_timer(kind: str) -> Iterator[dict[str, str]]:
    """Count and time one reconciliation. The caller may set ``outcome["result"] = "requeue"``;
    an exception counts as an error (and is re-raised), kopf's TemporaryError as a requeue;
    ``outcome["result"] = "invalid"`` counts an invalid spec apart, in ``mlops_invalid_spec_total``."""
    # The error counters exist at 0 from the first reconciliation of a kind: increase() (the alert
    # MlopsReconcileErrors) sees only changes of a series, so one born at 1 would hide the first error.
    RECONCILE_ERRORS.labels(kind)
    INVALID_SPECS.labels(kind)
    start = time.perf_counter()
    outcome = {"result": "success"}
    try:
        yield outcome
    except Exception as error:
        result = "requeue" if type(error).__name__ == "TemporaryError" else "error"
        RECONCILE_TOTAL.labels(kind, result).inc()
        if result == "error":
            RECONCILE_ERRORS.labels(kind).inc()
        raise
    else:
        RECONCILE_TOTAL.labels(kind, outcome["result"]).inc()
        if outcome["result"] == "invalid":
            INVALID_SPECS.labels(kind).inc()
        elif outcome["result"] == "error":  # handled by the caller (a condition and a backoff)
            RECONCILE_ERRORS.labels(kind).inc()
    finally:
        RECONCILE_TIME.labels(kind).observe(time.perf_counter() - start)


_serving = False


def serve(host: str, port: int) -> None:
    """Start the /metrics endpoint once per process (a standby starts it before it leads); 0 disables it."""
    global _serving
    if port and not _serving:
        start_http_server(port, addr=host)
        _serving = True
