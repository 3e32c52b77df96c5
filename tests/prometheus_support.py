"""A real Prometheus server for the tests, built from its Go module by hack/build-binaries.sh
(``prometheus``: Prometheus 3.16.0 with only Kubernetes service discovery compiled in; static
targets need no discovery plugin).

``PrometheusServer`` writes a config that scrapes the given targets every second, starts the
server on a free loopback port, waits for ``/-/ready`` and stops its process group on ``stop()``,
also when the start fails.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from server_support import LoopbackServer, built_binary, free_ports


def prometheus_binary() -> Path:
    """Path of the prometheus binary, built on first use (progress on stderr, cached by version)."""
    return built_binary("prometheus")


class PrometheusServer(LoopbackServer):
    """One Prometheus on 127.0.0.1 scraping ``targets``: ``[(host:port, {label: value})]``."""

    name = "prometheus"

    def __init__(self, binary: Path, workdir: Path, targets: list[tuple[str, dict[str, str]]]):
        super().__init__(binary, workdir)
        self.targets = targets

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
        (self.port,) = free_ports(1)
        self.spawn([str(self.binary), f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"])
        try:
            self.wait_ok(f"{self.url}/-/ready", timeout)
        except BaseException:
            self.stop()
            raise
