"""kopf handlers for DriftMonitor."""

from __future__ import annotations

from typing import Any

import kopf

from mlops_operator.api.common import GROUP, VERSION
from mlops_operator.api.driftmonitor import DriftMonitorSpec
from mlops_operator.handlers.common import (
    InvalidSpec,
    forget,
    get_settings,
    is_invalid_generation,
    parse_spec,
    reconcile_object,
)
from mlops_operator.reconcile.validation import drift_spec_errors

KIND = "DriftMonitor"
PLURAL = "driftmonitors"
CONDITIONS = ("Ready", "DriftDetected")


async def reconcile_driftmonitor(obj: dict[str, Any]) -> dict[str, Any]:
    """One reconciliation; returns the desired status."""
    status = dict(obj["status"])
    spec = parse_spec(DriftMonitorSpec, obj.get("spec") or {})
    problems = drift_spec_errors(spec)
    if problems:
        raise InvalidSpec("; ".join(problems))
    if status.get("phase") in (None, "Invalid"):
        status["phase"] = "Pending"
    return status


async def _reconcile(namespace: str, name: str, from_change: bool) -> None:
    await reconcile_object(KIND, PLURAL, namespace, name, reconcile_driftmonitor, conditions=CONDITIONS,
                           summary_condition="Ready", from_change=from_change)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def on_change(namespace: str, name: str, **_: Any) -> None:
    """A new object, a changed spec or annotation, or an operator restart."""
    await _reconcile(namespace, name, from_change=True)


@kopf.timer(GROUP, VERSION, PLURAL, interval=get_settings().poll_interval_seconds, initial_delay=1)
async def observe(namespace: str, name: str, status: kopf.Status, body: kopf.Body, **_: Any) -> None:
    """Observe the world and bring the status up to date."""
    if is_invalid_generation(status, body.metadata.get("generation") or 0):
        return
    await _reconcile(namespace, name, from_change=False)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def on_delete(namespace: str, name: str, **_: Any) -> None:
    """Release the finalizer."""
    forget(PLURAL, namespace, name)
