"""ModelTraining's pure logic: triggers, schedule, run names, status after a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.api.annotations import RETRAIN_ANNOTATION
from mlops_operator.api.modeltraining import ModelTrainingSpec, ModelTrainingStatus, RunRecord
from mlops_operator.reconcile import modeltraining
from mlops_operator.reconcile.conditions import find_condition, plain
from mlops_operator.reconcile.events import Event

CREATED = datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)
UID = "9e4533d8-238f-4063-99ef-f509a9f40396"


def spec(**overrides) -> ModelTrainingSpec:
    return ModelTrainingSpec.model_validate(
        {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}, **overrides}
    )


def status_of(**fields) -> ModelTrainingStatus:
    """A status as the API holds it (camelCase keys)."""
    return ModelTrainingStatus.model_validate(fields)


def condition(status: ModelTrainingStatus, type_: str) -> dict | None:
    return find_condition(plain(status.conditions), type_)


EMPTY = ModelTrainingStatus()


def test_new_generation_is_a_trigger_once():
    triggers = modeltraining.pending_triggers(spec(), 1, EMPTY, {}, CREATED, CREATED)
    assert [(t.kind, t.key) for t in triggers] == [("spec", "g1")]
    handled = modeltraining.mark_handled(EMPTY, triggers, 1, {})
    assert modeltraining.pending_triggers(spec(), 1, handled, {}, CREATED, CREATED) == []
    assert [t.key for t in modeltraining.pending_triggers(spec(), 2, handled, {}, CREATED, CREATED)] == ["g2"]


def test_without_run_on_change_only_the_schedule_and_retrain_requests_start_runs():
    """spec.runOnChange false: neither the creation nor an edit starts a run, as with a CronJob."""
    s = spec(schedule="*/5 * * * *", runOnChange=False)
    assert modeltraining.pending_triggers(s, 1, EMPTY, {}, CREATED, CREATED) == []
    assert modeltraining.pending_triggers(s, 2, EMPTY, {}, CREATED, CREATED) == []
    later = CREATED + timedelta(minutes=5)
    assert [t.kind for t in modeltraining.pending_triggers(s, 2, EMPTY, {}, CREATED, later)] == ["schedule"]
    ann = {RETRAIN_ANNOTATION: "t1 drift in petal_length"}
    assert [t.kind for t in modeltraining.pending_triggers(s, 2, EMPTY, ann, CREATED, CREATED)] == ["retrain"]


def test_retrain_annotation_triggers_on_every_new_value():
    status = status_of(triggeredGeneration=1)
    ann = {RETRAIN_ANNOTATION: "t1 drift in petal_length"}
    triggers = modeltraining.pending_triggers(spec(), 1, status, ann, CREATED, CREATED)
    assert [t.kind for t in triggers] == ["retrain"]
    assert triggers[0].description == "retrain requested: t1 drift in petal_length"
    status = modeltraining.mark_handled(status, triggers, 1, ann)
    assert status.observed_retrain_request == "t1 drift in petal_length"
    assert modeltraining.pending_triggers(spec(), 1, status, ann, CREATED, CREATED) == []
    again = {RETRAIN_ANNOTATION: "t2 drift again"}
    assert [t.kind for t in modeltraining.pending_triggers(spec(), 1, status, again, CREATED, CREATED)] == ["retrain"]


def test_schedule_fires_once_per_due_time_and_collapses_missed_ones():
    s = spec(schedule="*/5 * * * *")
    status = status_of(triggeredGeneration=1)
    assert modeltraining.pending_triggers(s, 1, status, {}, CREATED, CREATED + timedelta(minutes=2)) == []
    now = CREATED + timedelta(minutes=17)  # 10:05, 10:10 and 10:15 are due: one run, for 10:15
    triggers = modeltraining.pending_triggers(s, 1, status, {}, CREATED, now)
    assert [(t.kind, t.key) for t in triggers] == [("schedule", "s202611231015")]
    status = modeltraining.mark_handled(status, triggers, 1, {})
    assert status.last_schedule_time == "2026-11-23T10:15:00Z"
    assert modeltraining.pending_triggers(s, 1, status, {}, CREATED, now) == []
    assert modeltraining.next_schedule_time(s, now) == datetime(2026, 11, 23, 10, 20, tzinfo=UTC)


@pytest.mark.parametrize(("overrides", "backend_schedules"), [
    ({"suspend": True}, False), ({"backend": "kfp", "kfp": {"host": "http://kfp"}}, True)])
def test_schedule_not_fired_by_the_operator_when_suspended_or_the_backend_schedules(overrides, backend_schedules):
    s = spec(schedule="*/5 * * * *", **overrides)
    later = CREATED + timedelta(hours=1)
    assert modeltraining.pending_triggers(s, 1, status_of(triggeredGeneration=1), {}, CREATED, later,
                                          backend_schedules=backend_schedules) == []


def test_run_names_are_deterministic_and_distinct_per_trigger():
    g1 = modeltraining.run_name("iris", UID, [modeltraining.Trigger("spec", "g1", "")])
    assert g1 == "iris-9e4533d8-g1" == modeltraining.run_name("iris", UID, [modeltraining.Trigger("spec", "g1", "")])
    assert modeltraining.run_name("iris", UID, [modeltraining.Trigger("retrain", "rabc", "")]) != g1


def test_pipeline_parameters_map_the_spec():
    s = spec(validation={"thresholds": [{"metric": "accuracy", "min": 0.9}], "maxRegression": 0.02},
             training={"estimator": "LogisticRegression", "parameters": {"C": 2.0}})
    params = modeltraining.pipeline_parameters(s, "ml", "file:///a", {"accuracy": 0.95})
    assert (params["model_name"], params["model_namespace"], params["artifact_root"]) == ("iris", "ml", "file:///a")
    assert params["gate"] == {"accuracy": {"min": 0.9}}
    assert params["max_regression"] == {"*": 0.02}
    assert params["baseline_metrics"] == {"accuracy": 0.95}
    assert (params["estimator"], params["estimator_params"]) == ("LogisticRegression", {"C": 2.0})
    assert params["validation"]["min_rows"] == 10


def record(state="Succeeded", validated=True, version=1, name="r1"):
    return modeltraining.run_record(name, "spec generation 1", name, state, "2026-11-23T10:00:00Z", "2026-11-23T10:01:00Z",
                                    None if state == "Succeeded" else "DatasetUnavailable", None if state == "Succeeded" else "gone",
                                    {"metrics": {"accuracy": 0.9}, "validated": validated, "model_version": version,
                             "model_uri": f"file:///m/{version}", "profile_uri": f"file:///m/{version}/profile.json"})


def test_validated_run_updates_latest_validated_model():
    status = modeltraining.finished_status(EMPTY, record(), 10, 1)
    assert status.phase == "Succeeded"
    assert status.latest_validated_model.to_api() == {"version": 1, "uri": "file:///m/1", "metrics": {"accuracy": 0.9},
                                                      "profileUri": "file:///m/1/profile.json", "run": "r1"}
    assert condition(status, "Validated")["status"] == "True"


def test_rejected_run_keeps_the_previous_validated_model():
    before = modeltraining.finished_status(EMPTY, record(), 10, 1)
    after = modeltraining.finished_status(before, record(validated=False, version=2, name="r2"), 10, 1,
                                          ["accuracy 0.9 < min 0.99"])
    assert after.latest_validated_model.version == 1
    validated = condition(after, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "ValidationFailed")
    assert "accuracy 0.9 < min 0.99" in validated["message"]


def test_failed_run_names_its_reason_and_history_is_bounded():
    status = EMPTY
    for i in range(12):
        status = modeltraining.finished_status(status, record(name=f"r{i}", version=i + 1), 10, 1)
    status = modeltraining.finished_status(status, record(state="Failed", name="bad"), 10, 1)
    assert len(status.history) == 10 and status.history[0].name == "bad"
    succeeded = condition(status, "Succeeded")
    assert (succeeded["status"], succeeded["reason"], succeeded["message"]) == ("False", "DatasetUnavailable", "gone")
    assert status.latest_validated_model.version == 12
    assert status.phase == "Failed"


def test_a_finished_run_is_counted_by_its_result_duration_and_validated_model():
    counted = modeltraining.run_metrics(record())
    assert counted == modeltraining.RunMetrics("succeeded", 60.0, 1, {"accuracy": 0.9})
    # Refused by the gate: counted apart, and the validated model's gauges are left alone.
    assert modeltraining.run_metrics(record(validated=False)) == modeltraining.RunMetrics("rejected", 60.0)
    failed = record(state="Failed", validated=False)
    assert modeltraining.run_metrics(failed) == modeltraining.RunMetrics("failed", 60.0)
    # No start or finish time: no duration; a finish before the start (clock skew) counts as 0 s.
    unstarted = record(state="Canceled", validated=False).model_copy(update={"started": None})
    assert modeltraining.run_metrics(unstarted) == modeltraining.RunMetrics("canceled", None)
    skewed = record().model_copy(update={"finished": "2026-11-23T09:59:00Z"})
    assert modeltraining.run_metrics(skewed).duration_seconds == 0.0


def test_a_finished_run_is_announced_by_its_outcome():
    validated = modeltraining.run_event(record(), [])
    assert validated == Event("ModelValidated", "Run r1 validated model version 1 (accuracy=0.9).")
    refused = modeltraining.run_event(record(validated=False, version=2), ["accuracy 0.9 < min 0.99", "rmse"])
    assert refused == Event("ValidationFailed", "Model version 2 failed the gate: accuracy 0.9 < min 0.99; rmse",
                            warning=True)
    assert modeltraining.run_event(record(state="Failed", name="bad"), []) == Event(
        "DatasetUnavailable", "Run bad failed: gone", warning=True)
    lost = record(state="Failed").model_copy(update={"reason": None, "message": None})
    assert modeltraining.run_event(lost, []) == Event("RunFailed", "Run r1 failed: ", warning=True)


def test_the_champion_is_the_latest_validated_model():
    assert modeltraining.champion(EMPTY) == (None, None)
    status = modeltraining.finished_status(EMPTY, record(version=3), 10, 1)
    assert modeltraining.champion(status) == ({"accuracy": 0.9}, "file:///m/3")


def test_running_status():
    status = modeltraining.running_status(EMPTY, RunRecord(name="r", trigger="spec generation 1", state="Running"), 1)
    assert status.phase == "Running"
    assert condition(status, "Succeeded")["reason"] == "Running"


# --- concurrencyPolicy ----------------------------------------------------------------------

RUNNING_API = {"name": "iris-g1-abc", "state": "Running", "trigger": "spec generation 1",
               "started": "2026-11-23T10:00:31Z"}
RUNNING = RunRecord.model_validate(RUNNING_API)


def run_as(**update) -> RunRecord:
    return RUNNING.model_copy(update=update)


def test_concurrency_policy_values_are_the_apis():
    field = ModelTrainingSpec.model_fields["concurrency_policy"]
    assert {policy.value for policy in modeltraining.ConcurrencyPolicy} == set(field.annotation.__args__)
    assert modeltraining.ConcurrencyPolicy(field.default) is modeltraining.ConcurrencyPolicy.FORBID


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
def test_without_an_active_run_both_policies_start_the_triggers(policy):
    triggers = modeltraining.pending_triggers(spec(), 2, EMPTY, {}, CREATED, CREATED)
    for latest in (None, run_as(state="Succeeded"), run_as(state="Failed")):
        decision = modeltraining.concurrency_step(policy, triggers, latest, CREATED)
        assert decision.start == triggers and decision.replaced is None


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
def test_no_trigger_never_touches_the_active_run(policy):
    decision = modeltraining.concurrency_step(policy, [], RUNNING, CREATED)
    assert decision.start == [] and decision.replaced is None


@pytest.mark.parametrize("state", ["Pending", "Running"])
def test_forbid_keeps_triggers_pending_while_a_run_is_active(state):
    triggers = modeltraining.pending_triggers(spec(), 2, EMPTY, {}, CREATED, CREATED)
    decision = modeltraining.concurrency_step(modeltraining.ConcurrencyPolicy.FORBID, triggers, run_as(state=state),
                                              CREATED)
    assert decision.start == [] and decision.replaced is None
    # Nothing was marked handled, so the same trigger is still pending on the next pass.
    assert modeltraining.pending_triggers(spec(), 2, EMPTY, {}, CREATED, CREATED) == triggers


def test_replace_cancels_the_active_run_and_starts_the_triggers():
    triggers = modeltraining.pending_triggers(spec(), 2, EMPTY, {}, CREATED, CREATED)
    now = CREATED + timedelta(minutes=3)
    decision = modeltraining.concurrency_step("Replace", triggers, RUNNING, now)
    assert decision.start == triggers
    assert decision.replaced.to_api() == {**RUNNING_API, "state": "Canceled", "reason": "Replaced",
                                          "message": f"replaced by a new run ({triggers[0].description})",
                                          "finished": "2026-11-23T10:03:30Z", "metrics": {}, "sources": []}
    status = modeltraining.finished_status(status_of(latestRun=RUNNING_API), decision.replaced, 10, 2)
    assert status.latest_run.state == "Canceled" and status.latest_run.reason == "Replaced"


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        modeltraining.concurrency_step("Allow", [modeltraining.Trigger("spec", "g2", "spec generation 2")], RUNNING,
                                       CREATED)


# --- runs a backend's own schedule started (KFP recurring run fires) --------------------------

def fire(hour: int, state: str = "Succeeded", version: int | None = None) -> modeltraining.ScheduledRun:
    scheduled = datetime(2026, 11, 24, hour, tzinfo=UTC)
    name = f"iris-9e4533d8-s{scheduled:%Y%m%d%H%M%S}"
    rec = record(state=state, version=version or hour, name=name) if state in ("Succeeded", "Failed") else \
        RunRecord(name=name, trigger="schedule", state=state)
    return modeltraining.ScheduledRun(scheduled, rec, [])


def test_scheduled_run_prefix_names_fires_like_the_operators_runs():
    assert modeltraining.scheduled_run_prefix("iris", UID) == "iris-9e4533d8-s"


def test_each_finished_fire_is_recorded_once_with_its_own_version():
    status, finished = modeltraining.record_scheduled_runs(EMPTY, [fire(10), fire(9)], 10, 1)
    assert [r.record.name for r in finished] == ["iris-9e4533d8-s20261124090000", "iris-9e4533d8-s20261124100000"]
    assert [r.model_version for r in status.history] == [10, 9]
    assert status.latest_validated_model.version == 10
    assert status.last_schedule_time == "2026-11-24T10:00:00Z"
    again, finished = modeltraining.record_scheduled_runs(status, [fire(10), fire(9)], 10, 1)
    assert (again, finished) == (status, [])
    later, finished = modeltraining.record_scheduled_runs(status, [fire(11), fire(10), fire(9)], 10, 1)
    assert [r.record.model_version for r in finished] == [11]
    assert [r.model_version for r in later.history] == [11, 10, 9]


def test_an_active_fire_becomes_the_latest_run_unless_another_run_is_active():
    status, finished = modeltraining.record_scheduled_runs(EMPTY, [fire(9, "Running")], 10, 1)
    assert finished == [] and status.latest_run.name.endswith("s20261124090000")
    assert status.phase == "Running" and status.last_schedule_time == "2026-11-24T09:00:00Z"
    # Another run is active: the active fire and every later one wait (none is skipped).
    busy = status_of(latestRun=RUNNING_API, phase="Running")
    waiting, finished = modeltraining.record_scheduled_runs(busy, [fire(9, "Running"), fire(10)], 10, 1)
    assert finished == [] and waiting == busy
    # A fire that finished before it is recorded next to the active run; the active run stays latest.
    status, finished = modeltraining.record_scheduled_runs(busy, [fire(9), fire(10, "Running")], 10, 1)
    assert [r.record.name for r in finished] == ["iris-9e4533d8-s20261124090000"]
    assert status.latest_run == RUNNING and status.phase == "Running"
    assert status.latest_validated_model.version == 9 and status.last_schedule_time == "2026-11-24T09:00:00Z"


def test_a_run_finishing_beside_an_active_one_keeps_that_ones_condition():
    running = modeltraining.running_status(EMPTY, RUNNING, 1)
    status = modeltraining.finished_status(running, record(name="fire", version=4), 10, 1)
    assert status.latest_run == RUNNING and status.phase == "Running"
    assert condition(status, "Succeeded") == condition(running, "Succeeded")
    assert condition(status, "Validated")["status"] == "True"
    assert [r.name for r in status.history] == ["fire"]


def test_latest_validated_model_only_moves_to_a_newer_version():
    status = modeltraining.finished_status(EMPTY, record(name="late", version=5), 10, 1)
    older = modeltraining.finished_status(status, record(name="early", version=4), 10, 1)
    assert older.latest_validated_model.version == 5
    assert [r.name for r in older.history] == ["early", "late"]


# --- spec.timeout ------------------------------------------------------------------------------

def test_a_run_past_its_timeout_is_stopped_with_a_named_reason():
    started = run_as(started="2026-11-23T10:00:00Z")
    at = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
    assert modeltraining.deadline_step(started, None, at) is None
    assert modeltraining.deadline_step(started, "30m", at) is None  # exactly at the limit: still allowed
    expired = modeltraining.deadline_step(started, "30m", at + timedelta(seconds=1))
    assert (expired.state, expired.reason, expired.finished) == ("Failed", "DeadlineExceeded", "2026-11-23T10:30:01Z")
    assert "spec.timeout 30m" in expired.message and expired.name == RUNNING.name
    assert modeltraining.deadline_step(started.model_copy(update={"state": "Succeeded"}), "1s", at) is None
    assert modeltraining.deadline_step(run_as(state="Pending", started=None), "1s", at) is None
    status = modeltraining.finished_status(modeltraining.running_status(EMPTY, started, 1), expired, 10, 1)
    succeeded = condition(status, "Succeeded")
    assert (status.phase, succeeded["reason"]) == ("Failed", "DeadlineExceeded")


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"timeout": "0s"}, "spec.timeout: must be above 0"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp.example"},
      "resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}},
     "nvidia.com/gpu request and limit must be equal"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp.example"}, "resources": {"limits": {"cpu": "0"}}},
     "spec.resources.limits.cpu: '0' must be above 0"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp.example"}, "nodeSelector": {"a b": "x"}},
     "spec.nodeSelector: 'a b' is not a label key"),
    ({"backend": "kfp", "kfp": {"host": "http://kfp.example"}, "nodeSelector": {"pool": "a b"}},
     "spec.nodeSelector.pool: 'a b' is not a label value"),
])
def test_run_settings_the_schema_cannot_judge_are_invalid_spec(overrides, problem):
    from mlops_operator.reconcile.validation import training_spec_errors

    assert any(problem in p for p in training_spec_errors(spec(**overrides))), training_spec_errors(spec(**overrides))


def test_good_run_settings_pass():
    from mlops_operator.reconcile.validation import training_spec_errors

    good = spec(backend="kfp", kfp={"host": "http://kfp.example"}, timeout="2h", retries=3, caching=True,
                resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 1}},
                nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert training_spec_errors(good) == []
    assert good.resources.limits.gpu == 1


# --- backend local inside the operator's Pod -----------------------------------------------

@pytest.mark.parametrize(("backend", "in_pod", "allowed", "refused"), [
    ("local", True, False, True),
    ("local", True, True, False),
    ("local", False, False, False),  # a host process (make run, the demo): nothing shared with a controller Pod
    ("kfp", True, False, False),
    ("job", True, False, False),
])
def test_local_training_in_the_operator_pod_is_refused_unless_allowed(backend, in_pod, allowed, refused):
    from mlops_operator.reconcile.validation import local_training_problem

    s = spec(backend=backend, **({"kfp": {"host": "http://kfp.example"}} if backend == "kfp" else {}))
    problem = local_training_problem(s, in_pod, allowed)
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith("spec.backend: local training would run inside the operator's Pod")
        assert "MLOPS_LOCAL_TRAINING_IN_POD" in problem and "use backend job (a Kubernetes Job per run) or kfp" in problem


def test_the_kfp_example_passes_the_operators_checks():
    from pathlib import Path

    import yaml

    from mlops_operator.reconcile.validation import endpoint_problem, training_spec_errors

    example = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "training-kfp.yaml").read_text())
    parsed = ModelTrainingSpec.model_validate(example["spec"])
    chart_kfp_host = "http://ml-pipeline.kubeflow.svc:8888"  # the chart's operator.kfpHost
    assert training_spec_errors(parsed, chart_kfp_host, lambda name: "classification") == []
    assert endpoint_problem("spec.kfp.host", parsed.kfp.host, chart_kfp_host, []) is None
    assert (parsed.retries, parsed.timeout, parsed.resources.limits.memory) == (2, "2h", "8Gi")
