"""Notifications, pure: which events become messages, one message per incident, and the payloads.

The operator's events are the source: an event whose reason is in :data:`NOTIFIED` becomes a
:class:`Notice` about an *incident* (the rollout of a version, an anomaly of a metric, a drift
episode, a failed training run). A notice is sent when its incident starts (firing) and when it
ends (resolved), never again for the same state, however often the check that found it repeats.
Notices of one object that are due together go out as one message. A token bucket per webhook
bounds the message rate.

Payload formats: ``slack`` (Slack incoming-webhook ``text`` + ``blocks``), ``alertmanager``
(Alertmanager's webhook payload, version 4, so anything that accepts Alertmanager receivers takes
it), ``cloudevents`` (CloudEvents 1.0, structured JSON mode, a batch as a JSON array).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Format = Literal["slack", "alertmanager", "cloudevents"]
FORMATS: tuple[Format, ...] = ("slack", "alertmanager", "cloudevents")
Status = Literal["firing", "resolved"]

# Event reason -> (notice kind, incident status it reports).
NOTIFIED: Mapping[str, tuple[str, Status]] = {
    "AwaitingApproval": ("ApprovalAwaited", "firing"),
    "Approved": ("ApprovalAwaited", "resolved"),
    # An aborted rollout and a rollback of a promoted version are one kind of incident: a version
    # that was rejected (the incident names it), however many events tell the story.
    "RolloutAborted": ("RolloutFailed", "firing"),
    "RolledBack": ("RolloutFailed", "firing"),
    "RollbackAwaitingApproval": ("ApprovalAwaited", "firing"),
    "DriftDetected": ("DriftDetected", "firing"),
    "PerformanceDegraded": ("DriftDetected", "firing"),
    "NoDrift": ("DriftDetected", "resolved"),
    "AnomalyOpened": ("Anomaly", "firing"),
    "AnomalyClosed": ("Anomaly", "resolved"),
    "RunFailed": ("RetrainFailed", "firing"),
    "ValidationFailed": ("RetrainFailed", "firing"),
}

# Kinds whose incident is the object's current episode (firing until resolved), not one event.
EPISODES = ("DriftDetected",)
MAX_REMEMBERED = 2000


@dataclass(frozen=True)
class Notice:
    """One thing worth telling someone, about one incident of one object."""

    kind: str
    status: Status
    object_kind: str
    namespace: str
    name: str
    reason: str
    message: str
    at: datetime
    incident: str = ""
    """What the incident is within the object (a version, a metric); notices with the same incident
    and status are one message."""
    warning: bool = True

    @property
    def key(self) -> str:
        return f"{self.object_kind}/{self.namespace}/{self.name}/{self.kind}/{self.incident}"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]


def notice_for_event(object_kind: str, namespace: str, name: str, reason: str, message: str, at: datetime,
                     incident: str = "", warning: bool = True) -> Notice | None:
    """The notice an event makes, or None when the event is not notified."""
    found = NOTIFIED.get(reason)
    if found is None:
        return None
    kind, status = found
    if not incident and kind not in EPISODES:
        # Without a named incident, the event's message is what tells one incident from another
        # (its version, its run); a check that repeats posts the same message.
        incident = hashlib.sha256(message.encode()).hexdigest()[:12]
    return Notice(kind, status, object_kind, namespace, name, reason, message, at, incident, warning)


@dataclass
class Deduplicator:
    """Remembers the last status sent per incident (bounded), so a repeated check sends nothing."""

    sent: OrderedDict[str, Status] = field(default_factory=OrderedDict)
    limit: int = MAX_REMEMBERED

    def admit(self, notice: Notice) -> bool:
        """Whether ``notice`` says something new (and remember that it was said)."""
        if self.sent.get(notice.key) == notice.status:
            return False
        if notice.status == "resolved" and notice.key not in self.sent:
            return False  # nothing was announced, so nothing to resolve
        self.sent[notice.key] = notice.status
        self.sent.move_to_end(notice.key)
        while len(self.sent) > self.limit:
            self.sent.popitem(last=False)
        return True


@dataclass
class TokenBucket:
    """At most ``burst`` messages at once, refilled at ``per_minute`` a minute."""

    burst: float = 5
    per_minute: float = 10
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> float:
        """0 when a message may go now (and it is counted), else the seconds until one may."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_minute / 60)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * 60 / self.per_minute


