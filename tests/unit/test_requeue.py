"""When an object is observed again after a reconciliation (reconcile.*.requeue_after): only what is in
progress is polled; an idle object waits for a change or a watch event and costs no request."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlops_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.reconcile import modeldeployment, modeltraining

POLL = 5.0
NOW = datetime(2026, 11, 29, 10, 0, 30, tzinfo=UTC)


def deployment(**spec) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"uri": "s3://m/iris/1", "version": "1"}, "backend": "seldon",
                                               **spec})


def md_status(**fields) -> ModelDeploymentStatus:
    return ModelDeploymentStatus.model_validate(fields)


def md_requeue(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, *, reports_changes: bool = True,
               telemetry: bool = False) -> float | None:
    return modeldeployment.requeue_after(spec, status, reports_changes=reports_changes, telemetry=telemetry,
                                         poll_interval=POLL)


def degraded(reason: str) -> dict:
    return {"type": "Degraded", "status": "True", "reason": reason, "message": "m",
            "lastTransitionTime": "2026-11-29T10:00:00Z"}


@pytest.mark.parametrize("status", [
    {"phase": "Ready", "stableVersion": "1"},
    {"phase": "Pending", "stableVersion": "1"},  # waiting for Seldon: its status change wakes it
    {"phase": "Pending"},  # waiting for its ModelTraining's first model: the training's change wakes it
    {"phase": "Degraded", "stableVersion": "1", "conditions": [degraded("RolloutAborted")]},
])
def test_an_idle_deployment_on_a_backend_that_reports_its_changes_is_not_polled(status):
    assert md_requeue(deployment(), md_status(**status)) is None


def test_a_rollout_in_flight_or_an_unreadable_model_is_polled():
    spec = deployment()
    assert md_requeue(spec, md_status(phase="Progressing", stableVersion="1", candidateVersion="2")) == POLL
    rollout = {"phase": "Canary", "step": 0, "stepStarted": "2026-11-29T10:00:00Z", "started": "2026-11-29T10:00:00Z"}
    assert md_requeue(spec, md_status(phase="Progressing", stableVersion="1", rollout=rollout)) == POLL
    unavailable = md_status(phase="Degraded", conditions=[degraded(modeldeployment.MODEL_UNAVAILABLE)])
    assert md_requeue(spec, unavailable) == POLL


def test_processes_are_polled_and_telemetry_is_read_at_its_own_interval():
    idle = md_status(phase="Ready", stableVersion="1")
    assert md_requeue(deployment(backend="local"), idle, reports_changes=False) == POLL
    assert md_requeue(deployment(anomalyDetection={"intervalSeconds": 45}), idle, telemetry=True) == 45
    assert md_requeue(deployment(anomalyDetection={"enabled": False}), idle, telemetry=True) is None


def training(**spec) -> ModelTrainingSpec:
    return ModelTrainingSpec.model_validate({"model": "iris", "dataset": {"uri": "s3://d/iris.csv", "target": "y"},
                                             **spec})


def mt_requeue(spec: ModelTrainingSpec, status: dict, *, backend_schedules: bool = False) -> float | None:
    return modeltraining.requeue_after(spec, status, NOW, backend_schedules=backend_schedules, poll_interval=POLL)


def test_an_active_run_is_polled_and_a_finished_training_is_not():
    for state in modeltraining.ACTIVE_STATES:
        assert mt_requeue(training(), {"latestRun": {"name": "r", "state": state}}) == POLL
    assert mt_requeue(training(), {"latestRun": {"name": "r", "state": "Succeeded"}}) is None
    assert mt_requeue(training(), {}) is None


def test_a_schedule_wakes_the_training_at_its_next_time_unless_the_backend_fires_it():
    finished = {"latestRun": {"name": "r", "state": "Failed"}}
    assert mt_requeue(training(schedule="*/5 * * * *"), finished) == 270.0  # 10:05:00 from 10:00:30
    assert mt_requeue(training(schedule="*/5 * * * *", suspend=True), finished) is None
    # A KFP recurring run's fires are found by reading its runs.
    assert mt_requeue(training(schedule="*/5 * * * *", backend="kfp"), finished, backend_schedules=True) == POLL
