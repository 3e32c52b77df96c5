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


def start_prometheus(server: LoopbackServer, config: dict, timeout: float) -> None:
    """Write ``config``, start ``server``'s Prometheus on a free loopback port and wait until it is ready
    (stopped again when it is not)."""
    (server.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    (server.port,) = free_ports(1)
    server.spawn([str(server.binary), f"--config.file={server.workdir / 'prometheus.yml'}",
                  f"--storage.tsdb.path={server.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{server.port}"])
    try:
        server.wait_ok(f"http://127.0.0.1:{server.port}/-/ready", timeout)
    except BaseException:
        server.stop()
        raise


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
        start_prometheus(self, config, timeout)


class KubernetesPrometheus(LoopbackServer):
    """Prometheus on 127.0.0.1 discovering the Pods of ``namespaces`` through the API server (Kubernetes
    service discovery, ``role: pod``, with ``kubeconfig``) and scraping every container port named
    ``metrics`` of the Pods annotated ``prometheus.io/scrape: "true"`` at their ``prometheus.io/path``:
    what Seldon Core puts on its Pods (the executor's and the MLServer container's ``metrics`` ports,
    path ``/prometheus``). Targets get the labels ``namespace``, ``pod`` and ``container``.
    ``static_targets`` (``[(host:port, {label: value})]``, job ``operator``) adds host processes, such as
    an operator running outside the cluster."""

    name = "prometheus-k8s"

    def __init__(self, binary: Path, workdir: Path, kubeconfig: str, namespaces: list[str],
                 static_targets: list[tuple[str, dict[str, str]]] | None = None):
        super().__init__(binary, workdir)
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.static_targets = static_targets or []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "kubernetes-pods",
                "scrape_interval": "1s",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": self.kubeconfig,
                                           "namespaces": {"names": self.namespaces}}],
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true",
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics",
                     "action": "keep"},
                    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "regex": "(.+)",
                     "target_label": "__metrics_path__"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                ],
            }] + ([{"job_name": "operator", "scrape_interval": "1s", "static_configs": [
                {"targets": [target], "labels": labels} for target, labels in self.static_targets]}]
                  if self.static_targets else []),
        }

    def start(self, timeout: float = 60.0) -> "KubernetesPrometheus":
        self.workdir.mkdir(parents=True, exist_ok=True)
        start_prometheus(self, self.config(), timeout)
        return self

    def query(self, promql: str) -> list[dict]:
        """The result vector of an instant query."""
        import json
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def metric_names(self) -> set[str]:
        """Every metric name this Prometheus has scraped."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/api/v1/label/__name__/values", timeout=10) as response:
            return set(json.loads(response.read())["data"])
