"""metav1.Condition helpers: set a condition without losing its transition time.

A condition's ``lastTransitionTime`` changes only when its status flips; reason, message and
``observedGeneration`` are refreshed on every write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mlops_operator.api.common import Condition

UNKNOWN, TRUE, FALSE = "Unknown", "True", "False"
RECONCILING = "Reconciling"


def now_rfc3339(now: datetime | None = None) -> str:
    """A timestamp as Kubernetes writes it: RFC 3339, UTC, whole seconds, ``Z`` suffix."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime:
    """Parse a Kubernetes timestamp."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def find_condition(conditions: Iterable[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of this type, if present."""
    return next((c for c in conditions or () if c.get("type") == type_), None)


def is_true(conditions: Iterable[dict[str, Any]] | None, type_: str) -> bool:
    """Whether the condition of this type is present with status True."""
    condition = find_condition(conditions, type_)
    return condition is not None and condition.get("status") == TRUE


def set_condition(
    conditions: Sequence[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Return a new condition list with ``type_`` set; the others are kept in their order."""
    if status not in (TRUE, FALSE, UNKNOWN):
        raise ValueError(f"condition status must be True, False or Unknown, not {status!r}")
    existing = find_condition(conditions, type_)
    transition = (
        existing["lastTransitionTime"]
        if existing and existing.get("status") == status and existing.get("lastTransitionTime")
        else now_rfc3339(now)
    )
    updated = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    result = [dict(c) for c in conditions or () if c.get("type") != type_]
    position = next((i for i, c in enumerate(conditions or ()) if c.get("type") == type_), len(result))
    result.insert(position, updated)
    return result


def initial_conditions(
    conditions: Sequence[dict[str, Any]] | None,
    types: Iterable[str],
    *,
    generation: int | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Add every missing condition type as Unknown/Reconciling (a first visit); keep present ones."""
    result = list(conditions or ())
    for type_ in types:
        if find_condition(result, type_) is None:
            result = set_condition(result, type_, UNKNOWN, RECONCILING, "The operator is reconciling this object.",
                                   generation=generation, now=now)
    return result


def typed(conditions: Iterable[Mapping[str, Any]]) -> list[Condition]:
    """Conditions as the status models hold them."""
    return [Condition.model_validate(c) for c in conditions]


def plain(conditions: Iterable[Any]) -> list[dict[str, Any]]:
    """Conditions (or other status entries) as the API represents them (what :func:`set_condition` takes)."""
    return [c.to_api() for c in conditions]
