"""Annotation names: how people (and the DriftMonitor) ask the operator for something without editing a spec.

``kubectl mlops`` writes them, the reconcile logic reads them.
"""

APPROVE_ANNOTATION = "mlops.dev/approve"
"""On a ModelDeployment: the candidate version a person approves (manual promotion gate)."""

ROLLBACK_ANNOTATION = "mlops.dev/rollback"
"""On a ModelDeployment: the version to roll back from (the rollout in flight returns to the previous stable)."""

RETRAIN_ANNOTATION = "mlops.dev/retrain-requested"
"""On a ModelTraining: ``<time> <reason>``; a new value starts one run (written by a person or a DriftMonitor)."""

SPEC_HASH_ANNOTATION = "mlops.dev/spec-hash"
"""On an owned SeldonDeployment: the digest of the spec we wrote, so an unchanged spec is not rewritten."""

RETRAIN_WINDOW_ANNOTATION = "mlops.dev/retrain-window"
"""On a ModelTraining, beside ``retrain-requested``: the DriftMonitor's window (JSON) the retrain learns from."""

NOTIFICATIONS_SECRET_ANNOTATION = "mlops.dev/notifications-secret"
"""On an object or namespace: the Secret naming where notifications about it go."""

REPORT_ANNOTATION = "mlops.dev/report-requested"
"""On a DriftMonitor: any new value (``kubectl mlops report`` writes the time) asks for a check and its
HTML drift report now; status.report.request says which value the report answered."""

REQUEST_ANNOTATIONS = (APPROVE_ANNOTATION, ROLLBACK_ANNOTATION, RETRAIN_ANNOTATION, RETRAIN_WINDOW_ANNOTATION,
                       NOTIFICATIONS_SECRET_ANNOTATION, REPORT_ANNOTATION)
"""The annotations that ask an object for something: a new value wakes it at once. kopf's own change
detection does not see them (it ignores every annotation under the prefix of its own, ``mlops.dev/``)."""
