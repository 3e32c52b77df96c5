"""Local training backend: the compiled pipeline runs through ``kfp.local`` in a detached process.

Each run has a directory ``<data_dir>/runs/<namespace>/<run_name>/``:

    request.json    what was asked: the request as given and the resolved pipeline arguments
    pid             the runner's identity: "<pid> <start time>" (the pid is also its process group: it
                    starts a new session; the start time, field 22 of /proc/<pid>/stat, tells it from a
                    later process that reuses the pid). Older runs wrote the pid alone.
    state.json      {"state", "reason", "message", "outputs", "started", "finished"}
    runner.log      everything the runner and the pipeline's steps printed
    step-error.json the failing step's reason and message (written by the step)
    cancel-requested written by cancel() before it signals the runner
    pipeline_root/  kfp.local's artifacts of the run

Creating the directory is the lock that makes ``submit`` idempotent. The runner is in a session of
its own so it outlives (and never blocks) the operator; if the operator restarts, ``status`` finds
the run from its directory.

Where the runner comes from: by default it is forked from the **zygote**, one warm process per
operator (``training_runner --zygote``) that has imported kfp and the steps' libraries once, started
on the first local submit (an operator that never trains locally never pays its memory) and gone
when the operator goes (EOF on its socket). A forked runner starts in milliseconds instead of the
seconds of an interpreter start and imports. If the zygote cannot start or fails, the runner is
started as a fresh ``python -m mlops_operator.backends.training_runner RUN_DIR`` (logged once), as
it is with ``zygote=False`` (setting ``MLOPS_TRAINING_ZYGOTE``). Either way the runner is the same
code (``training_runner.run``), in its own session, writing to ``runner.log`` with the run dir as
its working directory; its pid file holds pid and start time, and the run dir as working directory
marks its processes (a forked process has the zygote's command line). A runner that died without writing a final state is
reported as FAILED/RunnerLost and not restarted: kfp.local cannot resume a run, and a silent
re-run would train again on data that may have changed since; the operator decides whether to
start a new run.

All functions are synchronous and quick (no waiting on the run); call them from async code with
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from mlops_operator.api.errors import STEP_REASONS, Failure, InvalidSpec
# The pipeline package helpers live in pipeline_package (every backend uses them); these names stay
# importable from here for the runner and existing callers.
from mlops_operator.backends.pipeline_package import (  # noqa: F401
    PIPELINE_PACKAGE_ENV,
    REQUEST_KEYS,
    default_pipeline_package,
    pipeline_arguments,
    pipeline_digest,
    pipeline_inputs,
)

PENDING = "PENDING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELED = "CANCELED"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELED})

REASON_INVALID_SPEC = InvalidSpec.reason
REASON_RUNNER_LOST = "RunnerLost"
REASON_PIPELINE_FAILED = Failure.reason
REASON_CANCELED = "Canceled"

REQUEST_FILE = "request.json"
PID_FILE = "pid"
SUBMIT_LOCK_FILE = "submit.lock"
STATE_FILE = "state.json"
LOG_FILE = "runner.log"
STEP_ERROR_FILE = "step-error.json"
CANCEL_FILE = "cancel-requested"
PIPELINE_ROOT_DIR = "pipeline_root"

# Where a failing step writes {"step", "reason", "message"} (mlops_operator.components.errors reads
# the same variable; backends do not import components, which sit above them).
STEP_ERROR_FILE_ENV = "MLOPS_STEP_ERROR_FILE"
# Greedy prefix: a traceback line reads "pkg.errors.InvalidSpec: InvalidSpec: <message>".
_REASON_LINE = re.compile(r"^.*\b(" + "|".join(STEP_REASONS) + r"): (.+)$")
# How long a run dir may exist without a runner pid before the run counts as lost (the operator
# died between creating the directory and starting the runner).
START_GRACE_SECONDS = 60.0
# Kubernetes object names (DNS subdomain) are safe path segments.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

# Runner processes started by this process, kept so they are reaped (no zombies) when polled.
_children: dict[int, subprocess.Popen] = {}

log = logging.getLogger("mlops_operator.training")


@dataclass(frozen=True)
class RunStatus:
    """What is known about a local run."""

    run_name: str
    """The run's name (its directory name)."""
    namespace: str
    """Namespace of the ModelTraining that owns the run."""
    state: str
    """PENDING, RUNNING, SUCCEEDED, FAILED or CANCELED."""
    reason: str | None = None
    """Why it failed: DatasetUnavailable, DataValidationFailed, InvalidSpec, PipelineFailed, RunnerLost, Canceled."""
    message: str | None = None
    """A readable account of the failure."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """Pipeline outputs of a SUCCEEDED run: model_version, model_uri, metrics, validated,
    validation_reasons, profile_uri, dataset_digest."""
    started: str | None = None
    """When the runner started (RFC 3339, UTC)."""
    finished: str | None = None
    """When the run reached its final state (RFC 3339, UTC)."""
    pid: int | None = None
    """The runner's process id (and process group id)."""
    run_dir: str = ""
    """The run's directory."""

    @property
    def is_final(self) -> bool:
        """Whether the run has stopped (SUCCEEDED, FAILED or CANCELED)."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of every field."""
        return asdict(self)


