"""What the schema cannot express is caught by the semantic checks."""

from __future__ import annotations

from mlops_operator.api.driftmonitor import DriftMonitorSpec
from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.reconcile.durations import parse_duration
from mlops_operator.reconcile.validation import (
    deployment_spec_errors,
    drift_spec_errors,
    training_spec_errors,
)
import pytest
from datetime import timedelta


def training(**overrides):
    spec = {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}, **overrides}
    return ModelTrainingSpec.model_validate(spec)


def test_valid_training_has_no_problems():
    assert training_spec_errors(training(schedule="*/5 * * * *")) == []


def test_cron_that_passes_the_pattern_but_not_croniter():
    problems = training_spec_errors(training(schedule="99 * * * *"))
    assert len(problems) == 1 and problems[0].startswith("spec.schedule")


def test_kfp_backend_needs_a_host_somewhere():
    assert training_spec_errors(training(backend="kfp"))[0].startswith("spec.kfp.host")
    assert training_spec_errors(training(backend="kfp"), default_kfp_host="http://kfp:8888") == []


def test_unsupported_dataset_scheme():
    spec = training(dataset={"uri": "ftp://x/y.csv", "target": "y"})
    assert "unsupported scheme 'ftp'" in training_spec_errors(spec)[0]


def test_target_in_features():
    spec = training(dataset={"uri": "sklearn://iris", "target": "t", "features": ["a", "t"]})
    assert training_spec_errors(spec) == ["spec.dataset.features: must not contain the target column"]


def test_deployment_checks():
    local_xgb = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "x"}, "runtime": "xgboost"})
    assert "local backend serves sklearn models only" in deployment_spec_errors(local_xgb)[0]
    typed = ModelDeploymentSpec.model_validate(
        {"model": {"fromTraining": "x"}, "region": "us-east-1", "instanceType": "z9.huge"}
    )
    assert "not in the price table" in deployment_spec_errors(typed, {"m5.large"})[0]
    assert deployment_spec_errors(typed, {"z9.huge"}) == []


def test_drift_checks():
    ok = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"}})
    assert drift_spec_errors(ok) == []
    no_window = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"}, "window": {"rows": None}})
    assert drift_spec_errors(no_window) == ["spec.window: needs rows or duration"]
    zero = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"}, "interval": "0s"})
    assert drift_spec_errors(zero) == ["spec.interval: must be positive"]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "1h 30m", "-1s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)
