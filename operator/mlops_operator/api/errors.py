"""The failures the operator reports by reason: one class per reason, raised wherever it is found.

Each carries the stable CamelCase ``reason`` that ends up in a condition or run record. ``str(err)``
is ``"<reason>: <message>"`` so the reason is findable in any log (a KFP pod's included); status and
events use ``err.message``.
"""

from __future__ import annotations

from typing import Any


class Failure(Exception):
    """A failure with a stable reason; ``message`` is what a person reads, ``details`` extra data."""

    reason = "PipelineFailed"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{self.reason}: {message}")
        self.message = message
        self.details = details or {}


class InvalidSpec(Failure):
    """The object passed admission but cannot be acted on: unknown estimator or parameter, bad
    format, a referenced Secret or ConfigMap that does not fit, ...; the message says why."""

    reason = "InvalidSpec"


class DatasetUnavailable(Failure):
    """The dataset could not be found, fetched or parsed."""

    reason = "DatasetUnavailable"


class DataValidationFailed(Failure):
    """The dataset failed one or more data checks."""

    reason = "DataValidationFailed"


class BackendUnavailable(Failure):
    """A backend cannot serve the request now (KFP API unreachable or refusing credentials, Seldon
    Core not installed); retrying later may succeed."""

    reason = "BackendUnavailable"


STEP_REASONS = (DatasetUnavailable.reason, DataValidationFailed.reason, InvalidSpec.reason)
"""Reasons a pipeline step states at the start of its error message."""