def run_dir(data_dir: str | Path, run_name: str, namespace: str = "default") -> Path:
    """The directory of a run: ``<data_dir>/runs/<namespace>/<run_name>``."""
    for label, value in (("run name", run_name), ("namespace", namespace)):
        if not _NAME.match(value or ""):
            raise ValueError(f"invalid {label} {value!r}")
    return Path(data_dir) / "runs" / namespace / run_name


def submit(run_name: str, request: dict[str, Any], data_dir: str | Path, namespace: str | None = None,
           env: dict[str, str] | None = None, zygote: bool = True) -> RunStatus:
    """Start a run in a detached runner process, or return the status of the run that exists.

    ``env`` is added to the runner's environment (and so its steps'); unlike the request it is
    written nowhere: the way to hand a run credentials.

    Idempotent: the run is set up and its runner started under an exclusive lock on the run
    directory, and only while it has never been started, so a second submit of the same run name
    (even from another process) starts nothing and returns the existing run's status. The kernel
    releases the lock if its holder dies: a run whose submitter was killed before its runner started
    is started by the next submit (an operator restart re-submits the same run name), never marked
    lost. A request that does not fit the pipeline gives a FAILED/InvalidSpec run without starting a
    process. ``namespace`` defaults to ``request["namespace"]``, then ``default``. ``zygote``: fork the
    runner from this process's warm zygote (started on first use), else start a fresh interpreter.
    """
    namespace = namespace or request.get("namespace") or "default"
    directory = run_dir(data_dir, run_name, namespace)
    directory.mkdir(parents=True, exist_ok=True)
    with _submit_lock(directory) as held:
        if not held or not _never_started(directory):
            return status(run_name, data_dir, namespace)
        return _start(directory, run_name, request, data_dir, namespace, env, zygote)


def _never_started(directory: Path) -> bool:
    """A run directory whose runner was never started: no pid, no state beyond the submitter's PENDING."""
    state = (_read_json(directory / STATE_FILE) or {}).get("state")
    return _read_pid(directory) is None and state in (None, PENDING)


