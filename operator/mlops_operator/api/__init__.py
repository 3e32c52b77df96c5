"""The API of mlops-operator: pydantic models of each kind, the single source of truth for the CRDs.

Nothing here imports anything else of ours. ``crd.py`` turns the models into structural CRD schemas.

The models load on first use (PEP 562): a pipeline step that only needs ``api.errors`` does not
pay for building every kind's pydantic schema.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GROUP": "mlops_operator.api.common",
    "VERSION": "mlops_operator.api.common",
    "Condition": "mlops_operator.api.common",
    "ModelTraining": "mlops_operator.api.modeltraining",
    "ModelDeployment": "mlops_operator.api.modeldeployment",
    "DriftMonitor": "mlops_operator.api.driftmonitor",
}

__all__ = ["GROUP", "VERSION", "KINDS", "Condition", "ModelTraining", "ModelDeployment", "DriftMonitor"]


def __getattr__(name: str) -> Any:
    if name == "KINDS":
        value: Any = (__getattr__("ModelTraining"), __getattr__("ModelDeployment"), __getattr__("DriftMonitor"))
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