def group(notices: Sequence[Notice]) -> list[list[Notice]]:
    """Notices grouped by object, each group in arrival order (one message per group)."""
    groups: dict[tuple[str, str, str], list[Notice]] = {}
    for notice in notices:
        groups.setdefault((notice.object_kind, notice.namespace, notice.name), []).append(notice)
    return list(groups.values())


# ---------------------------------------------------------------- payloads


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _title(notice: Notice) -> str:
    state = "resolved" if notice.status == "resolved" else notice.kind
    return f"{notice.object_kind} {notice.namespace}/{notice.name}: {state}"


def slack_payload(notices: Sequence[Notice]) -> dict[str, Any]:
    """A Slack incoming-webhook message (also accepted by Mattermost and Rocket.Chat)."""
    first = notices[0]
    lines = [f"{'✅' if n.status == 'resolved' else '⚠️' if n.warning else 'ℹ️'} *{n.kind}* "
             f"({n.status}, {n.reason}): {n.message}" for n in notices]
    text = f"{first.object_kind} {first.namespace}/{first.name}\n" + "\n".join(lines)
    return {"text": text, "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": f"{first.object_kind} {first.namespace}/{first.name}"[:150]}},
        *({"type": "section", "text": {"type": "mrkdwn", "text": line[:3000]}} for line in lines)]}


def alertmanager_payload(notices: Sequence[Notice], receiver: str = "mlops-operator") -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4), one alert per notice."""
    first = notices[0]
    common = {"namespace": first.namespace, "name": first.name, "kind": first.object_kind}
    alerts = []
    for notice in notices:
        labels = {**common, "alertname": f"Mlops{notice.kind}", "reason": notice.reason,
                  "severity": "warning" if notice.warning else "info"}
        if notice.incident:
            labels["incident"] = notice.incident
        alerts.append({
            "status": notice.status, "labels": labels,
            "annotations": {"summary": _title(notice), "description": notice.message},
            "startsAt": _time(notice.at),
            "endsAt": _time(notice.at) if notice.status == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": notice.fingerprint})
    status = "firing" if any(n.status == "firing" for n in notices) else "resolved"
    return {"version": "4", "groupKey": f"{{}}:{{namespace=\"{first.namespace}\", name=\"{first.name}\"}}",
            "truncatedAlerts": 0, "status": status, "receiver": receiver, "groupLabels": common,
            "commonLabels": common, "commonAnnotations": {}, "externalURL": "", "alerts": alerts}


def cloudevents_payload(notices: Sequence[Notice]) -> list[dict[str, Any]]:
    """CloudEvents 1.0 in structured JSON mode, a batch (``application/cloudevents-batch+json``)."""
    return [{
        "specversion": "1.0",
        "id": hashlib.sha256(f"{n.key}/{n.status}/{_time(n.at)}".encode()).hexdigest()[:32],
        "source": f"/apis/mlops.dev/v1alpha1/namespaces/{n.namespace}/{n.object_kind.lower()}s/{n.name}",
        "type": f"dev.mlops.{n.kind[0].lower()}{n.kind[1:]}.{n.status}",
        "subject": n.incident or n.name, "time": _time(n.at), "datacontenttype": "application/json",
        "data": {"kind": n.kind, "status": n.status, "reason": n.reason, "message": n.message,
                 "object": {"kind": n.object_kind, "namespace": n.namespace, "name": n.name}},
    } for n in notices]


CONTENT_TYPES: Mapping[Format, str] = {"slack": "application/json", "alertmanager": "application/json",
                                       "cloudevents": "application/cloudevents-batch+json"}


def payload(format_: Format, notices: Sequence[Notice]) -> Any:
    """The message body for ``notices`` (one group) in ``format_``."""
    if format_ == "slack":
        return slack_payload(notices)
    if format_ == "alertmanager":
        return alertmanager_payload(notices)
    return cloudevents_payload(notices)
