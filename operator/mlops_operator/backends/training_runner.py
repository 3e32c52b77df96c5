"""The process that executes one run: ``python -m mlops_operator.backends.training_runner RUN_DIR`` (backend
local, detached from the operator), or ``... --job`` inside a Kubernetes Job's Pod (backend job: :func:`run_job`);
or ``... --zygote FD``, the warm process backend local's runners are forked from (:func:`zygote`).

Started by ``training_local.submit``, or forked from the zygote. Reads ``request.json``, runs the compiled pipeline through
``kfp.local`` (SubprocessRunner without a venv: the steps use this interpreter and its installed
packages) with ``pipeline_root`` inside the run dir, and writes the final ``state.json``: the
pipeline outputs on success; on failure the failing step's reason (from ``step-error.json``, else
from a ``<Reason>: ...`` line in the log), else PipelineFailed.

Each task of a lightweight Python component runs in a process forked from this one, after it has
imported the built-in steps' libraries once (pandas, pyarrow, scikit-learn, scipy), instead of a
fresh interpreter that imports them again: about 3 s of imports per task was most of a small
run's time (``benchmarks/training_bench.py``). The forked task runs exactly what kfp.local's
command would (``kfp.dsl.executor_main`` on the component's source, same arguments), writes to the
same log, stays in the runner's process group (a cancel stops it with the runner) and leaves with
``os._exit`` (no interpreter shutdown: a native library's thread at exit once aborted a finished
task). A task whose command is anything else (a container component, ``packages_to_install``)
runs as kfp.local starts it.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, NoReturn

from mlops_operator.api.errors import DataValidationFailed, InvalidSpec
from mlops_operator.backends import training_local as tl

# Failures a retry cannot change (the same request, the same data): not retried.
NOT_RETRIED = frozenset({InvalidSpec.reason, DataValidationFailed.reason})
# Longest failure message put in state.json; the log has the rest.
_MAX_MESSAGE = 3000


def run(directory: Path) -> int:
    """Execute the run in ``directory``; return the process exit code (0 on success)."""
    request = json.loads((directory / tl.REQUEST_FILE).read_text())
    previous = tl._read_json(directory / tl.STATE_FILE) or {}
    if (directory / tl.CANCEL_FILE).exists() or previous.get("state") in tl.FINAL_STATES:
        # Canceled between submit's mkdir and this process starting: nothing to run.
        return 0
    started = tl._now()
    # The runner names itself too: if the submitter died between starting it and writing the pid, the
    # run is still known to be running (and adopted), not taken for one that never started.
    if tl._read_pid(directory) is None:
        tl._write_text(directory / tl.PID_FILE, tl._identity_text(os.getpid(), tl.process_start_time(os.getpid())))
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


# What the built-in steps import (each stage imports its own steps lazily): imported once here,
# before the first task is forked.
PRELOAD = ("mlops_operator.components.extract", "mlops_operator.components.validate_data",
           "mlops_operator.components.split", "mlops_operator.components.train",
           "mlops_operator.components.evaluate", "mlops_operator.components.gate",
           "mlops_operator.components.export", "pyarrow.parquet", "sklearn.ensemble", "sklearn.linear_model")

# The shell script kfp compiles for a lightweight Python component (kfp.dsl.component_factory):
# write the source ($0) to a temporary module, then run the executor on it with the arguments ($@).
_EXECUTOR_SCRIPT = re.compile(
    r'^program_path=\$\(mktemp -d\)\s+printf "%s" "\$0" > "\$program_path/ephemeral_component.py"\s+'
    r'_KFP_RUNTIME=true \S+ -m kfp\.dsl\.executor_main\s+--component_module_path\s+'
    r'"\$program_path/ephemeral_component.py"\s+"\$@"\s*$')


def forkable(full_command: list[str]) -> tuple[str, list[str]] | None:
    """(component source, executor arguments) when ``full_command`` is exactly kfp's lightweight
    component command, else None (run it as kfp.local would)."""
    if len(full_command) < 4 or full_command[:2] != ["sh", "-ec"] or not _EXECUTOR_SCRIPT.match(full_command[2]):
        return None
    return full_command[3], list(full_command[4:])


def _leave(code: int) -> NoReturn:
    """End a forked child with ``code``: its output flushed, without the interpreter's shutdown (the
    parent's threads, atexit hooks and buffers are not the child's to run)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_task(full_command: list[str]) -> int:
    """kfp.local's ``run_local_subprocess``: a lightweight component's task in a forked child of this
    (warm) process; anything else in a subprocess as kfp.local runs it. Returns the exit code."""
    parsed = forkable(full_command)
    if parsed is None:
        return _original_run_local_subprocess(full_command=full_command)
    source, arguments = parsed
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the task
        code = 1
        try:
            program_path = Path(tempfile.mkdtemp())
            module = program_path / "ephemeral_component.py"
            module.write_text(source)
            sys.argv = ["executor_main", "--component_module_path", str(module), *arguments]
            from kfp.dsl import executor_main

            executor_main.executor_main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # noqa: BLE001 - the task's failure goes to the log, as a process's would
            traceback.print_exc()
        finally:
            _leave(code)
    _, status = os.waitpid(pid, 0)
    print("\n", flush=True)  # as kfp.local separates a task's output
    return os.waitstatus_to_exitcode(status)


