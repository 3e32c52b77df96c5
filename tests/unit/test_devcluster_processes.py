"""How hack/devcluster.py tells a process it just started from one that has exited."""

from __future__ import annotations

import subprocess
import time

from conftest import load_devcluster


def test_a_started_process_is_not_called_exited_while_its_command_line_is_not_yet_readable():
    devcluster = load_devcluster()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        record = {
            "name": "etcd",
            "pid": proc.pid,
            # What the exec window looks like from outside: the recorded binary does not match
            # /proc/<pid>/cmdline (empty for a moment after exec), so the command-line check fails.
            "binary": "/nonexistent/etcd",
            "start_ticks": devcluster._proc_start_ticks(proc.pid),
            "log": "/dev/null",
        }
        assert not devcluster._is_ours(record, devcluster.dev_dir())
        assert not devcluster._has_exited(record)

        proc.kill()
        deadline = time.monotonic() + 10
        while not devcluster._has_exited(record):
            assert time.monotonic() < deadline, "a killed process was never seen to exit"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_counts_as_exited():
    devcluster = load_devcluster()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        ticks = devcluster._proc_start_ticks(proc.pid)
        record = {"name": "etcd", "pid": proc.pid, "binary": "sleep", "start_ticks": ticks - 1, "log": "/dev/null"}
        assert devcluster._has_exited(record)
    finally:
        proc.kill()
        proc.wait()
