"""Detached loopback processes: spawn, identify by /proc cmdline, stop, and small state files.

Every signal goes through :func:`verified_pid`, so a recycled pid that now belongs to some
other program is never signalled.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

LOOPBACK = "127.0.0.1"


def read_cmdline(pid: int, *, settle: float = 0.0) -> list[str] | None:
    """Arguments of a live, non-zombie process, or None when it is gone.

    A live process shows an empty command line for a moment twice in its life: while it execs
    (the kernel has closed its close-on-exec fds, which lets ``Popen`` return, but has not set up
    the new arguments yet) and while it exits (its memory is released before it is a zombie).
    With ``settle`` > 0 an empty command line is read again for up to that many seconds until the
    process shows its arguments or ends; without it (scanning all of /proc, where kernel threads
    never show any) it reads as gone.
    """
    deadline = time.monotonic() + settle
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            # The state letter follows the ")" closing the command name.
            if stat[stat.rindex(")") + 2] in "ZX":
                _reap(pid)
                return None
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError, PermissionError):
            return None
        if raw:
            return raw.rstrip(b"\0").decode(errors="replace").split("\0")
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def verified_pid(pid: int | None, marker: str) -> int | None:
    """``pid`` when that process is alive and its cmdline has the argument ``marker``, else None.

    ``marker`` is the process's working directory path, which appears verbatim as an argument of
    each process we start, so it names exactly one of ours. A process caught between exec and its
    new arguments (just spawned) or between exit and zombie is read again for up to half a second,
    so a server started a moment ago is not taken for one that died.
    """
    if not pid or pid <= 0:
        return None
    args = read_cmdline(pid, settle=0.5)
    if args is None or marker not in args:
        return None
    return pid


# Exit codes of our children reaped while checking liveness, kept for exit_status().
_reaped: dict[int, int] = {}


def _reap(pid: int) -> None:
    """Collect the exit status of our own dead child so it does not linger as a zombie."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return
    if done:
        if len(_reaped) > 1000:
            _reaped.clear()
        _reaped[pid] = os.waitstatus_to_exitcode(status)


def exit_status(pid: int) -> int | None:
    """Exit code of our own child if it has ended (negative: killed by that signal), else None.

    Only known for processes this operator process started (not for adopted ones).
    """
    if pid in _reaped:
        return _reaped.pop(pid)
    # A dying process drops its command line a moment before it becomes a zombie that waitpid
    # can collect, so a caller that saw it gone may be early: give it half a second at most.
    deadline = time.monotonic() + 0.5
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port free on the loopback right now (the caller retries if it is taken later)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if not exclude or port not in exclude:
            return port
    raise RuntimeError("no free loopback port found")


def port_is_free(port: int) -> bool:
    """True when nothing listens on ``127.0.0.1:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def spawn_detached(args: Sequence[str], *, cwd: Path, log_path: Path, env: dict | None = None) -> int:
    """Start ``args`` in its own session (an operator restart does not kill it); output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    return proc.pid


def _signal_group(pid: int, sig: int) -> None:
    # start_new_session made the child a group leader: signal the group so helpers die too,
    # but only when it still leads its own group (otherwise signal the process alone).
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def stop_process(pid: int | None, marker: str, *, grace: float = 10.0) -> bool:
    """SIGTERM a verified process group, SIGKILL after ``grace`` seconds; True once it is gone."""
    if verified_pid(pid, marker) is None:
        return True
    assert pid is not None
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if verified_pid(pid, marker) is None:
            return True
        await asyncio.sleep(0.05)
    if verified_pid(pid, marker) is not None:
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if verified_pid(pid, marker) is None:
            return True
        await asyncio.sleep(0.05)
    return verified_pid(pid, marker) is None


def write_json_atomic(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` as JSON so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """Parsed JSON object at ``path``, or None if missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path, max_bytes: int = 8192) -> str:
    """Last bytes of a log file, decoded."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def last_error_line(text: str) -> str | None:
    """The most telling line of a crashed server's log: the last exception or error line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        lowered = line.lower()
        if "error" in lowered or "exception" in lowered or "address already in use" in lowered:
            return line[-500:]
    return lines[-1][-500:] if lines else None


def pids_under(directory: Path) -> list[int]:
    """Live processes with an argument inside ``directory`` (how our servers name their workdir)."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = read_cmdline(int(entry.name))
        if args and any(arg == prefix[:-1] or arg.startswith(prefix) for arg in args):
            found.append(int(entry.name))
    return sorted(found)
