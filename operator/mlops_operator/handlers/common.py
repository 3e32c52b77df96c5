"""Helpers shared by the kind handlers: settings, spec parsing, status patches."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

import kopf
import pydantic

from mlops_operator.reconcile.conditions import FALSE, initial_conditions, set_condition
from mlops_operator.settings import Settings

INVALID_SPEC = "InvalidSpec"

M = TypeVar("M", bound=pydantic.BaseModel)


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """A pydantic error as one readable line per problem, with the API field path."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"])
        lines.append(f"spec.{path}: {problem['msg']}")
    return "; ".join(lines)


def parse_spec(model: type[M], spec: Mapping[str, Any]) -> M:
    """Parse a spec into its model; raise InvalidSpec with a readable message."""
    try:
        return model.model_validate(dict(spec))
    except pydantic.ValidationError as error:
        raise InvalidSpec(describe_validation_error(error)) from None


class InvalidSpec(Exception):
    """The object passed admission but cannot be acted on; the message says why."""


def first_visit_status(status: Mapping[str, Any], types: tuple[str, ...], generation: int) -> dict[str, Any]:
    """Conditions for a first visit: every type present (Unknown/Reconciling), observedGeneration set."""
    conditions = initial_conditions(status.get("conditions"), types, generation=generation)
    return {"conditions": conditions, "observedGeneration": generation}


def invalid_status(
    status: Mapping[str, Any], summary_condition: str, message: str, generation: int, extra_false: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Status for an invalid spec: the summary condition (and any others) False/InvalidSpec."""
    conditions = status.get("conditions")
    for type_ in (summary_condition, *extra_false):
        conditions = set_condition(conditions, type_, FALSE, INVALID_SPEC, message, generation=generation)
    return {"conditions": conditions, "observedGeneration": generation, "phase": "Invalid"}


def apply_status(patch: kopf.Patch, current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Put into the patch only the status fields that change; True if anything does."""
    changed = False
    for key, value in desired.items():
        if current.get(key) != value:
            patch.status[key] = value
            changed = True
    return changed


def reject_invalid(
    patch: kopf.Patch,
    body: kopf.Body,
    status: Mapping[str, Any],
    summary_condition: str,
    message: str,
    extra_false: tuple[str, ...] = (),
) -> None:
    """Record an invalid spec (condition + warning event) and stop retrying this generation."""
    generation = body.metadata.get("generation") or 0
    if apply_status(patch, status, invalid_status(status, summary_condition, message, generation, extra_false)):
        kopf.warn(body, reason=INVALID_SPEC, message=message)
    raise kopf.PermanentError(f"{INVALID_SPEC}: {message}")
