"""The API of mlops-operator: pydantic models of each kind, the single source of truth for the CRDs.

Nothing here imports anything else of ours. ``crd.py`` turns the models into structural CRD schemas.
"""

from mlops_operator.api.common import GROUP, VERSION, Condition
from mlops_operator.api.driftmonitor import DriftMonitor
from mlops_operator.api.modeldeployment import ModelDeployment
from mlops_operator.api.modeltraining import ModelTraining

KINDS = (ModelTraining, ModelDeployment, DriftMonitor)

__all__ = ["GROUP", "VERSION", "KINDS", "Condition", "ModelTraining", "ModelDeployment", "DriftMonitor"]