@contextlib.contextmanager
def _submit_lock(directory: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on the run's submission; yields whether it was acquired."""
    with open(directory / SUBMIT_LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _submitting(directory: Path) -> bool:
    """Whether a live process holds the run's submission lock now."""
    try:
        with _submit_lock(directory) as held:
            return not held
    except FileNotFoundError:
        return False


def _start(directory: Path, run_name: str, request: dict[str, Any], data_dir: str | Path, namespace: str,
           env: dict[str, str] | None, zygote: bool) -> RunStatus:
    now = _now()
    try:
        package = Path(request["pipeline_package"]) if request.get("pipeline_package") else default_pipeline_package()
        arguments = pipeline_arguments(request, run_name, data_dir, package)
    except (ValueError, KeyError, TypeError, FileNotFoundError, yaml.YAMLError) as err:
        # The spec's parameters do not fit the pipeline (a TypeError too: a value of the wrong type).
        # Recorded as what it is, never left for a false "RunnerLost" later.
        _write_json(directory / REQUEST_FILE, {"request": request, "submitted": now})
        message = str(err) if not isinstance(err, TypeError) else f"pipeline parameters: {err}"
        _write_state(directory, FAILED, reason=REASON_INVALID_SPEC, message=message, finished=now)
        return status(run_name, data_dir, namespace)
    _write_json(directory / REQUEST_FILE, {
        "request": request,
        "pipelinePackage": str(package.resolve()),
        "arguments": arguments,
        "submitted": now,
    })
    _write_state(directory, PENDING)
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    _write_text(directory / PID_FILE, _identity_text(*_start_runner(directory, env, zygote)))
    return status(run_name, data_dir, namespace)


def _start_runner(directory: Path, env: dict[str, str], zygote: bool) -> tuple[int, int | None]:
    """Start the run's runner, forked from the zygote or else as a fresh interpreter: its (pid, start time)."""
    identity = _ZYGOTE.start_runner(directory.resolve(), env) if zygote else None
    return identity if identity is not None else _popen_runner(directory, env)


def _popen_runner(directory: Path, env: dict[str, str]) -> tuple[int, int | None]:
    """The runner as a fresh interpreter (no zygote): its (pid, start time)."""
    with open(directory / LOG_FILE, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_operator.backends.training_runner", str(directory.resolve())],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: survives the operator, killable as a group
            close_fds=True,
        )
    _children[process.pid] = process
    return process.pid, process_start_time(process.pid)  # our unreaped child: the pid is still its


def status(run_name: str, data_dir: str | Path, namespace: str = "default") -> RunStatus:
    """The run's current status; FileNotFoundError if there is no such run.

    A run whose runner is gone without having written a final state is marked FAILED/RunnerLost
    (persisted, so the answer does not change later).
    """
    directory = run_dir(data_dir, run_name, namespace)
    if not directory.is_dir():
        raise FileNotFoundError(f"no local run {namespace}/{run_name} under {data_dir}")
    state = _read_json(directory / STATE_FILE) or {}
    identity = _read_identity(directory)
    pid = identity[0] if identity else None
    if state.get("state") not in FINAL_STATES:
        if pid is None:
            age = time.time() - directory.stat().st_mtime
            if age > START_GRACE_SECONDS and not _submitting(directory):
                state = _mark_lost(directory, "the runner was never started (the operator stopped while submitting)")
        elif not _runner_alive(pid, directory):
            # Re-read: the runner may have written its final state just before exiting.
            state = _read_json(directory / STATE_FILE) or {}
            if state.get("state") not in FINAL_STATES:
                state = _mark_lost(directory, f"the runner process {pid} exited without a final state; see {LOG_FILE}")
    return RunStatus(
        run_name=run_name,
        namespace=namespace,
        state=state.get("state", PENDING),
        reason=state.get("reason"),
        message=state.get("message"),
        outputs=state.get("outputs") or {},
        started=state.get("started"),
        finished=state.get("finished"),
        pid=pid,
        run_dir=str(directory),
    )


def cancel(run_name: str, data_dir: str | Path, namespace: str = "default", grace_seconds: float = 5.0) -> RunStatus:
    """Stop a run: SIGTERM its process group, SIGKILL after ``grace_seconds``; mark it CANCELED.

    A run that has already finished is left as it is. Blocks for at most ``grace_seconds``.
    """
    directory = run_dir(data_dir, run_name, namespace)
    current = status(run_name, data_dir, namespace)
    if current.is_final:
        return current
    pid = current.pid
    _write_text(directory / CANCEL_FILE, _now())
    # Only a group that is provably this run's (the runner by pid and start time, its other processes
    # by the run dir as command-line argument or working directory) is signalled: the pid may have
    # been reused since.
    marker = str(directory.resolve())
    if pid is not None and (_runner_alive(pid, directory) or group_alive(pid, marker)):
        # The whole group: the runner and the step processes kfp.local started under it.
        _signal_group(pid, signal.SIGTERM)
        if not _wait_group_gone(pid, directory, grace_seconds):
            _signal_group(pid, signal.SIGKILL)
            _wait_group_gone(pid, directory, 2.0)
    state = _read_json(directory / STATE_FILE) or {}
    if state.get("state") not in FINAL_STATES:
        _write_state(directory, CANCELED, reason=REASON_CANCELED, message="canceled by the operator",
                     started=state.get("started"), finished=_now())
    return status(run_name, data_dir, namespace)


def delete(run_name: str, data_dir: str | Path, namespace: str = "default") -> bool:
    """Remove a finished run's directory (logs and kfp.local artifacts); False if it is still active.

    Model versions live in the artifact store, not here, and are not touched.
    """
    import shutil

    directory = run_dir(data_dir, run_name, namespace)
    if not directory.exists():
        return True
    if not status(run_name, data_dir, namespace).is_final:
        return False
    shutil.rmtree(directory)
    return True


def read_log(run_name: str, data_dir: str | Path, namespace: str = "default", tail_bytes: int = 65536) -> str:
    """The last ``tail_bytes`` of the run's log."""
    path = run_dir(data_dir, run_name, namespace) / LOG_FILE
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - tail_bytes))
        return handle.read().decode(errors="replace")


