"""The leader election's decision (reconcile/leadership.py): who may hold the Lease, on whose clock."""

from mlops_operator.reconcile.leadership import Action, LeaseRecord, Observation, decide, observe

ME, OTHER = "pod-a-1", "pod-b-1"


def held_by(holder, renew="2026-11-29T17:00:00.000000Z", duration=15, transitions=0):
    return LeaseRecord(holder=holder, renew_time=renew, lease_duration_seconds=duration, transitions=transitions)


def test_no_lease_is_created_and_our_own_is_renewed():
    assert decide(None, None, ME, now=0.0, default_duration=15) is Action.CREATE
    mine = held_by(ME)
    assert decide(mine, observe(None, mine, 0.0), ME, now=100.0, default_duration=15) is Action.RENEW


def test_a_released_lease_is_taken_at_once():
    released = held_by(None)
    assert decide(released, observe(None, released, 0.0), ME, now=0.0, default_duration=15) is Action.TAKE


def test_a_live_holder_is_waited_for_until_its_record_is_unchanged_for_the_lease_duration():
    record = held_by(OTHER)
    seen = observe(None, record, now=10.0)
    assert decide(record, seen, ME, now=10.0, default_duration=15) is Action.WAIT
    assert decide(record, observe(seen, record, 24.9), ME, now=24.9, default_duration=15) is Action.WAIT
    assert observe(seen, record, 24.9) is seen  # unchanged: the lease keeps ageing from the first sighting
    assert decide(record, observe(seen, record, 25.0), ME, now=25.0, default_duration=15) is Action.TAKE


def test_a_renewal_restarts_the_clock_whatever_the_timestamps_say():
    """Only change matters, measured on the candidate's monotonic clock: a holder whose clock runs
    behind (an older renewTime) still keeps its lease while it renews."""
    first = observe(None, held_by(OTHER, renew="2026-11-29T17:00:10.000000Z"), now=0.0)
    renewed = held_by(OTHER, renew="2026-11-29T16:00:00.000000Z")
    again = observe(first, renewed, now=14.0)
    assert again.seen_at == 14.0
    assert decide(renewed, again, ME, now=28.0, default_duration=15) is Action.WAIT
    assert decide(renewed, again, ME, now=29.0, default_duration=15) is Action.TAKE


def test_the_holders_own_duration_counts_and_a_missing_one_falls_back_to_ours():
    short = held_by(OTHER, duration=5)
    seen = Observation(short, 0.0)
    assert decide(short, seen, ME, now=5.0, default_duration=60) is Action.TAKE
    unknown = held_by(OTHER, duration=None)
    assert decide(unknown, Observation(unknown, 0.0), ME, now=59.0, default_duration=60) is Action.WAIT


def test_a_record_never_observed_is_not_taken():
    record = held_by(OTHER)
    assert decide(record, None, ME, now=1e9, default_duration=15) is Action.WAIT
    assert decide(record, Observation(held_by(OTHER, renew="other"), 0.0), ME, now=1e9, default_duration=15) is Action.WAIT
