"""The detached process that executes one local run: ``python -m mlops_operator.backends.training_runner RUN_DIR``.

Started by ``training_local.submit``. Reads ``request.json``, runs the compiled pipeline through
``kfp.local`` (SubprocessRunner without a venv: the steps use this interpreter and its installed
packages) with ``pipeline_root`` inside the run dir, and writes the final ``state.json``: the
pipeline outputs on success; on failure the failing step's reason (from ``step-error.json``, else
from a ``<Reason>: ...`` line in the log), else PipelineFailed.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from mlops_operator.api.errors import DataValidationFailed, InvalidSpec
from mlops_operator.backends import training_local as tl

# Failures a retry cannot change (the same request, the same data): not retried.
NOT_RETRIED = frozenset({InvalidSpec.reason, DataValidationFailed.reason})
# Longest failure message put in state.json; the log has the rest.
_MAX_MESSAGE = 3000


def run(directory: Path) -> int:
    """Execute the run in ``directory``; return the process exit code (0 on success)."""
    import os

    request = json.loads((directory / tl.REQUEST_FILE).read_text())
    previous = tl._read_json(directory / tl.STATE_FILE) or {}
    if (directory / tl.CANCEL_FILE).exists() or previous.get("state") in tl.FINAL_STATES:
        # Canceled between submit's mkdir and this process starting: nothing to run.
        return 0
    started = tl._now()
    # The runner names itself too: if the submitter died between starting it and writing the pid, the
    # run is still known to be running (and adopted), not taken for one that never started.
    if tl._read_pid(directory) is None:
        tl._write_text(directory / tl.PID_FILE, str(os.getpid()))
    tl._write_state(directory, tl.RUNNING, started=started)
    error_file = directory / tl.STEP_ERROR_FILE
    os.environ[tl.STEP_ERROR_FILE_ENV] = str(error_file)
    attempts = 1 + int((request.get("request") or {}).get("retries") or 0)
    for attempt in range(1, attempts + 1):
        try:
            outputs = _run_pipeline(Path(request["pipelinePackage"]), request["arguments"],
                                    directory / tl.PIPELINE_ROOT_DIR)
            break
        except Exception as err:  # any failure becomes a FAILED state with the best reason we can find
            traceback.print_exc()
            sys.stdout.flush()
            reason, message = failure_reason(directory, err)
            if attempt < attempts and reason not in NOT_RETRIED and not (directory / tl.CANCEL_FILE).exists():
                # spec.retries: the whole pipeline again (kfp.local has no per-task retry).
                print(f"attempt {attempt} of {attempts} failed ({reason}): {message[:500]}; running the pipeline "
                      "again", flush=True)
                error_file.unlink(missing_ok=True)
                continue
            if attempt > 1:
                message = f"{message} (attempt {attempt} of {attempts})"
            tl._write_state(directory, tl.FAILED, reason=reason, message=message[:_MAX_MESSAGE],
                            started=started, finished=tl._now())
            return 1
    tl._write_state(directory, tl.SUCCEEDED, outputs=outputs, started=started, finished=tl._now())
    return 0


def failure_reason(directory: Path, err: BaseException) -> tuple[str, str]:
    """The reason and message of a failed run: the step's error file, the log, or the exception."""
    record = tl._read_json(directory / tl.STEP_ERROR_FILE)
    if isinstance(record, dict) and record.get("reason"):
        step = record.get("step")
        message = record.get("message") or ""
        return record["reason"], f"step {step}: {message}" if step else message
    log = (directory / tl.LOG_FILE).read_text(errors="replace") if (directory / tl.LOG_FILE).exists() else ""
    parsed = tl.parse_step_error(log)
    if parsed:
        return parsed
    return tl.REASON_PIPELINE_FAILED, f"{type(err).__name__}: {err}"


def _run_pipeline(package: Path, arguments: dict[str, Any], pipeline_root: Path) -> dict[str, Any]:
    from kfp import components, local

    # The components name the operator image as their base image; locally that is this interpreter.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    pipeline = components.load_component_from_file(str(package))
    task = pipeline(**arguments)
    return {name: _plain(value) for name, value in dict(task.outputs).items()}


def _plain(value: Any) -> Any:
    """JSON-friendly value: parameters pass through, artifacts become their URI."""
    if isinstance(value, (str, int, float, bool, type(None), list, dict)):
        return value
    uri = getattr(value, "uri", None)
    return uri if uri is not None else repr(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``training_runner RUN_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlops_operator.backends.training_runner RUN_DIR", file=sys.stderr)
        return 2
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
