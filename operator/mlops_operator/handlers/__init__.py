"""kopf handlers: register each kind with kopf, call the pure reconcile code and the backends, patch status.

Importing this package registers every handler with kopf.
"""

from mlops_operator.handlers import driftmonitor, modeldeployment, modeltraining, operator  # noqa: F401
