"""How a pipeline step reports its failure to the operator.

A step raises a :class:`mlops_operator.api.errors.Failure` subclass (``DatasetUnavailable``,
``DataValidationFailed``, ``InvalidSpec``; re-exported here) whose message starts with its reason
(``DatasetUnavailable: ...``), so the reason is findable in any log, including a KFP pod's.
When the environment variable ``MLOPS_STEP_ERROR_FILE`` is set (the local backend sets it),
``reported`` also writes ``{"step", "reason", "message", "details"}`` there as JSON.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from mlops_operator.api.errors import STEP_REASONS as KNOWN_REASONS
from mlops_operator.api.errors import DatasetUnavailable, DataValidationFailed, Failure, InvalidSpec

STEP_ERROR_FILE_ENV = "MLOPS_STEP_ERROR_FILE"
STEP_FAILED = Failure.reason
# Longest message kept in the error file and status; the full text stays in the logs.
_MAX_MESSAGE = 3000

F = TypeVar("F", bound=Callable[..., Any])


def reported(step: str) -> Callable[[F], F]:
    """Decorate a step's entry point so a failure is also written to ``$MLOPS_STEP_ERROR_FILE``.

    Unexpected exceptions are recorded with reason ``PipelineFailed``; the exception is re-raised
    either way so the step (and the KFP task) fails.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Failure as err:
                write_step_error(step, err.reason, err.message, err.details)
                raise
            except Exception as err:
                write_step_error(step, STEP_FAILED, f"step {step} failed: {type(err).__name__}: {err}")
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def write_step_error(step: str, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
    """Write the failure record if ``$MLOPS_STEP_ERROR_FILE`` is set (atomically, by rename)."""
    target = os.environ.get(STEP_ERROR_FILE_ENV)
    if not target:
        return
    record = {"step": step, "reason": reason, "message": message[:_MAX_MESSAGE], "details": details or {}}
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, default=str, indent=2))
    tmp.replace(path)


__all__ = [
    "KNOWN_REASONS", "STEP_ERROR_FILE_ENV", "STEP_FAILED", "DataValidationFailed", "DatasetUnavailable",
    "Failure", "InvalidSpec", "reported", "write_step_error",
]
