"""spec.training judged in a helper process (backends/estimator_check.py): the same judgement as in
process, remembered per training, and the asking process never imports scikit-learn."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.backends import estimator_check

OPERATOR = Path(__file__).resolve().parents[2] / "operator"


def training(**spec_training) -> ModelTrainingSpec:
    return ModelTrainingSpec.model_validate({"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"},
                                             "training": spec_training})


def test_the_helper_judges_as_the_operator_would_and_each_training_is_asked_once():
    checker = estimator_check.EstimatorChecker()
    try:
        specs = [training(estimator="RandomForestClassifier", parameters={"n_estimators": 5}),
                 training(estimator="RandomForestClasifier"),
                 training(estimator="RandomForestClassifier", parameters={"n_estimators": "many"}),
                 training(estimator="RandomForestRegressor")]
        for spec in specs:
            assert checker.known(spec) is None
            assert checker.check(spec) == estimator_check.judge(spec), spec.training
            assert checker.known(spec) == estimator_check.judge(spec)
        first = checker.helper_pid()
        assert first is not None and first != os.getpid()
        assert checker.check(specs[3]).task == "regression"
        assert "did you mean RandomForestClassifier" in checker.check(specs[1]).problems[0]

        # Remembered: a helper that is gone is not needed for a training already judged ...
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while checker.helper_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checker.check(training(estimator="RandomForestClassifier", parameters={"n_estimators": 5})).problems == ()
        assert checker.helper_pid() is None
        # ... and a new training starts a new helper.
        assert checker.check(training(estimator="LogisticRegression", parameters={"C": -1})).problems
        assert checker.helper_pid() not in (None, first)
    finally:
        checker.stop()
    assert checker.helper_pid() is None


def test_concurrent_reconciliations_of_one_training_ask_once():
    checker = estimator_check.EstimatorChecker()
    asked = []
    check = checker.check
    checker.check = lambda spec: asked.append(spec) or check(spec)  # counts the questions that reach a thread

    async def main():
        specs = [training(estimator="RandomForestClassifier", parameters={"n_estimators": n % 2 + 1}) for n in range(20)]
        return await asyncio.gather(*(checker.judged(spec) for spec in specs))

    try:
        judgements = asyncio.run(main())
    finally:
        checker.stop()
    assert len(asked) == 2 and all(j == estimator_check.Judgement("classification", ()) for j in judgements)


def test_the_asking_process_does_not_import_scikit_learn():
    script = textwrap.dedent("""
        import sys
        from mlops_operator.api.modeltraining import ModelTrainingSpec
        from mlops_operator.backends import estimator_check
        import mlops_operator.handlers  # every kind's handlers, as the operator imports them
        checker = estimator_check.EstimatorChecker()
        spec = ModelTrainingSpec.model_validate({"model": "m", "dataset": {"uri": "sklearn://iris", "target": "t"},
                                                 "training": {"estimator": "GradientBoostingClassifier"}})
        print(checker.check(spec).task, sorted(m for m in ("sklearn", "scipy", "pandas", "kfp") if m in sys.modules))
        checker.stop()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(OPERATOR)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "classification []", out.stdout


def test_the_helper_exits_when_its_stdin_closes():
    helper = subprocess.Popen([sys.executable, "-m", "mlops_operator.backends.estimator_check"], stdin=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(OPERATOR)})
    helper.stdin.close()
    assert helper.wait(timeout=60) == 0
