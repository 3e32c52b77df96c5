"""kopf handlers for DriftMonitor."""

from __future__ import annotations

from typing import Any

import kopf

from mlops_operator.api.common import GROUP, VERSION
from mlops_operator.api.driftmonitor import DriftMonitorSpec
from mlops_operator.handlers.common import (
    InvalidSpec,
    apply_status,
    first_visit_status,
    parse_spec,
    reject_invalid,
)
from mlops_operator.metrics import reconcile_timer
from mlops_operator.reconcile.validation import drift_spec_errors

KIND = "DriftMonitor"
PLURAL = "driftmonitors"
CONDITIONS = ("Ready","DriftDetected",)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
    """Validate the spec and bring the status up to date."""
    with reconcile_timer(KIND):
        generation = body.metadata.get("generation") or 0
        current = dict(status)
        desired = first_visit_status(current, CONDITIONS, generation)
        try:
            parsed = parse_spec(DriftMonitorSpec, spec)
            problems = drift_spec_errors(parsed)
            if problems:
                raise InvalidSpec("; ".join(problems))
        except InvalidSpec as error:
            reject_invalid(patch, body, {**current, **desired}, "Ready", str(error))
        apply_status(patch, current, desired)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def release(**_: Any) -> None:
    """Nothing to clean up yet; the finalizer is released when this returns."""
