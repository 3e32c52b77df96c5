"""kopf handlers: thin wrappers that parse the body, call pure code and backends, and patch status.

Importing this package registers every handler with kopf.
"""

from mlops_operator.handlers import driftmonitor, modeldeployment, modeltraining, operator  # noqa: F401
