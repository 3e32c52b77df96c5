"""KFP components: the step implementations of the built-in ``tabular-training`` pipeline (pipelines/tabular.py).

Each KFP component body imports one ``run_*`` entry point from here and passes it plain values
and local artifact paths, so every step is an ordinary, testable function:
``extract.run_extract`` → ``validate_data.run_validate_data`` → ``split.run_split`` →
``train.run_train`` → ``evaluate.run_evaluate`` → ``gate.run_gate`` → ``export.run_export``.
Failures raise :mod:`mlops_operator.api.errors` classes whose messages start with their reason;
``errors.reported`` records them for the operator. This package sits above the backends (it writes
artifacts through them) and is named apart from a ModelDeployment's rollout steps.
"""
