"""Process plumbing of the local serving backend, with tiny stand-in servers (fast, no MLServer)."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops_operator.backends.serving_local import supervisor
from mlops_operator.backends.serving_local.mlserver import (
    build_model_settings,
    build_server_settings,
    mlserver_command,
    predictor_workdir,
)
from mlops_operator.backends.serving_local.processes import (
    last_error_line,
    pids_under,
    read_cmdline,
    stop_process,
    verified_pid,
)
from mlops_operator.backends.serving_local.supervisor import Backoff, Phase, ProcessRecord, SupervisedProcess


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


class HttpServerProcess(SupervisedProcess):
    """``python -m http.server`` as a stand-in model server: ready when ``GET /`` answers."""

    kind = "test-http"
    backoff = Backoff(base=0.2, cap=1.0, reset_after=60.0)
    stop_grace = 2.0

    def command(self):
        return [sys.executable, "-m", "http.server", str(self.record.ports["http"]), "--bind", "127.0.0.1",
                "--directory", str(self.workdir)]

    def readiness_urls(self):
        return [f"http://127.0.0.1:{self.record.ports['http']}/"]


class CrashingProcess(HttpServerProcess):
    """Dies at once with a message, like a model that fails to load."""

    def command(self):
        return [sys.executable, "-c", "import sys; sys.exit('ValueError: model.joblib is corrupt')", str(self.workdir)]


def make(cls, tmp_path, name="p"):
    workdir = tmp_path / name
    return cls(workdir, ProcessRecord(kind=cls.kind, namespace="ns", deployment="dep", name=name, workdir=str(workdir)))


@pytest.fixture
def cleanup():
    started = []
    yield started
    for process in started:
        asyncio.run(process.stop())


# ---------------------------------------------------------------- /proc checks


def test_verified_pid_needs_the_marker_and_a_live_process(tmp_path):
    marker = str(tmp_path / "w")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        assert wait_until(lambda: read_cmdline(proc.pid) and marker in read_cmdline(proc.pid))
        assert verified_pid(proc.pid, marker) == proc.pid
        assert verified_pid(proc.pid, str(tmp_path / "other")) is None
        assert pids_under(tmp_path) == [proc.pid]
    finally:
        proc.kill()
    # Killed but not waited for: a zombie, which must not count as alive (and gets reaped).
    assert wait_until(lambda: verified_pid(proc.pid, marker) is None)
    assert verified_pid(None, marker) is None and verified_pid(-1, marker) is None


def test_a_process_caught_between_exec_and_its_arguments_is_not_taken_for_dead(tmp_path, monkeypatch):
    """Popen returns once the child's close-on-exec fds are closed, a moment before the kernel sets
    up its new arguments: /proc/<pid>/cmdline reads empty then. CI once took such a just-started
    server for a crash (a port clash counted as a failure, and the live process was orphaned)."""
    marker = str(tmp_path / "w")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        assert wait_until(lambda: read_cmdline(proc.pid) and marker in read_cmdline(proc.pid))
        blank_reads = {"left": 5}
        real_read_bytes = Path.read_bytes

        def read_bytes(self):
            if str(self) == f"/proc/{proc.pid}/cmdline" and blank_reads["left"] > 0:
                blank_reads["left"] -= 1
                return b""  # what the kernel shows mid-exec
            return real_read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        assert verified_pid(proc.pid, marker) == proc.pid
        assert blank_reads["left"] == 0
        # Scanning all of /proc does not wait: an empty command line there reads as gone.
        blank_reads["left"] = 1
        assert read_cmdline(proc.pid) is None
    finally:
        proc.kill()
        proc.wait()


def test_stop_process_refuses_a_pid_that_is_not_ours(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert asyncio.run(stop_process(proc.pid, str(tmp_path))) is True  # "gone" as far as we know…
        assert proc.poll() is None  # …but it was never signalled
    finally:
        proc.kill()
        proc.wait()


def test_stop_process_kills_what_ignores_sigterm(tmp_path):
    marker = str(tmp_path / "stubborn")
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: print('term ignored', flush=True))\n"
            "print('up', flush=True)\n"
            "time.sleep(60)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, marker], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"up\n"
    assert asyncio.run(stop_process(proc.pid, marker, grace=0.5)) is True
    assert proc.stdout.read() == b"term ignored\n"  # it got SIGTERM, shrugged, and was killed anyway
    assert read_cmdline(proc.pid) is None


def test_last_error_line_prefers_the_exception():
    text = "INFO starting\nTraceback (most recent call last):\n  File x\nValueError: bad shape\nINFO shutting down\n"
    assert last_error_line(text) == "ValueError: bad shape"
    assert last_error_line("") is None


# ---------------------------------------------------------------- supervision


def test_ensure_starts_adopts_and_restarts_after_a_kill(tmp_path, cleanup):
    process = make(HttpServerProcess, tmp_path)
    cleanup.append(process)
    status = asyncio.run(process.ensure(wait=10))
    assert status.phase == Phase.READY and status.restarts == 0
    pid = status.pid
    assert (tmp_path / "p" / "pid").read_text().strip() == str(pid)

    # A new supervisor object (an operator restart) adopts the same process.
    adopted = HttpServerProcess(process.workdir, HttpServerProcess.load_record(process.workdir))
    cleanup.append(adopted)
    assert asyncio.run(adopted.adopt(wait=5)).pid == pid

    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: adopted.live_pid() is None)
    status = asyncio.run(adopted.ensure(wait=10))
    assert status.phase == Phase.READY and status.pid != pid
    assert status.restarts == 1 and "exit code -9" in status.last_error  # SIGKILL, seen via our own child
    assert status.ports == {"http": process.record.ports["http"]}  # same port again: URLs stay valid


def test_backoff_doubles_up_to_the_cap():
    backoff = Backoff(base=1.0, cap=60.0)
    assert [backoff.delay(n) for n in range(0, 9)] == [0.0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_crash_loop_backs_off_and_reports_the_error(tmp_path, cleanup):
    process = make(CrashingProcess, tmp_path)
    cleanup.append(process)
    assert asyncio.run(process.ensure()).phase == Phase.STARTING
    assert wait_until(lambda: process.live_pid() is None)
    status = asyncio.run(process.ensure())
    assert status.phase == Phase.BACKOFF
    assert "model.joblib is corrupt" in status.last_error and "exit code 1" in status.last_error
    assert status.next_start_at > time.time()
    # The caller keeps polling ensure(): restarts happen only once each backoff has passed.
    phases = set()
    assert wait_until(lambda: phases.add(asyncio.run(process.ensure()).phase) or process.record.restarts >= 3)
    assert Phase.BACKOFF in phases
    assert wait_until(lambda: process.live_pid() is None)
    status = asyncio.run(process.ensure())
    assert status.phase == Phase.BACKOFF and status.restarts == 3
    assert process.record.consecutive_failures == 4
    assert 0.5 < process.record.next_start_at - time.time() <= CrashingProcess.backoff.cap  # 0.2 * 2**3, capped at 1


def test_port_clash_moves_to_a_new_port_without_backoff(tmp_path, cleanup, monkeypatch):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        process = make(HttpServerProcess, tmp_path)
        cleanup.append(process)
        process.record.ports = {"http": taken}
        monkeypatch.setattr(supervisor, "port_is_free", lambda port: True)  # as if it had been free a moment ago
        status = asyncio.run(process.ensure(wait=10))
        assert status.phase == Phase.READY
        assert status.ports["http"] != taken
        assert process.record.consecutive_failures == 0 and status.restarts == 0  # it never served
        assert "address already in use" in status.last_error.lower()
    finally:
        blocker.close()


def test_stop_marks_stopped_and_ensure_starts_again_without_counting_a_crash(tmp_path, cleanup):
    process = make(HttpServerProcess, tmp_path)
    cleanup.append(process)
    pid = asyncio.run(process.ensure(wait=10)).pid
    assert asyncio.run(process.stop()) is True
    assert read_cmdline(pid) is None and process.record.stopped
    status = asyncio.run(process.ensure(wait=10))
    assert status.phase == Phase.READY and status.restarts == 0


def test_hung_start_is_killed_after_the_startup_timeout(tmp_path, cleanup):
    class NeverReady(HttpServerProcess):
        startup_timeout = 0.5

        def readiness_urls(self):
            return [f"http://127.0.0.1:{self.record.ports['http']}/missing-page"]  # 404 forever

    process = make(NeverReady, tmp_path)
    cleanup.append(process)
    status = asyncio.run(process.ensure(wait=1.5))
    assert "not ready" in (status.last_error or "")
    assert process.record.consecutive_failures >= 1


# ---------------------------------------------------------------- MLServer settings


def test_server_settings_bind_loopback_and_disable_parallel_workers():
    settings = build_server_settings(8080, 8081)
    assert settings["host"] == "127.0.0.1"
    assert (settings["http_port"], settings["grpc_port"]) == (8080, 8081)
    assert settings["parallel_workers"] == 0
    assert settings["metrics_endpoint"] is None


def test_model_settings_get_absolute_uri_and_the_version(tmp_path):
    model_dir = tmp_path / "models" / "iris" / "3"
    model_dir.mkdir(parents=True)
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "old"}}))
    settings = build_model_settings(model_dir, "3", "fallback")
    assert settings["parameters"] == {"uri": str(model_dir / "model.joblib"), "version": "3"}
    assert settings["name"] == "iris"
    bare = tmp_path / "models" / "wine" / "1"
    bare.mkdir(parents=True)
    default = build_model_settings(bare, "1", "wine")
    assert default["implementation"] == "mlserver_sklearn.SKLearnModel" and default["name"] == "wine"
    assert default["parameters"]["uri"] == str(bare / "model.joblib")


def test_workdir_and_command_name_the_workdir(tmp_path):
    workdir = predictor_workdir(tmp_path, "ns", "iris", "canary", "2024/06:1")
    assert workdir == tmp_path / "serving" / "ns" / "iris" / "canary-v2024_06_1"
    command = mlserver_command(workdir)
    assert command[-2:] == ["start", str(workdir)] and Path(command[0]) == Path(sys.executable)
