"""DriftMonitor, pure: due checks, engine results → status, verdicts, concept drift, retrain policy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from mlops_operator import drift
from mlops_operator.api.annotations import RETRAIN_ANNOTATION, RETRAIN_WINDOW_ANNOTATION
from mlops_operator.api.driftmonitor import DriftMonitorSpec, DriftMonitorStatus, Performance, RetrainPolicy, Window
from mlops_operator.reconcile import driftmonitor
from mlops_operator.reconcile.conditions import find_condition, initial_conditions, now_rfc3339, set_condition

NOW = datetime(2026, 11, 23, 4, 0, 0, tzinfo=UTC)
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


@pytest.fixture(scope="module")
def iris() -> pd.DataFrame:
    return load_iris(as_frame=True).frame


@pytest.fixture(scope="module")
def profile(iris) -> dict:
    return drift.build_profile(iris, exclude=("target",))


def spec(**fields) -> DriftMonitorSpec:
    return DriftMonitorSpec.model_validate({"deploymentRef": {"name": "iris"}, **fields})


def normal_rows(iris, n=300, seed=0) -> pd.DataFrame:
    return iris[FEATURES].sample(n, replace=True, random_state=seed).reset_index(drop=True)


def shifted_rows(iris, n=300, seed=0) -> pd.DataFrame:
    rows = normal_rows(iris, n, seed)
    rows["petal length (cm)"] += 2.5
    rows["petal width (cm)"] *= 2.0
    return rows


def compare(profile, rows, monitor: DriftMonitorSpec) -> drift.DriftReport:
    return drift.compare(profile, rows, driftmonitor.engine_tests(monitor), monitor.features or None, alpha=monitor.alpha,
                         correction=driftmonitor.engine_correction(monitor), min_samples=monitor.window.min_samples)


def typed(status: dict) -> DriftMonitorStatus:
    """A status as the operator reads it from the API."""
    return DriftMonitorStatus.model_validate(status)


def checked_status_for(report, verdict, status=None, problem=None, performance=None, now=NOW) -> dict:
    """The status checked_status builds, as it is written."""
    status = status or {"conditions": initial_conditions(None, driftmonitor.CONDITIONS, generation=1, now=now)}
    return driftmonitor.checked_status(
        typed(status), verdict, results=driftmonitor.feature_results(report), sample_size=report.sample_size,
        window=("2026-11-23T03:59:00Z", "2026-11-23T03:59:59Z"), reference_uri="file:///m/iris/1/profile.json",
        reference_description="the training profile of model version 1", reference_size=150, model_version="1",
        performance=performance, problem=problem, generation=1, now=now).to_status()


# ------------------------------------------------------------------ when a check is due


def test_check_is_due_on_first_visit_and_new_generation():
    monitor = spec(interval="5m")
    first = {"conditions": initial_conditions(None, driftmonitor.CONDITIONS, generation=1)}
    assert driftmonitor.check_due(monitor, typed(first), 1, NOW)
    checked = {"lastCheckTime": now_rfc3339(NOW), "phase": "NoDrift",
               "conditions": set_condition(first["conditions"], "Ready", "True", "Checked", generation=1)}
    assert not driftmonitor.check_due(monitor, typed(checked), 1, NOW + timedelta(seconds=10))
    assert driftmonitor.check_due(monitor, typed(checked), 2, NOW + timedelta(seconds=10)), "a spec change checks at once"


def test_check_is_due_after_interval_and_sooner_after_a_failure():
    monitor = spec(interval="5m")
    ready = set_condition(None, "Ready", "True", "Checked", generation=1)
    status = {"lastCheckTime": now_rfc3339(NOW), "phase": "NoDrift", "conditions": ready}
    assert not driftmonitor.check_due(monitor, typed(status), 1, NOW + timedelta(minutes=4, seconds=59))
    assert driftmonitor.check_due(monitor, typed(status), 1, NOW + timedelta(minutes=5))
    failed = typed({**status, "phase": "Error",
                    "conditions": set_condition(None, "Ready", "False", "DeploymentNotFound", generation=1)})
    assert not driftmonitor.check_due(monitor, failed, 1, NOW + timedelta(seconds=9))
    assert driftmonitor.check_due(monitor, failed, 1, NOW + driftmonitor.RETRY_AFTER_FAILURE)
    fast = spec(interval="2s")
    assert driftmonitor.check_due(fast, failed, 1, NOW + timedelta(seconds=2)), "interval shorter than the retry wins"
    # The operator backs a failed monitor off by the same delay (doubling from there).
    assert driftmonitor.retry_after_failure(monitor) == driftmonitor.RETRY_AFTER_FAILURE
    assert driftmonitor.retry_after_failure(fast) == timedelta(seconds=2)


def test_window_since_and_engine_arguments():
    assert driftmonitor.window_since(Window(duration="15m"), NOW) == NOW - timedelta(minutes=15)
    assert driftmonitor.window_since(Window(rows=10), NOW) is None
    monitor = spec(tests=[{"name": "ks", "threshold": 0.01}, {"name": "wasserstein", "threshold": 0.3}],
                   correction="fdr")
    assert driftmonitor.engine_tests(monitor) == {"ks": 0.01, "wasserstein": 0.3}
    assert driftmonitor.engine_correction(monitor) == "benjamini-hochberg"
    assert driftmonitor.engine_correction(spec()) == "bonferroni"
    assert driftmonitor.missing_features(spec(features=["petal length (cm)", "nope"]), FEATURES) == ["nope"]


def test_feature_mismatch_only_when_rows_share_no_feature():
    assert driftmonitor.feature_mismatch(FEATURES, ["f0", "f1", "f2", "f3"], rows=10) is not None
    assert "f0" in driftmonitor.feature_mismatch(FEATURES, ["f0"], rows=10)
    assert driftmonitor.feature_mismatch(FEATURES, ["f0"], rows=0) is None
    assert driftmonitor.feature_mismatch(FEATURES, FEATURES[:1], rows=10) is None


# ------------------------------------------------------------------ engine results → status


def test_no_drift_on_traffic_like_the_training_data(iris, profile):
    monitor = spec()
    report = compare(profile, normal_rows(iris), monitor)
    verdict = driftmonitor.verdict_of(report, monitor.drift_share, report.sample_size, monitor.window.min_samples)
    assert verdict.phase == driftmonitor.NO_DRIFT
    assert (verdict.evaluated, verdict.drifted) == (4, [])
    assert verdict.summary == "0/4 features drifted"


def test_shifted_traffic_drifts_with_a_readable_summary(iris, profile):
    monitor = spec()
    report = compare(profile, shifted_rows(iris), monitor)
    verdict = driftmonitor.verdict_of(report, monitor.drift_share, report.sample_size, monitor.window.min_samples)
    assert verdict.phase == driftmonitor.DRIFT and verdict.data_drift and not verdict.performance_degraded
    assert set(verdict.drifted) == {"petal length (cm)", "petal width (cm)"}
    assert verdict.summary.startswith("2/4 features drifted (")
    assert "psi petal length (cm)=" in verdict.summary and "ks petal width (cm)=" in verdict.summary
    assert " p=" in verdict.summary, "the summary gives the adjusted p-value beside the score"


def test_feature_results_carry_score_threshold_verdict_and_p_values(iris, profile):
    monitor = spec()
    report = compare(profile, shifted_rows(iris), monitor)
    results = {r["feature"]: r for r in driftmonitor.feature_results(report)}
    assert list(results) == FEATURES
    petal = results["petal length (cm)"]
    assert petal["kind"] == "numeric" and petal["verdict"] == "Drift" and petal["samples"] == 300
    tests = {t["test"]: t for t in petal["tests"]}
    assert set(tests) == {"psi", "ks"}, "chi2 does not apply to numeric features"
    assert tests["psi"]["drifted"] and tests["psi"]["score"] > 0.2 and tests["psi"]["threshold"] == 0.2
    assert tests["psi"]["verdict"] == "Drift" and tests["psi"]["alpha"] == 0.05
    assert tests["psi"]["adjustedPValue"] < 0.05 and tests["psi"]["pValueMethod"] in {"asymptotic", "monte-carlo"}
    engine = report.features["petal length (cm)"].tests["ks"]
    # Every test has a p-value; Bonferroni over 4 numeric features x (psi, ks) = 8.
    assert tests["ks"]["pValue"] == pytest.approx(engine.p_value, rel=1e-5, abs=1e-300)
    assert tests["ks"]["adjustedPValue"] == pytest.approx(min(1.0, engine.p_value * 8), rel=1e-5, abs=1e-300)
    assert petal["referenceSamples"] == 150
    assert results["sepal width (cm)"]["verdict"] == "NoDrift"


def test_numbers_are_api_safe():
    assert driftmonitor._number(float("nan")) is None
    assert driftmonitor._number(float("inf")) == 1e300
    assert driftmonitor._number(0.123456789) == 0.123457
    assert driftmonitor._number(None) is None


def test_drift_share_needs_more_than_that_fraction(iris, profile):
    rows = normal_rows(iris)
    rows["petal length (cm)"] += 2.5
    monitor = spec(driftShare=0.25)
    report = compare(profile, rows, monitor)
    verdict = driftmonitor.verdict_of(report, 0.25, report.sample_size, 100)
    assert verdict.drifted == ["petal length (cm)"]
    assert verdict.phase == driftmonitor.NO_DRIFT, "1/4 is not more than 0.25"
    assert driftmonitor.verdict_of(report, 0.2, report.sample_size, 100).phase == driftmonitor.DRIFT
    assert driftmonitor.verdict_of(report, 0.0, report.sample_size, 100).phase == driftmonitor.DRIFT


def test_too_few_samples_is_insufficient_data_not_drift(iris, profile):
    monitor = spec(window={"rows": 1000, "minSamples": 100})
    report = compare(profile, shifted_rows(iris, n=40), monitor)
    verdict = driftmonitor.verdict_of(report, 0.0, report.sample_size, 100)
    assert verdict.phase == driftmonitor.INSUFFICIENT_DATA and not verdict.data_drift
    assert verdict.summary == "40 requests in the window, 100 needed for a verdict"
    status = checked_status_for(report, verdict)
    assert status["phase"] == "InsufficientData"
    detected = find_condition(status["conditions"], "DriftDetected")
    assert (detected["status"], detected["reason"]) == ("False", "InsufficientData")
    assert find_condition(status["conditions"], "Ready")["status"] == "True"
    for result in status["results"]:
        assert result["verdict"] == "InsufficientData"
        assert {t["test"]: t["verdict"] for t in result["tests"]} == {"psi": "InsufficientData", "ks": "InsufficientData"}
        assert all("needs 100 non-missing values" in t["message"] and "score" not in t for t in result["tests"])


def test_insufficient_data_names_a_small_reference(iris):
    small = drift.build_profile(iris.head(50), exclude=("target",))
    report = drift.compare(small, normal_rows(iris), {"ks": 0.05}, min_samples=100)
    verdict = driftmonitor.verdict_of(report, 0.0, report.sample_size, 100)
    assert verdict.phase == driftmonitor.INSUFFICIENT_DATA
    assert "the reference has 50 values" in verdict.summary


def test_checked_status_conditions_and_fields(iris, profile):
    report = compare(profile, shifted_rows(iris), spec())
    verdict = driftmonitor.verdict_of(report, 0.0, report.sample_size, 100)
    status = checked_status_for(report, verdict)
    assert status["phase"] == "Drift"
    assert status["lastCheckTime"] == "2026-11-23T04:00:00Z"
    assert (status["sampleSize"], status["evaluatedFeatures"], status["driftedFeatures"]) == (300, 4, 2)
    assert status["modelVersion"] == "1" and status["referenceSize"] == 150
    assert status["windowStart"] == "2026-11-23T03:59:00Z"
    ready = find_condition(status["conditions"], "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Checked")
    assert ready["message"] == "Compared 300 requests with the training profile of model version 1."
    detected = find_condition(status["conditions"], "DriftDetected")
    assert (detected["status"], detected["reason"]) == ("True", "DriftDetected")
    assert detected["message"] == verdict.summary
    assert status["performance"] is None  # none known: cleared

    later = NOW + timedelta(minutes=5)
    again = checked_status_for(report, verdict, status=status, now=later)
    assert find_condition(again["conditions"], "DriftDetected")["lastTransitionTime"] == now_rfc3339(NOW)
    with_problem = checked_status_for(report, verdict, status=status, problem=("LabelsUnavailable", "no labels"))
    ready = find_condition(with_problem["conditions"], "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "LabelsUnavailable", "no labels")
    assert with_problem["phase"] == "Drift", "the data drift verdict stands"


def test_optional_fields_are_removed_when_unknown(iris, profile):
    report = compare(profile, normal_rows(iris), spec())
    verdict = driftmonitor.verdict_of(report, 0.0, report.sample_size, 100)
    stale = {"modelVersion": "1", "windowStart": "x", "performance": {"metric": "accuracy"},
             "conditions": initial_conditions(None, driftmonitor.CONDITIONS, generation=1)}
    status = driftmonitor.checked_status(typed(stale), verdict, results=[], sample_size=0, window=(None, None),
                                         reference_uri="u", reference_description="u", reference_size=None,
                                         model_version=None, performance=None, problem=None, generation=1,
                                         now=NOW).to_status()
    # Written as None: the merge patch removes them from the live status.
    assert all(status[key] is None for key in ("modelVersion", "windowStart", "windowEnd", "referenceSize",
                                                 "performance"))


def test_failed_status_says_why_and_keeps_the_verdict_unknown():
    status = {"phase": "NoDrift", "sampleSize": 300,
              "conditions": initial_conditions(None, driftmonitor.CONDITIONS, generation=3, now=NOW)}
    failed = driftmonitor.failed_status(typed(status), "DeploymentNotFound", "ModelDeployment iris not found", 3,
                                        NOW).to_status()
    assert failed["phase"] == "Error" and failed["sampleSize"] == 300
    ready = find_condition(failed["conditions"], "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "DeploymentNotFound", 3)
    detected = find_condition(failed["conditions"], "DriftDetected")
    assert (detected["status"], detected["reason"]) == ("Unknown", "CheckFailed")
    assert "ModelDeployment iris not found" in detected["message"]


def test_events_only_when_the_verdict_changes():
    def status(phase, ready=("True", "Checked", ""), detected=("False", "NoDrift", "0/4 features drifted")):
        conditions = set_condition(None, "Ready", *ready)
        conditions = set_condition(conditions, "DriftDetected", *detected)
        return typed({"phase": phase, "conditions": conditions})

    assert driftmonitor.verdict_event("NoDrift", status("NoDrift")) is None
    first = driftmonitor.verdict_event("Pending", status("NoDrift"))
    assert (first.reason, first.warning) == ("NoDrift", False)
    drifted = driftmonitor.verdict_event("NoDrift", status("Drift", detected=("True", "DriftDetected", "2/4 features")))
    assert (drifted.reason, drifted.message, drifted.warning) == ("DriftDetected", "2/4 features", True)
    resolved = driftmonitor.verdict_event("Drift", status("NoDrift"))
    assert resolved.reason == "DriftResolved"
    failed = driftmonitor.verdict_event("NoDrift", status("Error", ready=("False", "InferenceLogUnavailable", "no log")))
    assert (failed.reason, failed.message, failed.warning) == ("InferenceLogUnavailable", "no log", True)
    assert driftmonitor.verdict_event("NoDrift", status("InsufficientData")).reason == "InsufficientData"
    explained = status("Drift", detected=("True", "DriftDetected", "2/4 features")).model_copy(
        update={"cause": "Likely cause: version 3 changed just before."})
    assert driftmonitor.verdict_event("NoDrift", explained).message == \
        "2/4 features Likely cause: version 3 changed just before."


# ------------------------------------------------------------------ concept drift


def window_frame(predictions, versions=None, rows=None, ids=None):
    n = len(predictions)
    frame = pd.DataFrame({
        "request_id": ids or [f"r{i}" for i in range(n)],
        "row": rows or [0] * n,
        "model_version": versions or ["1"] * n,
        "prediction": predictions,
    })
    frame.attrs["prediction_columns"] = ["prediction"]
    return frame


def test_join_labels_by_request_id_row_zero_and_served_version():
    window = window_frame([0, 1, 2, 1], versions=["1", "1", "2", "1"], rows=[0, 0, 0, 1],
                          ids=["a", "b", "c", "b"])
    labels = pd.DataFrame({"id": ["a", "b", "c", "a", "zzz"], "label": [9, 1, 2, 0, 5]})
    y_true, y_pred = driftmonitor.join_labels(window, labels, model_version="1")
    # a: the last label wins (0); b row 0 only; c served by version 2; zzz is not in the window.
    assert sorted(zip(y_true.tolist(), y_pred.tolist())) == [(0, 0), (1, 1)]
    with_rows = pd.DataFrame({"id": ["b", "b"], "row": [0, 1], "label": [1, 0]})
    y_true, y_pred = driftmonitor.join_labels(window, with_rows, model_version=None)
    assert sorted(zip(y_true.tolist(), y_pred.tolist())) == [(0, 1), (1, 1)]
    with pytest.raises(ValueError, match="id and label"):
        driftmonitor.join_labels(window, pd.DataFrame({"id": ["a"]}), None)


def test_live_metrics_match_sklearn_and_normalise_labels():
    labels = pd.Series(["1", "0", "2", "1.0"])
    predictions = pd.Series([1.0, 0.0, 1.0, 1])
    assert driftmonitor.live_metric("accuracy", labels, predictions) == pytest.approx(0.75)
    from sklearn.metrics import f1_score

    assert driftmonitor.live_metric("f1", labels, predictions) == pytest.approx(
        f1_score(["1", "0", "2", "1"], ["1", "0", "1", "1"], average="macro"))
    assert driftmonitor.live_metric("rmse", pd.Series([1.0, 2.0, 3.0]), pd.Series([1.0, 2.0, 5.0])) == pytest.approx(
        np.sqrt(4 / 3))
    assert driftmonitor.live_metric("mae", pd.Series([1.0, 2.0, "x"]), pd.Series([2.0, 2.0, 1.0])) == pytest.approx(0.5)


def test_performance_degrades_beyond_max_degradation():
    spec_ = Performance(labelsUri="file:///labels.csv", metric="accuracy", maxDegradation=0.1, minSamples=4)
    labels = pd.Series([0, 1, 2, 1, 0])
    good = driftmonitor.performance_result(spec_, labels, pd.Series([0, 1, 2, 1, 1]), {"accuracy": 0.85})
    assert (good["live"], good["training"], good["samples"], good["degraded"]) == (0.8, 0.85, 5, False)
    bad = driftmonitor.performance_result(spec_, labels, pd.Series([0, 2, 1, 1, 1]), {"accuracy": 0.85})
    assert bad["live"] == 0.4 and bad["degraded"]
    rmse = Performance(labelsUri="x", metric="rmse", maxDegradation=0.5, minSamples=1)
    worse = driftmonitor.performance_result(rmse, pd.Series([1.0, 2.0]), pd.Series([2.0, 3.0]), {"rmse": 0.2})
    assert worse["live"] == 1.0 and worse["degraded"], "a larger error is worse"
    better = driftmonitor.performance_result(rmse, pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0]), {"rmse": 0.2})
    assert not better["degraded"]


def test_performance_without_a_verdict_says_why():
    spec_ = Performance(labelsUri="x", metric="accuracy", minSamples=10)
    few = driftmonitor.performance_result(spec_, pd.Series([0, 1]), pd.Series([1, 0]), {"accuracy": 0.99})
    assert few["live"] == 0.0 and not few["degraded"]
    assert few["message"] == "2 labelled requests in the window, 10 needed for a verdict"
    none = driftmonitor.performance_result(spec_, pd.Series([], dtype=object), pd.Series([], dtype=object), None)
    assert "live" not in none and none["samples"] == 0
    untrained = driftmonitor.performance_result(Performance(labelsUri="x", minSamples=1), pd.Series([1]), pd.Series([1]),
                                                {"f1": 0.9})
    assert untrained["message"] == "the model version's metrics.json has no accuracy" and not untrained["degraded"]


def test_degraded_performance_alone_is_drift(iris, profile):
    report = compare(profile, normal_rows(iris), spec())
    performance = {"metric": "accuracy", "live": 0.5, "training": 0.96, "samples": 50, "degraded": True}
    verdict = driftmonitor.verdict_of(report, 0.0, report.sample_size, 100, performance)
    assert verdict.phase == driftmonitor.DRIFT and not verdict.data_drift and verdict.performance_degraded
    assert verdict.summary == "0/4 features drifted; accuracy 0.5 live vs 0.96 at training (degraded)"
    status = checked_status_for(report, verdict, performance=performance)
    assert find_condition(status["conditions"], "DriftDetected")["reason"] == "PerformanceDegraded"
    assert status["performance"]["degraded"]


# ------------------------------------------------------------------ retrain policy


def policy(cooldown="1h", max_per_day=3) -> RetrainPolicy:
    return RetrainPolicy(trainingRef={"name": "iris"}, cooldown=cooldown, maxPerDay=max_per_day)


def test_first_retrain_is_allowed_and_recorded():
    decision = driftmonitor.retrain_decision(policy(), typed({}), NOW)
    assert decision.allowed and decision.recent == []
    value = driftmonitor.retrain_annotation_value(NOW, "3/4 features drifted (psi petal length (cm)=0.61)")
    assert value == "2026-11-23T04:00:00Z drift: 3/4 features drifted (psi petal length (cm)=0.61)"
    status = driftmonitor.record_retrain(typed({"phase": "Drift"}), decision, value, NOW).to_status()
    assert status["lastRetrainRequest"] == "2026-11-23T04:00:00Z"
    assert status["lastRetrainReason"] == value
    assert status["retrainRequests"] == ["2026-11-23T04:00:00Z"]
    assert len(driftmonitor.retrain_annotation_value(NOW, "x" * 5000)) == driftmonitor.MAX_ANNOTATION_LENGTH


def test_a_request_written_but_not_recorded_is_recorded_not_made_again():
    """The operator stopped after annotating the ModelTraining and before recording it: the next check
    finds its own request there and records it (with its own time), instead of asking a second time."""
    value = driftmonitor.retrain_annotation_value(NOW, "3/4 features drifted")
    window = json.dumps({"request": value, "monitor": "iris", "driftedFeatures": ["petal length (cm)"]})
    annotations = {RETRAIN_ANNOTATION: value, RETRAIN_WINDOW_ANNOTATION: window}
    assert driftmonitor.unrecorded_request("iris", typed({}), annotations) == (value, NOW)
    # Recorded already, another monitor's, a person's request (no window of ours), or older than the record.
    recorded = typed({"lastRetrainRequest": now_rfc3339(NOW), "lastRetrainReason": value})
    assert driftmonitor.unrecorded_request("iris", recorded, annotations) is None
    assert driftmonitor.unrecorded_request("other", typed({}), annotations) is None
    assert driftmonitor.unrecorded_request("iris", typed({}), {RETRAIN_ANNOTATION: value}) is None
    later = typed({"lastRetrainRequest": now_rfc3339(NOW + timedelta(hours=1))})
    assert driftmonitor.unrecorded_request("iris", later, annotations) is None


def test_cooldown_blocks_until_it_has_passed():
    status = {"lastRetrainRequest": now_rfc3339(NOW), "retrainRequests": [now_rfc3339(NOW)]}
    blocked = driftmonitor.retrain_decision(policy("1h"), typed(status), NOW + timedelta(minutes=59))
    assert not blocked.allowed and blocked.reason == "Cooldown"
    assert blocked.next_allowed == NOW + timedelta(hours=1)
    assert "next possible at 2026-11-23T05:00:00Z" in blocked.message
    assert driftmonitor.retrain_decision(policy("1h"), typed(status), NOW + timedelta(hours=1)).allowed


def test_a_held_back_or_impossible_retrain_says_why_in_the_conditions():
    drifted = typed({"phase": "Drift", "retrainRequests": [now_rfc3339(NOW)], "lastRetrainRequest": now_rfc3339(NOW),
                     "conditions": set_condition(set_condition(None, "Ready", "True", "Checked", generation=1),
                                                 "DriftDetected", "True", "DriftDetected", "2/4 features drifted")})
    blocked = driftmonitor.retrain_decision(policy("1h"), drifted, NOW + timedelta(minutes=5))
    held = driftmonitor.retrain_refused(drifted, blocked, 1, NOW + timedelta(minutes=5))
    detected = held.condition("DriftDetected")
    assert (detected.status, detected.reason) == ("True", "DriftDetected")
    assert detected.message.startswith("2/4 features drifted; retrain not requested: cooldown 1h after the request")
    assert held.retrain_requests == [now_rfc3339(NOW)] and held.condition("Ready").status == "True"
    allowed = driftmonitor.retrain_decision(policy("1h"), drifted, NOW + timedelta(hours=2))
    missing = driftmonitor.training_missing(drifted, allowed, "iris", 1, NOW + timedelta(hours=2))
    ready = missing.condition("Ready")
    assert (ready.status, ready.reason) == ("False", "TrainingNotFound") and "ModelTraining iris" in ready.message


def test_cooldown_counts_from_last_request_even_without_history():
    status = {"lastRetrainRequest": now_rfc3339(NOW)}
    assert not driftmonitor.retrain_decision(policy("30m"), typed(status), NOW + timedelta(minutes=10)).allowed


def test_max_per_day_counts_a_sliding_24_hours():
    times = [NOW - timedelta(hours=h) for h in (30, 20, 10, 2)]
    status = {"retrainRequests": [now_rfc3339(t) for t in times], "lastRetrainRequest": now_rfc3339(times[-1])}
    blocked = driftmonitor.retrain_decision(policy("1h", max_per_day=3), typed(status), NOW)
    assert not blocked.allowed and blocked.reason == "MaxPerDay"
    assert blocked.recent == [now_rfc3339(t) for t in times[1:]], "the request 30h ago no longer counts"
    assert blocked.next_allowed == times[1] + timedelta(hours=24)
    assert driftmonitor.retrain_decision(policy("1h", max_per_day=3), typed(status), NOW + timedelta(hours=4, seconds=1)).allowed
    assert driftmonitor.retrain_decision(policy("1h", max_per_day=4), typed(status), NOW).allowed


def test_unreadable_request_times_are_ignored():
    status = {"retrainRequests": ["yesterday", now_rfc3339(NOW - timedelta(hours=3))]}
    decision = driftmonitor.retrain_decision(policy("1h", max_per_day=2), typed(status), NOW)
    assert decision.allowed and decision.recent == [now_rfc3339(NOW - timedelta(hours=3))]


def test_results_are_bounded_with_drifted_features_first():
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({f"x{i}": rng.normal(size=200) for i in range(driftmonitor.MAX_RESULTS + 10)})
    current = reference.copy()
    current["x515"] = current["x515"] + 5
    report = drift.compare(reference, current, {"psi": 0.2}, min_samples=100)
    results = driftmonitor.feature_results(report)
    assert len(results) == driftmonitor.MAX_RESULTS
    assert results[0]["feature"] == "x515" and results[0]["verdict"] == "Drift"
    assert [r["feature"] for r in results[1:4]] == ["x0", "x1", "x2"]
