"""spec.training judged by the installed estimator libraries, in a helper process.

Judging an estimator and its parameters (``reconcile.validation.estimator_problems`` with
``backends.estimators``) imports scikit-learn, and with it scipy and pandas: about 180 MiB and seconds
of CPU. The controller process does not import them: it asks one helper process
(``python -m mlops_operator.backends.estimator_check``), started on the first question, which imports
them once, answers each question (a spec as one JSON line) with one JSON line and exits after
``IDLE_EXIT_SECONDS`` without a question (or when the operator closes its stdin). The operator
remembers each answer by the spec's ``training`` and whether the pipeline is the built-in one, so a
thousand ModelTrainings with the same training ask once, and an unchanged spec is never asked again.

When the helper cannot start or answer, the judgement is made in the operator's own process (the
same answer, at the memory cost this module avoids), with a warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from mlops_operator.api.modeltraining import ModelTrainingSpec

log = logging.getLogger(__name__)

# The helper exits after this long without a question (the next one starts it again).
IDLE_EXIT_SECONDS = 300.0
# How long the first answer may take (the helper's start and imports, on a busy machine), and later ones.
FIRST_ANSWER_SECONDS = 120.0
ANSWER_SECONDS = 30.0
# Answers remembered (distinct trainings), least recently used dropped first.
REMEMBERED = 512


@dataclass(frozen=True)
class Judgement:
    """What the installed libraries say about spec.training."""

    task: str | None
    """The estimator's task (classification, regression), None when it resolves to neither or nothing."""
    problems: tuple[str, ...]
    """reconcile.validation.estimator_problems' refusals (empty: the estimator is built as specified)."""


def judge(spec: ModelTrainingSpec) -> Judgement:
    """The judgement, made in this process (imports scikit-learn)."""
    from mlops_operator.backends import estimators
    from mlops_operator.reconcile.validation import estimator_problems

    return Judgement(estimators.estimator_task(spec.training.estimator), tuple(estimator_problems(spec, estimators)))


def _key(spec: ModelTrainingSpec) -> str:
    """What the judgement depends on: the training, and whether the pipeline is custom (which judges its
    own training)."""
    custom = bool(spec.pipeline.config_map_ref or spec.pipeline.uri)
    return json.dumps({"training": spec.training.model_dump(mode="json", by_alias=True), "custom": custom},
                      sort_keys=True, separators=(",", ":"))


class EstimatorChecker:
    """The operator's side: the answers remembered, and the helper process (one question at a time)."""

    def __init__(self) -> None:
        self._answers: OrderedDict[str, Judgement] = OrderedDict()
        self._lock = threading.Lock()
        self._helper: subprocess.Popen | None = None
        self._answered = False
        self._started = 0.0
        self._asking: dict[str, asyncio.Future] = {}

    def known(self, spec: ModelTrainingSpec) -> Judgement | None:
        """The remembered judgement of ``spec.training``, or None when it has not been judged yet."""
        return self._answers.get(_key(spec))

    async def judged(self, spec: ModelTrainingSpec) -> Judgement:
        """The judgement of ``spec.training``, for the event loop: a remembered one at once; else one
        thread asks, and every other reconciliation of the same training awaits that answer (no thread
        of the loop's pool waits on the helper)."""
        key = _key(spec)
        known = self._answers.get(key)
        if known is not None:
            return known
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(asyncio.to_thread(self.check, spec))
            asking.add_done_callback(lambda _: self._asking.pop(key, None))
        return await asyncio.shield(asking)

    def check(self, spec: ModelTrainingSpec) -> Judgement:
        """The judgement of ``spec.training`` (blocking: call it in a thread)."""
        key = _key(spec)
        with self._lock:
            known = self._answers.get(key)
            if known is None:
                known = self._ask(spec)
                self._answers[key] = known
                if len(self._answers) > REMEMBERED:
                    self._answers.popitem(last=False)
            self._answers.move_to_end(key)
            return known

    def _ask(self, spec: ModelTrainingSpec) -> Judgement:
        question = spec.model_dump_json(by_alias=True, exclude_none=True)
        for attempt in (1, 2):  # a helper that exited since (idle) is started again once
            try:
                return self._ask_helper(question)
            except (OSError, ValueError, TimeoutError, KeyError) as error:
                self.stop()
                if attempt == 2:
                    log.warning("estimator check helper failed (%s: %s); judging spec.training in the operator's "
                                "process", type(error).__name__, error)
        return judge(spec)

    def _ask_helper(self, question: str) -> Judgement:
        helper = self._helper
        if helper is None or helper.poll() is not None:
            self.stop()  # one that exited (idle, or killed): its pipes closed
            self._started = time.monotonic()
            helper = self._helper = subprocess.Popen(
                [sys.executable, "-m", "mlops_operator.backends.estimator_check"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1, close_fds=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self._answered = False
        assert helper.stdin is not None and helper.stdout is not None
        helper.stdin.write(question + "\n")
        helper.stdin.flush()
        timeout = ANSWER_SECONDS if self._answered else FIRST_ANSWER_SECONDS
        ready, _, _ = select.select([helper.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer within {timeout:.0f}s")
        line = helper.stdout.readline()
        if not line:
            raise OSError(f"the helper exited (code {helper.poll()})")
        answer = json.loads(line)
        if not self._answered:
            log.info("estimator check helper (pid %d) answered its first question %.1fs after its start", helper.pid,
                     time.monotonic() - self._started)
        self._answered = True
        return Judgement(answer["task"], tuple(answer["problems"]))

    def stop(self) -> None:
        """Stop the helper (it is started again by the next question)."""
        helper, self._helper = self._helper, None
        if helper is None:
            return
        if helper.stdin is not None:
            try:
                helper.stdin.close()
            except OSError:
                pass
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
        if helper.stdout is not None:
            helper.stdout.close()

    def helper_pid(self) -> int | None:
        """The helper's pid while it runs."""
        helper = self._helper
        return helper.pid if helper is not None and helper.poll() is None else None


def _serve(idle_exit: float) -> None:
    """The helper: one JSON answer per question (a spec, one JSON line on stdin), until EOF or
    ``idle_exit`` seconds without one."""
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], idle_exit)
        if not ready:
            return
        line = sys.stdin.readline()
        if not line:
            return
        judgement = judge(ModelTrainingSpec.model_validate_json(line))
        sys.stdout.write(json.dumps({"task": judgement.task, "problems": list(judgement.problems)}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(IDLE_EXIT_SECONDS)
