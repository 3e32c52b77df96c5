"""handlers.common.SeenParts: a watch event's part of an object tells a change of that part apart."""

from mlops_operator.handlers.common import SeenParts


def test_only_a_change_after_the_first_sight_counts_and_deletion_forgets():
    seen = SeenParts()
    assert not seen.changed(("ns", "a"), None, {"x": 1})  # the listing at start-up records
    assert not seen.changed(("ns", "a"), "MODIFIED", {"x": 1})  # the same part: another field changed
    assert seen.changed(("ns", "a"), "MODIFIED", {"x": 2})
    assert not seen.changed(("ns", "b"), "ADDED", {"x": 1})  # first sight of a new object records
    assert not seen.changed(("ns", "a"), "DELETED", {"x": 3})
    assert not seen.changed(("ns", "a"), "ADDED", {"x": 4})  # forgotten: recorded afresh
