"""Status writes are JSON merge patches (handlers/common.changed_fields): what they keep and what they remove."""

from mlops_operator.handlers.common import changed_fields

FIRST_RUN = {"name": "iris-g1", "state": "Succeeded", "modelVersion": 1, "metrics": {"accuracy": 0.92},
             "sources": [{"name": "base", "rows": 150}], "comparison": {"holdout": "dataset"}}


def apply_merge_patch(target, patch):
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def test_a_new_run_record_does_not_inherit_the_previous_runs_fields():
    live = {"phase": "Succeeded", "latestRun": FIRST_RUN, "history": [FIRST_RUN]}
    second = {"name": "iris-r1", "state": "Pending", "trigger": "retrain requested"}
    desired = {"phase": "Running", "latestRun": second, "history": [second, FIRST_RUN]}
    patch = changed_fields(live, desired)
    assert apply_merge_patch(live, patch) == desired
    assert patch["latestRun"]["metrics"] is None and patch["latestRun"]["modelVersion"] is None


def test_unchanged_fields_and_keys_are_left_out():
    live = {"phase": "Ready", "lastAnalysis": {"passed": True, "requests": 10, "message": "ok"}, "endpoint": "http://x"}
    desired = {"phase": "Ready", "lastAnalysis": {"passed": True, "requests": 20}, "endpoint": "http://x"}
    assert changed_fields(live, desired) == {"lastAnalysis": {"requests": 20, "message": None}}
    assert changed_fields(live, live) == {}


def test_fields_the_desired_status_does_not_name_are_kept():
    live = {"phase": "Ready", "conditions": [{"type": "Ready"}], "cost": {"monthly": 3}}
    patch = changed_fields(live, {"phase": "Degraded"})
    assert patch == {"phase": "Degraded"}
    assert apply_merge_patch(live, patch)["cost"] == {"monthly": 3}


def test_nested_objects_and_type_changes():
    live = {"rollout": {"phase": "Canary", "step": 1, "analysis": {"p99": 10, "errors": 0}}, "lastRollout": None}
    desired = {"rollout": {"phase": "Canary", "step": 2, "analysis": {"p99": 12}},
               "lastRollout": {"result": "promoted"}}
    patch = changed_fields(live, desired)
    assert patch == {"rollout": {"step": 2, "analysis": {"p99": 12, "errors": None}},
                     "lastRollout": {"result": "promoted"}}
    assert apply_merge_patch(live, patch) == desired
    assert changed_fields({"rollout": {"step": 1}}, {"rollout": None}) == {"rollout": None}
