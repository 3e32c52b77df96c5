"""KFP components: the step implementations of the built-in ``tabular-training`` pipeline (pipelines/tabular.py).

Every step is an ordinary, testable function taking plain values and local artifact paths:
``extract.run_extract_sources`` → ``validate_data.run_validate_sources`` → ``split.run_split_sources`` →
``train.run_train`` → ``evaluate.run_evaluate_against`` → ``gate.run_gate`` → ``export.run_export``.
The pipeline's two KFP components call ``stages.run_prepare_data`` (the first three) and
``stages.run_train_model`` (the last four): a task is a process, whose start and imports cost more
than the steps on small data.
Failures raise :mod:`mlops_operator.api.errors` classes whose messages start with their reason;
``errors.reported`` records them for the operator. This package sits above the backends (it writes
artifacts through them) and is named apart from a ModelDeployment's rollout steps.
"""
