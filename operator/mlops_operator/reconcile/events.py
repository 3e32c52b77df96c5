"""What the pure reconcile logic asks the handlers to tell people: Kubernetes events to post."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post about the object being reconciled."""

    reason: str
    message: str
    warning: bool = False
    """A Warning event (something went wrong or needs attention); otherwise Normal."""