def parse_step_error(text: str) -> tuple[str, str] | None:
    """The last ``<StepReason>: <message>`` line of a log as ``(reason, message)``, or None."""
    found = None
    for line in text.splitlines():
        match = _REASON_LINE.search(line)
        if match:
            found = (match.group(1), match.group(2).strip())
    return found


# --- the zygote: runners forked from one warm process ----------------------------------------

# Its imports take about 3 s on a quiet machine, several times that on a loaded one.
ZYGOTE_START_TIMEOUT = 120.0
# A fork takes milliseconds.
ZYGOTE_REPLY_TIMEOUT = 30.0
# After a zygote that did not answer: how long a runner it may have forked has to name itself.
ZYGOTE_ORPHAN_WAIT = 10.0
# Failures after which this process stops trying a zygote and starts every runner fresh.
ZYGOTE_MAX_FAILURES = 3


class _Zygote:
    """This process's zygote (``training_runner --zygote``): started on first use, asked over a
    socket pair, one JSON line each way, to fork runners. It reads EOF and exits when this process
    ends, however it ends (the kernel closes the socket; no other process holds this end: Python
    opens it close-on-exec). A dying zygote takes no run with it: its runners have sessions of their
    own, and init adopts them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._socket: socket.socket | None = None
        self._buffer = b""
        self._failures = 0

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start_runner(self, directory: Path, env: dict[str, str]) -> tuple[int, int | None] | None:
        """Fork the runner of the run in ``directory`` (resolved) with environment ``env``: its (pid,
        start time); None when the zygote cannot, and then no runner was started."""
        with self._lock:
            if self._failures >= ZYGOTE_MAX_FAILURES:
                return None
            if self.pid is None and not self._start():
                return None
            try:
                self._send({"run_dir": str(directory), "env": env})
            except OSError as error:  # gone before the request reached it (a partial line forks nothing)
                self._fail(f"the training zygote did not take the request ({type(error).__name__}: {error})")
                return None
            try:
                reply = self._receive(ZYGOTE_REPLY_TIMEOUT)
            except (OSError, ValueError) as error:
                # Died or hung mid-request: it may have forked the runner, which writes its pid file
                # before the zygote answers; only a runner that did not is started afresh.
                self._fail(f"the training zygote did not answer ({type(error).__name__}: {error})")
                return _wait_for_identity(directory, ZYGOTE_ORPHAN_WAIT)
            if "pid" in reply:
                return int(reply["pid"]), reply.get("start")
            self._fail(f"the training zygote could not start a runner: {reply.get('error')}", stop=False)
            return None

    def stop(self) -> None:
        """Stop the zygote (runners forked from it carry on); the next run starts a new one."""
        with self._lock:
            self._stop()

    def _start(self) -> bool:
        self._stop()
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mlops_operator.backends.training_runner", "--zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), close_fds=True)
        except OSError as error:
            ours.close()
            self._fail(f"the training zygote could not be started ({error})", stop=False)
            return False
        finally:
            theirs.close()
        self._socket, self._buffer = ours, b""
        try:
            ready = self._receive(ZYGOTE_START_TIMEOUT)
            if not ready.get("ready"):
                raise ValueError(f"unexpected greeting {ready!r}")
        except (OSError, ValueError) as error:
            self._fail(f"the training zygote did not start ({type(error).__name__}: {error})")
            return False
        log.info("training zygote %s ready: local training runs are forked from it (%s threads after its imports)",
                 self._process.pid, ready.get("threads"))
        return True

    def _send(self, message: dict[str, Any]) -> None:
        assert self._socket is not None
        self._socket.settimeout(ZYGOTE_REPLY_TIMEOUT)
        self._socket.sendall(json.dumps(message).encode() + b"\n")

    def _receive(self, timeout: float) -> dict[str, Any]:
        assert self._socket is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {timeout:.0f} s")
            self._socket.settimeout(remaining)
            chunk = self._socket.recv(65536)
            if not chunk:
                raise ConnectionError("the zygote closed its socket (it exited)")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"unexpected message {message!r}")
        return message

    def _fail(self, message: str, stop: bool = True) -> None:
        self._failures += 1
        if stop:
            self._stop()
        fallback = ("no further attempts: every runner starts as a fresh interpreter"
                    if self._failures >= ZYGOTE_MAX_FAILURES else "this run's runner starts as a fresh interpreter")
        # Once at WARNING; repeats (up to ZYGOTE_MAX_FAILURES) at INFO.
        (log.warning if self._failures == 1 else log.info)("%s; %s", message, fallback)

    def _stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None


_ZYGOTE = _Zygote()


def zygote_pid() -> int | None:
    """The pid of this process's training zygote, None while there is none."""
    return _ZYGOTE.pid


