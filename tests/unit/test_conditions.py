"""Condition helpers keep metav1.Condition semantics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.reconcile.conditions import (
    find_condition,
    initial_conditions,
    is_true,
    now_rfc3339,
    parse_rfc3339,
    set_condition,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_first_set_stamps_transition_and_generation():
    conditions = set_condition([], "Ready", "False", "Reconciling", "starting", generation=3, now=T0)
    assert conditions == [
        {"type": "Ready", "status": "False", "reason": "Reconciling", "message": "starting",
         "lastTransitionTime": "2026-01-01T12:00:00Z", "observedGeneration": 3}
    ]


def test_same_status_keeps_transition_time_but_updates_the_rest():
    first = set_condition([], "Ready", "False", "A", "a", generation=1, now=T0)
    second = set_condition(first, "Ready", "False", "B", "b", generation=2, now=T1)
    assert second[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert (second[0]["reason"], second[0]["message"], second[0]["observedGeneration"]) == ("B", "b", 2)


def test_flip_changes_transition_time():
    first = set_condition([], "Ready", "False", "A", now=T0)
    second = set_condition(first, "Ready", "True", "Serving", now=T1)
    assert second[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"
    assert is_true(second, "Ready")


def test_other_conditions_keep_order_and_are_not_mutated():
    base = initial_conditions([], ["Ready", "Progressing", "Degraded"], generation=1, now=T0)
    snapshot = [dict(c) for c in base]
    updated = set_condition(base, "Progressing", "True", "Rolling", now=T1)
    assert [c["type"] for c in updated] == ["Ready", "Progressing", "Degraded"]
    assert base == snapshot
    assert find_condition(updated, "Degraded") == snapshot[2]


def test_initial_conditions_only_adds_missing():
    existing = set_condition([], "Ready", "True", "Serving", now=T0)
    conditions = initial_conditions(existing, ["Ready", "DriftDetected"], generation=4, now=T1)
    assert find_condition(conditions, "Ready")["status"] == "True"
    drift = find_condition(conditions, "DriftDetected")
    assert (drift["status"], drift["reason"], drift["observedGeneration"]) == ("Unknown", "Reconciling", 4)


def test_rejects_bad_status():
    with pytest.raises(ValueError):
        set_condition([], "Ready", "Maybe", "X")


def test_timestamps_round_trip():
    assert parse_rfc3339(now_rfc3339(T0)) == T0
