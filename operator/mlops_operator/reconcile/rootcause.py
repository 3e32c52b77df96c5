"""Root-cause hints, pure: correlate what the operator knows around an incident into hypotheses.

An *incident* is an anomaly that opened, a drift verdict, or a rollout that failed. The *facts* are
what the operator recorded anyway: version changes, drifted features, request volume before and
now, client (4xx) versus server (5xx) errors, model server restarts, and which backends (KFP,
Seldon, Prometheus, object storage) did not answer. Each hint names a likely cause, a score for
ranking, and the evidence it rests on, with times relative to the incident, so a person can check
it. The best hint goes into the condition message and an event; all of them into status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

IncidentKind = Literal["anomaly", "drift", "rollout"]

# How long before an incident a change still counts as "just before".
RECENT_SECONDS = 1800.0


@dataclass(frozen=True)
class Incident:
    """What happened and when (unix seconds)."""

    kind: IncidentKind
    at: float
    metric: str | None = None
    """For an anomaly: errorRate, latencyP99Ms, requestRate, ..."""
    version: str | None = None
    """The served version it concerns, when known."""


@dataclass(frozen=True)
class VersionChange:
    """A version started serving (promoted, rolled back, canary started)."""

    at: float
    version: str
    previous: str | None
    how: str
    """promoted, rolledback, canary, shadow."""


@dataclass(frozen=True)
class FeatureDrift:
    """A drifted feature from a DriftMonitor check."""

    at: float
    feature: str
    test: str
    score: float
    threshold: float


@dataclass(frozen=True)
class Restart:
    """A model server restarted (process exit, container restart)."""

    at: float
    version: str | None
    reason: str


@dataclass(frozen=True)
class Traffic:
    """Request rate in the incident window against its usual level."""

    before: float
    now: float


@dataclass(frozen=True)
class Errors:
    """Errors in the incident window."""

    requests: int
    client_errors: int
    server_errors: int


@dataclass(frozen=True)
class Facts:
    """Everything the operator knows around an incident."""

    version_changes: Sequence[VersionChange] = ()
    drift: Sequence[FeatureDrift] = ()
    traffic: Traffic | None = None
    errors: Errors | None = None
    restarts: Sequence[Restart] = ()
    unreachable: Mapping[str, str] = field(default_factory=dict)
    """Backend (KFP, Seldon, Prometheus, object storage) -> the error it gave."""


@dataclass(frozen=True)
class Hint:
    """One hypothesis and its evidence."""

    cause: str
    score: float
    evidence: tuple[str, ...]

    def message(self) -> str:
        return f"{self.cause} (evidence: {'; '.join(self.evidence)})"


def _ago(incident: Incident, at: float) -> str:
    delta = incident.at - at
    if abs(delta) < 1:
        return "at the same time"
    minutes = abs(delta) / 60
    amount = f"{abs(delta):.0f}s" if abs(delta) < 120 else f"{minutes:.0f} min"
    return f"{amount} before" if delta > 0 else f"{amount} after"


def root_cause_hints(incident: Incident, facts: Facts, recent: float = RECENT_SECONDS) -> list[Hint]:
    """Hypotheses for ``incident``, most likely first (empty: nothing the operator knows explains it)."""
    hints: list[Hint] = []

    # A dependency that does not answer explains most things, and is the cheapest to check.
    for backend, error in sorted(facts.unreachable.items()):
        hints.append(Hint(f"{backend} is unreachable", 0.95, (f"{backend}: {error}",)))

    # A version that started serving just before: the usual suspect.
    changes = [c for c in facts.version_changes if 0 <= incident.at - c.at <= recent]
    if changes:
        change = max(changes, key=lambda c: c.at)
        # The nearer in time, the likelier; the incident being on that very version settles it.
        closeness = 1 - (incident.at - change.at) / recent
        same = incident.version is not None and incident.version == change.version
        previous = f" (previously {change.previous})" if change.previous else ""
        evidence = [f"version {change.version} started serving ({change.how}) {_ago(incident, change.at)} the "
                    f"{incident.kind}{previous}"]
        if same:
            evidence.append(f"the {incident.kind} is on version {change.version}")
        hints.append(Hint(f"version {change.version} changed just before", 0.6 + 0.2 * closeness + (0.15 if same else 0),
                          tuple(evidence)))

    # A model server that restarted around the incident.
    restarts = [r for r in facts.restarts if -60 <= incident.at - r.at <= recent]
    if restarts:
        latest = max(restarts, key=lambda r: r.at)
        which = f"version {latest.version}'s" if latest.version else "a"
        evidence = [f"{which} model server restarted {_ago(incident, latest.at)} the {incident.kind}: {latest.reason}"]
        if len(restarts) > 1:
            evidence.append(f"{len(restarts)} restarts in the last {recent / 60:.0f} min")
        hints.append(Hint("a model server restarted", 0.7 + min(0.2, 0.05 * (len(restarts) - 1)), tuple(evidence)))

    # Errors that are the clients' (4xx): malformed or out-of-contract requests, not the model server.
    errors = facts.errors
    if errors and errors.requests and errors.client_errors > max(errors.server_errors, 0) \
            and errors.client_errors / errors.requests >= 0.05:
        hints.append(Hint("errors are client-side (4xx): the requests changed, not the server", 0.65, (
            f"{errors.client_errors} of {errors.requests} requests were rejected as client errors against "
            f"{errors.server_errors} server errors",)))

    # Input drift at the same time.
    drifted = [d for d in facts.drift if abs(incident.at - d.at) <= recent]
    if drifted and incident.kind != "drift":
        worst = sorted(drifted, key=lambda d: d.score / d.threshold if d.threshold else d.score, reverse=True)
        evidence = tuple(f"feature {d.feature} drifted ({d.test} {d.score:.3g} > {d.threshold:g}) "
                         f"{_ago(incident, d.at)} the {incident.kind}" for d in worst[:3])
        hints.append(Hint(f"the input changed: {len(drifted)} feature(s) drifted at the same time", 0.55, evidence))

    # Traffic volume changed.
    traffic = facts.traffic
    if traffic and traffic.before > 0:
        ratio = traffic.now / traffic.before
        if ratio >= 2 or ratio <= 0.5:
            direction = "rose" if ratio > 1 else "fell"
            score = 0.5 if incident.metric != "requestRate" else 0.3
            if direction == "rose" and incident.metric in ("latencyP50Ms", "latencyP99Ms", "errorRate"):
                score = 0.75  # load explains slowness and overload errors well
            hints.append(Hint(f"traffic volume {direction} ({ratio:.1f}x)", score, (
                f"{traffic.now:.3g} req/s now against {traffic.before:.3g} req/s before",)))

    return sorted(hints, key=lambda h: h.score, reverse=True)


def summarise(hints: Sequence[Hint], limit: int = 2) -> str:
    """The condition-message sentence: the best hypothesis and its evidence, then the runner-up."""
    if not hints:
        return "Likely cause: nothing the operator observed explains it (no version change, restart, drift, " \
               "traffic change or unreachable backend around it)."
    first, *rest = hints[:limit]
    text = f"Likely cause: {first.message()}."
    if rest:
        text += " Also possible: " + "; ".join(h.cause for h in rest) + "."
    return text
