"""ModelTraining's pure logic: triggers, schedule, run names, status after a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.api.annotations import RETRAIN_ANNOTATION
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.reconcile import modeltraining
from mlops_operator.reconcile.conditions import find_condition

CREATED = datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)
UID = "9e4533d8-238f-4063-99ef-f509a9f40396"


def spec(**overrides) -> ModelTrainingSpec:
    return ModelTrainingSpec.model_validate(
        {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}, **overrides}
    )


def test_new_generation_is_a_trigger_once():
    triggers = modeltraining.pending_triggers(spec(), 1, {}, {}, CREATED, CREATED)
    assert [(t.kind, t.key) for t in triggers] == [("spec", "g1")]
    handled = modeltraining.mark_handled(triggers, 1, {}, CREATED)
    assert modeltraining.pending_triggers(spec(), 1, handled, {}, CREATED, CREATED) == []
    assert [t.key for t in modeltraining.pending_triggers(spec(), 2, handled, {}, CREATED, CREATED)] == ["g2"]


def test_retrain_annotation_triggers_on_every_new_value():
    status = {"triggeredGeneration": 1}
    ann = {RETRAIN_ANNOTATION: "t1 drift in petal_length"}
    triggers = modeltraining.pending_triggers(spec(), 1, status, ann, CREATED, CREATED)
    assert [t.kind for t in triggers] == ["retrain"]
    assert triggers[0].description == "retrain requested: t1 drift in petal_length"
    status.update(modeltraining.mark_handled(triggers, 1, ann, CREATED))
    assert modeltraining.pending_triggers(spec(), 1, status, ann, CREATED, CREATED) == []
    again = {RETRAIN_ANNOTATION: "t2 drift again"}
    assert [t.kind for t in modeltraining.pending_triggers(spec(), 1, status, again, CREATED, CREATED)] == ["retrain"]


def test_schedule_fires_once_per_due_time_and_collapses_missed_ones():
    s = spec(schedule="*/5 * * * *")
    status = {"triggeredGeneration": 1}
    assert modeltraining.pending_triggers(s, 1, status, {}, CREATED, CREATED + timedelta(minutes=2)) == []
    now = CREATED + timedelta(minutes=17)  # 10:05, 10:10 and 10:15 are due: one run, for 10:15
    triggers = modeltraining.pending_triggers(s, 1, status, {}, CREATED, now)
    assert [(t.kind, t.key) for t in triggers] == [("schedule", "s202611231015")]
    status.update(modeltraining.mark_handled(triggers, 1, {}, now))
    assert status["lastScheduleTime"] == "2026-11-23T10:15:00Z"
    assert modeltraining.pending_triggers(s, 1, status, {}, CREATED, now) == []
    assert modeltraining.next_schedule_time(s, now) == datetime(2026, 11, 23, 10, 20, tzinfo=UTC)


@pytest.mark.parametrize("overrides", [{"suspend": True}, {"backend": "kfp", "kfp": {"host": "http://kfp"}}])
def test_schedule_not_fired_locally_when_suspended_or_on_kfp(overrides):
    s = spec(schedule="*/5 * * * *", **overrides)
    assert modeltraining.pending_triggers(s, 1, {"triggeredGeneration": 1}, {}, CREATED, CREATED + timedelta(hours=1)) == []


def test_run_names_are_deterministic_and_distinct_per_trigger():
    g1 = modeltraining.run_name("iris", UID, [modeltraining.Trigger("spec", "g1", "")])
    assert g1 == "iris-9e4533d8-g1" == modeltraining.run_name("iris", UID, [modeltraining.Trigger("spec", "g1", "")])
    assert modeltraining.run_name("iris", UID, [modeltraining.Trigger("retrain", "rabc", "")]) != g1


def test_pipeline_parameters_map_the_spec():
    s = spec(validation={"thresholds": [{"metric": "accuracy", "min": 0.9}], "maxRegression": 0.02},
             training={"estimator": "LogisticRegression", "parameters": {"C": 2.0}})
    params = modeltraining.pipeline_parameters(s, "file:///a", {"accuracy": 0.95})
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
    status = modeltraining.finished_status({}, record(), 10, 1)
    assert status["phase"] == "Succeeded"
    assert status["latestValidatedModel"] == {"version": 1, "uri": "file:///m/1", "metrics": {"accuracy": 0.9},
                                              "profileUri": "file:///m/1/profile.json", "run": "r1"}
    assert find_condition(status["conditions"], "Validated")["status"] == "True"


def test_rejected_run_keeps_the_previous_validated_model():
    before = modeltraining.finished_status({}, record(), 10, 1)
    after = modeltraining.finished_status(before, record(validated=False, version=2, name="r2"), 10, 1,
                                          ["accuracy 0.9 < min 0.99"])
    assert after["latestValidatedModel"]["version"] == 1
    validated = find_condition(after["conditions"], "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "ValidationFailed")
    assert "accuracy 0.9 < min 0.99" in validated["message"]


def test_failed_run_names_its_reason_and_history_is_bounded():
    status: dict = {}
    for i in range(12):
        status = modeltraining.finished_status(status, record(name=f"r{i}", version=i + 1), 10, 1)
    status = modeltraining.finished_status(status, record(state="Failed", name="bad"), 10, 1)
    assert len(status["history"]) == 10 and status["history"][0]["name"] == "bad"
    succeeded = find_condition(status["conditions"], "Succeeded")
    assert (succeeded["status"], succeeded["reason"], succeeded["message"]) == ("False", "DatasetUnavailable", "gone")
    assert status["latestValidatedModel"]["version"] == 12
    assert status["phase"] == "Failed"


def test_running_status():
    status = modeltraining.running_status({}, {"name": "r", "trigger": "spec generation 1", "state": "Running"}, 1)
    assert status["phase"] == "Running"
    assert find_condition(status["conditions"], "Succeeded")["reason"] == "Running"


# --- concurrencyPolicy ----------------------------------------------------------------------

RUNNING = {"name": "iris-g1-abc", "state": "Running", "trigger": "spec generation 1", "started": "2026-11-23T10:00:31Z"}


def test_concurrency_policy_values_are_the_apis():
    field = ModelTrainingSpec.model_fields["concurrency_policy"]
    assert {policy.value for policy in modeltraining.ConcurrencyPolicy} == set(field.annotation.__args__)
    assert modeltraining.ConcurrencyPolicy(field.default) is modeltraining.ConcurrencyPolicy.FORBID


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
def test_without_an_active_run_both_policies_start_the_triggers(policy):
    triggers = modeltraining.pending_triggers(spec(), 2, {}, {}, CREATED, CREATED)
    for latest in (None, {**RUNNING, "state": "Succeeded"}, {**RUNNING, "state": "Failed"}):
        decision = modeltraining.concurrency_step(policy, triggers, latest, CREATED)
        assert decision.start == triggers and decision.replaced is None


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
def test_no_trigger_never_touches_the_active_run(policy):
    decision = modeltraining.concurrency_step(policy, [], RUNNING, CREATED)
    assert decision.start == [] and decision.replaced is None


@pytest.mark.parametrize("state", ["Pending", "Running"])
def test_forbid_keeps_triggers_pending_while_a_run_is_active(state):
    triggers = modeltraining.pending_triggers(spec(), 2, {}, {}, CREATED, CREATED)
    decision = modeltraining.concurrency_step(modeltraining.ConcurrencyPolicy.FORBID, triggers, {**RUNNING, "state": state},
                                              CREATED)
    assert decision.start == [] and decision.replaced is None
    # Nothing was marked handled, so the same trigger is still pending on the next pass.
    assert modeltraining.pending_triggers(spec(), 2, {}, {}, CREATED, CREATED) == triggers


def test_replace_cancels_the_active_run_and_starts_the_triggers():
    triggers = modeltraining.pending_triggers(spec(), 2, {}, {}, CREATED, CREATED)
    now = CREATED + timedelta(minutes=3)
    decision = modeltraining.concurrency_step("Replace", triggers, RUNNING, now)
    assert decision.start == triggers
    assert decision.replaced == {**RUNNING, "state": "Canceled", "reason": "Replaced",
                                 "message": f"replaced by a new run ({triggers[0].description})",
                                 "finished": "2026-11-23T10:03:30Z"}
    status = modeltraining.finished_status({"latestRun": RUNNING}, decision.replaced, 10, 2)
    assert status["latestRun"]["state"] == "Canceled" and status["latestRun"]["reason"] == "Replaced"


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        modeltraining.concurrency_step("Allow", [modeltraining.Trigger("spec", "g2", "spec generation 2")], RUNNING,
                                       CREATED)
