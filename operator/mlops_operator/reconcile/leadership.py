"""Who may lead: the decision of a Lease-based leader election, pure (no clock, no API).

The election follows client-go's ``leaderelection`` package (the one every controller-runtime
operator uses): candidates share one ``coordination.k8s.io/v1`` Lease; the holder renews it every
``retry_period``; a candidate takes it over only when the holder released it (empty holder) or when
the record has not changed for ``lease_duration`` seconds *as measured on the candidate's own
monotonic clock since it last saw a change* (so clock skew between nodes never shortens a lease).
Writes are guarded by the Lease's resourceVersion: of two candidates taking over at once, one wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(str, enum.Enum):
    """What a candidate does after looking at the Lease."""

    CREATE = "create"
    """No Lease exists: create it holding it."""
    RENEW = "renew"
    """We hold it: write a new renew time."""
    TAKE = "take"
    """Released, or its holder stopped renewing: write ourselves as holder (a leader transition)."""
    WAIT = "wait"
    """Someone else holds a live lease: stay on standby."""


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease's spec the election reads."""

    holder: str | None
    renew_time: str | None
    """As the server returned it; compared for change only, never as a clock reading."""
    lease_duration_seconds: int | None
    transitions: int = 0


@dataclass(frozen=True)
class Observation:
    """The last record a candidate saw and when it first saw it, on its monotonic clock."""

    record: LeaseRecord
    seen_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """Remember ``record``: keep the earlier time when nothing changed (the lease is ageing)."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(record: LeaseRecord | None, observed: Observation | None, identity: str, now: float,
           default_duration: float) -> Action:
    """What ``identity`` does with the Lease ``record`` (None: no Lease) at monotonic time ``now``."""
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE
    duration = record.lease_duration_seconds or default_duration
    if observed is None or observed.record != record or now - observed.seen_at < duration:
        return Action.WAIT
    return Action.TAKE
