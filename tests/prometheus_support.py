"""A real Prometheus server for the tests, built from its Go module by hack/build-binaries.sh
(``prometheus``: Prometheus 3.16.0 with only Kubernetes service discovery compiled in; static
targets need no discovery plugin).

``PrometheusServer`` writes a config that scrapes the given targets every second, starts the
server on a free loopback port, waits for ``/-/ready`` and stops its process group on ``stop()``,
also when the start fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from s3_support import BUILD_SCRIPT, _free_ports


def prometheus_binary() -> Path:
    """Path of the prometheus binary, built on first use (progress on stderr, cached by version)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "prometheus"], stdout=subprocess.PIPE, text=True,
                            check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{BUILD_SCRIPT} prometheus failed with exit code {result.returncode}")
    return Path(lines[-1]) / "prometheus"


class PrometheusServer:
    """One Prometheus on 127.0.0.1 scraping ``targets``: ``[(host:port, {label: value})]``."""

    def __init__(self, binary: Path, workdir: Path, targets: list[tuple[str, dict[str, str]]]):
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "router", "scrape_interval": "1s", "static_configs": [
                {"targets": [target], "labels": labels} for target, labels in self.targets]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        (self.port,) = _free_ports(1)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(self.binary), f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"prometheus exited with code {self.process.returncode}:\n{self.log_tail()}")
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                        if response.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"prometheus not ready within {timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
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