def stop_zygote() -> None:
    """Stop this process's training zygote (runs forked from it carry on); the next run starts a new one."""
    _ZYGOTE.stop()


def _wait_for_identity(directory: Path, timeout: float) -> tuple[int, int | None] | None:
    deadline = time.monotonic() + timeout
    while (identity := _read_identity(directory)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return identity


# --- run directory helpers (shared with training_runner) ---------------------------------------

def _write_state(directory: Path, state: str, **fields: Any) -> None:
    record = {"state": state, **{k: v for k, v in fields.items() if v is not None}}
    _write_json(directory / STATE_FILE, record)


def _mark_lost(directory: Path, message: str) -> dict[str, Any]:
    previous = _read_json(directory / STATE_FILE) or {}
    if (directory / CANCEL_FILE).exists():
        # Gone because cancel() stopped it, racing with this status() call.
        _write_state(directory, CANCELED, reason=REASON_CANCELED, message="canceled by the operator",
                     started=previous.get("started"), finished=_now())
    else:
        _write_state(directory, FAILED, reason=REASON_RUNNER_LOST, message=message,
                     started=previous.get("started"), finished=_now())
    return _read_json(directory / STATE_FILE) or {}


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command (which may contain spaces and parentheses):
    state, ppid, pgrp, ... (field 3 onwards); None if the process is gone or there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except (OSError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot: field 22 of ``/proc/<pid>/stat``), or None if it
    is gone or there is no /proc. With the pid it names one process: a reused pid starts later."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _identity_text(pid: int, start: int | None) -> str:
    return f"{pid} {start}" if start is not None else str(pid)


def _read_identity(directory: Path) -> tuple[int, int | None] | None:
    """The runner's (pid, start time) from the pid file; start time None in an older one-number file."""
    try:
        parts = (directory / PID_FILE).read_text().split()
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else None) if parts else None
    except (FileNotFoundError, ValueError):
        return None


def _runner_alive(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is still this run's runner (not a zombie, not a reused pid).

    With a start time in the pid file the process must have started then; an older pid file (pid
    alone) is matched by the runner's command line, which names the run dir."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    identity = _read_identity(directory)
    start = identity[1] if identity and identity[0] == pid else None
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        fields = _stat_fields(pid)
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        if not fields or fields[0] in ("Z", "X"):
            return False
        if start is not None:
            return int(fields[19]) == start
        return "training_runner" in cmdline and directory.name in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return sys.platform != "linux"  # on Linux /proc is authoritative


def group_alive(pgid: int, marker: str | None = None) -> bool:
    """Whether any process of the group is still running, optionally only counting processes whose
    command line contains ``marker`` or whose working directory is ``marker`` (a runner forked from
    the zygote, and the tasks it forks, have the zygote's command line but the run dir as working
    directory). Zombies do not count: they are dead, only not yet reaped by whoever inherited them."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None or int(fields[2]) != pgid or fields[0] in ("Z", "X"):
            continue
        if marker is None:
            return True
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                return True
            if os.readlink(entry / "cwd") == marker:
                return True
        except OSError:
            continue
    return False


def _wait_group_gone(pgid: int, directory: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        runner = _runner_alive(pgid, directory)  # also reaps our own child
        if not runner and not group_alive(pgid, str(directory.resolve())):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _read_pid(directory: Path) -> int | None:
    identity = _read_identity(directory)
    return identity[0] if identity else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str))


def _write_text(path: Path, text: str) -> None:
    # Atomic replace: readers never see a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