_original_run_local_subprocess: Any = None


def preload() -> None:
    """Import what running a pipeline and its built-in steps needs, and put :func:`run_task` in
    kfp.local's place: once per process (the runner, or the zygote before it forks runners)."""
    global _original_run_local_subprocess
    import importlib

    from kfp import components, local  # noqa: F401
    from kfp.local import subprocess_task_handler

    # The components name the operator image as their base image; locally that is this interpreter.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    for name in PRELOAD:
        importlib.import_module(name)
    if _original_run_local_subprocess is None:
        _original_run_local_subprocess = subprocess_task_handler.run_local_subprocess
        subprocess_task_handler.run_local_subprocess = run_task


def _run_pipeline(package: Path, arguments: dict[str, Any], pipeline_root: Path) -> dict[str, Any]:
    from kfp import components, local

    preload()
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


def run_job(request_text: str, base: Path, termination_log: Path) -> int:
    """Backend job: the run inside a Kubernetes Job's Pod (``training_runner --job``).

    The request (``reconcile.trainingjob.REQUEST_ENV``: the pipeline arguments, and the package text when
    the spec names one) becomes a run directory under ``base`` (an emptyDir) and runs as a local run
    does, its steps printing to the container's log. The final state's reason and message go to the
    termination log (Kubernetes keeps 4 KiB); the model version itself is in the artifact store.
    Exit codes: 0 succeeded, ``NOT_RETRIED_EXIT_CODE`` for a failure a retry cannot change (the Job's
    Pod failure policy fails the Job at once), 1 for any other failure (the Job's backoffLimit applies)."""
    from mlops_operator.reconcile import trainingjob

    directory = base / "run"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        request = json.loads(request_text)
        package = Path(request["pipelinePackage"]) if request.get("pipelinePackage") else tl.default_pipeline_package()
        if request.get("pipelinePackageText"):
            package = directory / "pipeline.yaml"
            package.write_text(request["pipelinePackageText"])
        tl._write_json(directory / tl.REQUEST_FILE, {"request": {}, "pipelinePackage": str(package),
                                                     "arguments": request["arguments"]})
    except (ValueError, KeyError, TypeError) as error:
        termination_log.write_text(trainingjob.termination_message(tl.FAILED, InvalidSpec.reason,
                                                                   f"the Job's request: {error}"))
        return trainingjob.NOT_RETRIED_EXIT_CODE
    os.environ.pop(trainingjob.REQUEST_ENV, None)  # the steps need none of it
    code = run(directory)
    state = tl._read_json(directory / tl.STATE_FILE) or {}
    termination_log.write_text(trainingjob.termination_message(state.get("state", tl.FAILED), state.get("reason"),
                                                               state.get("message")))
    if code == 0:
        return 0
    return trainingjob.NOT_RETRIED_EXIT_CODE if state.get("reason") in NOT_RETRIED else 1


