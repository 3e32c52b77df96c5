"""kopf handlers for ModelDeployment."""

from __future__ import annotations

from typing import Any

import kopf

from mlops_operator.api.common import GROUP, VERSION
from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.handlers.common import (
    InvalidSpec,
    forget,
    get_settings,
    is_invalid_generation,
    parse_spec,
    reconcile_object,
)
from mlops_operator.reconcile.validation import deployment_spec_errors

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
CONDITIONS = ("Ready", "Progressing", "AwaitingApproval", "Degraded")


async def reconcile_modeldeployment(obj: dict[str, Any]) -> dict[str, Any]:
    """One reconciliation; returns the desired status."""
    status = dict(obj["status"])
    spec = parse_spec(ModelDeploymentSpec, obj.get("spec") or {})
    problems = deployment_spec_errors(spec)
    if problems:
        raise InvalidSpec("; ".join(problems))
    if status.get("phase") in (None, "Invalid"):
        status["phase"] = "Pending"
    return status


async def _reconcile(namespace: str, name: str, from_change: bool) -> None:
    await reconcile_object(KIND, PLURAL, namespace, name, reconcile_modeldeployment, conditions=CONDITIONS,
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
