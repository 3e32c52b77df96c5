"""A server binary of ours on loopback for the tests (MinIO, Prometheus): built by
hack/build-binaries.sh on first use, started in its own process group, waited for over HTTP, and
stopped (the whole group, reaped) also when its start fails or times out.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "build-binaries.sh"


class ServerError(RuntimeError):
    """A test server could not be built or started."""


def built_binary(name: str) -> Path:
    """Path of ``name`` built by hack/build-binaries.sh (progress on stderr, cached by version)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), name], stdout=subprocess.PIPE, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ServerError(f"{BUILD_SCRIPT} {name} failed with exit code {result.returncode}")
    return Path(lines[-1]) / name


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


class LoopbackServer:
    """One process with its log at ``log_path``; subclasses say how to start it and when it is up."""

    name = "server"
    error: type[Exception] = ServerError

    def __init__(self, binary: Path, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}.log"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``argv`` in its own process group (so stop() reaches everything it starts)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=self.workdir, start_new_session=True)

    def wait_ok(self, url: str, timeout: float) -> None:
        """Poll ``url`` until it answers 200; fail at once if the process exits, with its log."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self.error(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise self.error(f"{self.name} did not answer {url} within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; reaped either way."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(5)