def zygote(fd: int) -> int:
    """The warm process backend local's runners are forked from (``training_runner --zygote FD``).

    Imports what a run needs (:func:`preload`), says ``{"ready": true}`` on the socket ``fd``, then
    reads one JSON request a line, ``{"run_dir", "env"}``, and answers each with the forked runner's
    ``{"pid", "start"}`` or ``{"error"}``. Exits at EOF: the operator that started it has gone.

    Threads: after the imports there are library threads (OpenBLAS's pool, pyarrow's jemalloc
    background thread); both libraries re-initialise in a forked child (pthread_atfork), as they do
    in the tasks a runner forks after the same imports. Nothing of Python's runs in a thread here.
    """
    # Ctrl-C in the operator's terminal stops the operator, and its EOF this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the runners it forks are reaped by the kernel
    preload()
    # What the imports made stays out of the collector's reach, so a forked runner's collections do
    # not write to (and copy) the pages it shares with this process (the gc module's advice for fork).
    gc.freeze()
    channel = socket.socket(fileno=fd)
    reader = channel.makefile("rb")

    def answer(message: dict[str, Any]) -> None:
        channel.sendall(json.dumps(message).encode() + b"\n")

    answer({"ready": True, "pid": os.getpid(), "threads": len(os.listdir("/proc/self/task"))
            if os.path.isdir("/proc/self/task") else None})
    for line in reader:
        try:
            request = json.loads(line)
            reply = _fork_runner(Path(request["run_dir"]), dict(request["env"]), channel)
        except Exception as error:  # noqa: BLE001 - the operator starts the runner afresh
            reply = {"error": f"{type(error).__name__}: {error}"}
        answer(reply)
    # EOF: the operator has gone. No interpreter shutdown (library threads at exit; nothing to save).
    sys.stderr.flush()
    os._exit(0)


def _fork_runner(directory: Path, env: dict[str, str], channel: socket.socket) -> dict[str, Any]:
    """Fork the run's runner, in a session of its own. It stays this process's child (reaped by the
    kernel: SIGCHLD is ignored here), not an orphan of init's: where the operator is PID 1 (a
    container) nothing else would reap it. It reports its identity on a pipe once it is set up and
    has written its pid file; a pipe closed without it means no runner runs."""
    readable, writable = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(readable)
            code = _become_runner(directory, env, writable, channel)
        except BaseException:  # noqa: BLE001 - before the log is set up this reaches the zygote's stderr
            traceback.print_exc()
        finally:
            _leave(code)
    os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        report = pipe.read()
    if not report:
        return {"error": f"the forked runner {pid} exited before it was set up (see the zygote's stderr)"}
    return json.loads(report)


def _become_runner(directory: Path, env: dict[str, str], report: int, channel: socket.socket) -> int:
    """In the forked runner: become what ``training_runner RUN_DIR`` started by Popen is (own session,
    log, working directory, environment, default signals), name itself, then run."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the runner waits for its tasks
    os.setsid()
    # The zygote's end of its socket (detached: the zygote's reader still refers to the object).
    os.close(channel.detach())
    log_fd = os.open(directory / tl.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.close(null_fd)
    # As PYTHONUNBUFFERED gives a fresh runner: every line reaches the log at once.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)
    os.chdir(directory)
    os.environ.clear()
    os.environ.update(env)
    os.environ["_KFP_RUNTIME"] = "true"  # as main() sets it in a fresh runner
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pid = os.getpid()
    identity = {"pid": pid, "start": tl.process_start_time(pid)}
    tl._write_text(directory / tl.PID_FILE, tl._identity_text(pid, identity["start"]))
    os.write(report, json.dumps(identity).encode())
    os.close(report)
    return run(directory)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``training_runner RUN_DIR``, ``training_runner --job`` in a Job's Pod, or
    ``training_runner --zygote FD``."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--job"] and len(args) != 1 and not (len(args) == 2 and args[0] == "--zygote" and args[1].isdigit()):
        print("usage: python -m mlops_operator.backends.training_runner RUN_DIR | --job | --zygote FD", file=sys.stderr)
        return 2
    # kfp's package imports its client (and with it the Kubernetes client) unless _KFP_RUNTIME is
    # set, as kfp sets it in a task; running a compiled pipeline needs none of it (0.6 s of a run's
    # start-up). Under _KFP_RUNTIME, kfp.dsl.component_factory must be imported before
    # kfp.components, or kfp's own import cycle (base_component <-> component_factory) breaks.
    os.environ["_KFP_RUNTIME"] = "true"
    import kfp.dsl.component_factory  # noqa: F401

    if args[0] == "--zygote":
        return zygote(int(args[1]))
    if args == ["--job"]:
        from mlops_operator.reconcile import trainingjob

        return run_job(os.environ.get(trainingjob.REQUEST_ENV, ""), Path(os.environ.get("TMPDIR") or "/tmp"),
                       Path(os.environ.get("MLOPS_TERMINATION_LOG") or "/dev/termination-log"))
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
