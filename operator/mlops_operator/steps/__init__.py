"""Step implementations of the built-in ``tabular-training`` pipeline (pipelines/tabular.py).

Each KFP component body imports one ``run_*`` entry point from here and passes it plain values
and local artifact paths, so every step is an ordinary, testable function:
``extract.run_extract`` → ``validate_data.run_validate_data`` → ``split.run_split`` →
``train.run_train`` → ``evaluate.run_evaluate`` → ``gate.run_gate`` → ``export.run_export``.
Failures raise ``errors.StepError`` subclasses whose messages start with their reason.
"""
