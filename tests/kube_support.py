"""Test support: polling with a deadline, the operator as a real subprocess, small kube helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
GROUP, VERSION = "mlops.dev", "v1alpha1"
PLURALS = {"ModelTraining": "modeltrainings", "ModelDeployment": "modeldeployments", "DriftMonitor": "driftmonitors"}

T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float = 30, interval: float = 0.25, what: str = "condition") -> T:
    """Call ``probe`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def install_crds(api_client, bodies: list[dict[str, Any]], what: str = "CRDs") -> list[str]:
    """Create or replace each CustomResourceDefinition and wait until all are Established."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for body in bodies:
        name = body["metadata"]["name"]
        names.append(name)
        try:
            current = ext.read_custom_resource_definition(name)
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version}}
            ext.replace_custom_resource_definition(name, body)
        except ApiException as error:
            if error.status != 404:
                raise
            ext.create_custom_resource_definition(body)

    def established() -> bool:
        return all(
            any(c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(name).status.conditions or [])
            for name in names
        )

    wait_until(established, timeout=60, what=f"{what} Established")
    return names


def load_example(name: str) -> dict[str, Any]:
    """One object from examples/."""
    import yaml

    return yaml.safe_load((REPO / "examples" / name).read_text())


# Where examples/training.yaml and examples/driftmonitor.yaml read ground-truth labels: under the chart's data dir.
EXAMPLES_LABELS = "/var/lib/mlops-operator/labels"


class OperatorProcess:
    """``python -m mlops_operator`` as a real child process watching one namespace."""

    def __init__(self, kubeconfig: str, namespace: str, data_dir: Path, env: dict[str, str] | None = None):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = data_dir / f"operator-{namespace}.log"
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "MLOPS_NAMESPACES": self.namespace,
            "MLOPS_DATA_DIR": str(self.data_dir),
            "MLOPS_METRICS_PORT": str(self.metrics_port),
            "MLOPS_HEALTH_PORT": str(self.health_port),
            "MLOPS_POLL_INTERVAL_SECONDS": "1",
            # The tests' datasets and models live in their tmp dirs (and the repository's examples); the examples'
            # label feed is under the chart's data dir (examples/*.yaml labelsUri; nothing is there in a test).
            "MLOPS_URI_FILE_ROOTS": f"{tempfile.gettempdir()},{REPO},{EXAMPLES_LABELS}",
            **self.extra_env,
        }

    def start(self, timeout: float = 180, standby: bool = False) -> "OperatorProcess":
        """Start and wait until it is healthy: leading (kopf's /healthz answers), or with ``standby`` on
        standby (its own /healthz answers)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlops_operator"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO, start_new_session=True,
        )
        try:
            wait_until(self.alive if standby else self.leading, timeout=timeout, what="operator health endpoint")
        except BaseException:
            # No fixture will stop a process that never got healthy (it runs in its own session).
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=30)
            raise
        return self

    def healthy(self, query: str = "") -> bool:
        """200 from /healthz: kopf's once it runs (a standby's own endpoint answers it too)."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"operator exited early:\n{self.logs()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz{query}",
                                        timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def leading(self) -> bool:
        """Healthy, and with leader election the holder of the Lease (its mlops_leader gauge is 1)."""
        if not self.healthy():
            return False
        return self.env.get("MLOPS_LEADER_ELECTION") != "true" or self.metric("mlops_leader") == 1

    def alive(self) -> bool:
        """Whether its health endpoint answers (a leader's and a standby's alike)."""
        return self.healthy()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def metric(self, metric_name: str, /, **labels: str) -> float:
        """Value of one sample (0 when absent)."""
        wanted = metric_name
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            series_name, _, label_text = series.partition("{")
            if series_name != wanted:
                continue
            got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if all(part in got.split(",") for part in want.split(",") if part):
                return float(value)
        return 0.0

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the operator and wait for it to exit (SIGKILL after 30 s: it never outlives the test)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class Objects:
    """Our custom objects in one namespace, read live from the API server."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[body["kind"]], body)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind], name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind], name, body)

    def patch_status(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURALS[kind], name, body
        )

    def delete(self, kind: str, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind], name)

    def wait(self, kind: str, name: str, predicate: Callable[[dict[str, Any]], Any], timeout: float = 60,
             what: str = "") -> dict[str, Any]:
        """Poll the live object until ``predicate(obj)`` holds; return the object."""

        def probe():
            obj = self.get(kind, name)
            return obj if obj is not None and predicate(obj) else None

        return wait_until(probe, timeout=timeout, what=what or f"{kind}/{name}")

    def list_all(self) -> list[tuple[str, str]]:
        """(kind, name) of every object of our kinds in the namespace."""
        found = []
        for kind, plural in PLURALS.items():
            items = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)["items"]
            found += [(kind, item["metadata"]["name"]) for item in items]
        return found

    def delete_all(self) -> list[tuple[str, str]]:
        """Delete every object of our kinds in the namespace; return what was deleted."""
        from kubernetes.client.exceptions import ApiException

        found = self.list_all()
        for kind, name in found:
            try:
                self.delete(kind, name)
            except ApiException as error:
                if error.status != 404:
                    raise
        return found

    def events(self, name: str) -> list[Any]:
        from kubernetes import client

        core = client.CoreV1Api(self.api.api_client)
        return [e for e in core.list_namespaced_event(self.namespace).items if e.involved_object.name == name]


def load_demo():
    """hack/demo.py as a module (hack/ is not a package): the demo's traffic and scenario helpers."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("mlops_demo", REPO / "hack" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlops_demo"] = module
    spec.loader.exec_module(module)
    return module
