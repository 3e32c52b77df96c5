#!/usr/bin/env python
"""`make demo`: the whole MLOps loop on the local control plane, unattended.

    train → deploy → normal traffic (no drift) → shifted, labelled traffic → DriftDetected
          → retrain on the labelled production window → v2 beats v1 on it → canary → promoted
          → NoDrift against v2 while the shifted traffic continues → summary

It brings up the control plane (unless KUBECONFIG points at a cluster), installs the CRDs, starts
the operator in the background, applies examples/, sends real V2 inference requests built from
scikit-learn's bundled iris data, and prints progress as it goes. The operator and the model
servers keep running afterwards so you can look around; `hack/demo.py down` stops them.

The loop itself is ``run_loop()``; tests/integration/test_kill_loop.py runs the same function (with the operator killed all along it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
GROUP, VERSION = "mlops.dev", "v1alpha1"
PLURALS = {"ModelTraining": "modeltrainings", "ModelDeployment": "modeldeployments", "DriftMonitor": "driftmonitors"}
DEMO_NAMESPACE = "mlops-demo"
START = time.monotonic()


def say(message: str) -> None:
    print(f"[demo {time.monotonic() - START:6.1f}s] {message}", flush=True)


def load_devcluster():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlops_devcluster", REPO / "hack" / "devcluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlops_devcluster"] = module
    spec.loader.exec_module(module)
    return module


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / name).read_text())


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


class Cluster:
    """Our objects in one namespace, through the Kubernetes API."""

    def __init__(self, kubeconfig: str, namespace: str):
        from kubernetes import client, config

        self.api_client = config.new_client_from_config(config_file=kubeconfig)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.namespace = namespace

    def install_crds(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        ext = client.ApiextensionsV1Api(self.api_client)
        for path in sorted((REPO / "crds").glob("*.yaml")):
            body = yaml.safe_load(path.read_text())
            try:
                body["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(
                    body["metadata"]["name"]).metadata.resource_version
                ext.replace_custom_resource_definition(body["metadata"]["name"], body)
            except ApiException as error:
                if error.status != 404:
                    raise
                ext.create_custom_resource_definition(body)
        for path in sorted((REPO / "crds").glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            wait(lambda: any(c.type == "Established" and c.status == "True"
                             for c in ext.read_custom_resource_definition(name).status.conditions or []),
                 60, f"CRD {name} Established")

    def ensure_namespace(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        except ApiException as error:
            if error.status != 409:
                raise

    def apply(self, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        plural = PLURALS[body["kind"]]
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)
        except ApiException as error:
            if error.status != 409:
                raise
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, plural,
                                                       body["metadata"]["name"], {"spec": body["spec"]})

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind], name)

    def delete_all(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for plural in PLURALS.values():
            for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)["items"]:
                try:
                    self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural,
                                                                item["metadata"]["name"])
                except ApiException as error:
                    if error.status != 404:
                        raise

    def remaining(self) -> int:
        return sum(len(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, p)["items"])
                   for p in PLURALS.values())


def wait(probe: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Traffic:
    """Real V2 inference requests from iris rows, optionally shifted, on loopback, with ground truth.

    Every request carries an id; its true species goes to the label feed (``labels``: a directory,
    or a URI such as ``s3://bucket/labels/`` that fsspec writes with the environment's credentials;
    one CSV file per burst with columns id,label, written atomically before the burst is sent), as a
    labelling team would deliver it. The shift is a new measuring device that reports petals 2 cm longer: the flowers, and so
    their species, are the same, so a model trained before the shift is wrong about most of them.

    ``endpoint`` is any URL of the model (``status.endpoint``, or that URL with its host replaced by
    an address this machine reaches, e.g. a cluster Service's IP). ``versions`` counts the answers
    per ``model_version``, ``errors`` the failures per cause.
    """

    def __init__(self, endpoint: str, model: str, labels: Path | str, seed: int = 7):
        from sklearn.datasets import load_iris

        # status.endpoint is the model's V2 URL (…/v2/models/<name>); older forms give the server's root.
        base = endpoint.rstrip("/")
        self.url = f"{base}/infer" if "/v2/models/" in base else f"{base}/v2/models/{model}/infer"
        iris = load_iris()
        self.rows, self.species = iris.data, iris.target
        self.labels = str(labels)
        if "://" not in self.labels or self.labels.startswith("file://"):
            self.labels_dir: Path | None = Path(self.labels.removeprefix("file://"))
            self.labels_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.labels_dir = None
        self.rng = np.random.default_rng(seed)
        self.sent = self.failed = 0
        self.versions: dict[str, int] = {}
        self.errors: dict[str, int] = {}  # failed requests by cause: "HTTP 503", "ConnectionRefusedError", …
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _row(self, shift: float) -> tuple[list[float], int]:
        index = self.rng.integers(len(self.rows))
        row = self.rows[index] + self.rng.normal(0, 0.02, 4)
        row[2:] += shift  # petal length and width read 2 cm longer: a new measuring device
        return [round(float(v), 3) for v in row], int(self.species[index])

    def _send(self, item: tuple[str, list[float]]) -> None:
        request_id, row = item
        body = json.dumps({"id": request_id,
                           "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row}]})
        request = urllib.request.Request(self.url, body.encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
            with self._lock:
                self.sent += 1
                version = str(answer.get("model_version", ""))
                self.versions[version] = self.versions.get(version, 0) + 1
        except (urllib.error.URLError, OSError, ValueError) as error:
            if isinstance(error, urllib.error.HTTPError):
                reason = f"HTTP {error.code}"
            else:
                cause = getattr(error, "reason", error)
                reason = type(cause).__name__ if isinstance(cause, BaseException) else str(cause)
            with self._lock:
                self.failed += 1
                self.errors[reason] = self.errors.get(reason, 0) + 1

    def burst(self, count: int, shift: float = 0.0, glitches: int = 0) -> None:
        """``count`` requests, then their labels; the last ``glitches`` have a negative sepal width
        (a broken sensor), which the training's data checks must count and leave out."""
        rows, labels = [], []
        for number in range(count):
            row, species = self._row(shift)
            if number >= count - glitches:
                row[1] = -1.0
            with self._lock:
                self._count += 1
                request_id = f"demo-{self._count:06d}"
            rows.append((request_id, row))
            labels.append(f"{request_id},{species}")
        # The ground truth is known before the requests go out; writing it first means every served
        # request has its label by the time anything (a retrain, a concept-drift check) joins them.
        name = rows[0][0] if rows else "empty"
        self._write_labels(f"{name}.csv", "id,label\n" + "\n".join(labels) + "\n")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._send, rows))

    def _write_labels(self, name: str, text: str) -> None:
        """One file of the label feed, whole or not at all (a rename locally; an object store's put is atomic)."""
        if self.labels_dir is not None:
            tmp = self.labels_dir / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.labels_dir / name)
            return
        import fsspec

        with fsspec.open(f"{self.labels.rstrip('/')}/{name}", "w") as handle:
            handle.write(text)

    def start_background(self, per_second: float = 15.0, shift: float = 0.0) -> None:
        """Steady traffic (what keeps a canary's analysis fed) until stop()."""
        def loop() -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                self.burst(int(per_second), shift=shift)
                self._stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

        self._stop.clear()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)


def start_operator(kubeconfig: str, namespace: str, data_dir: Path, metrics_port: int, health_port: int,
                   poll: float = 2.0) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "operator.log").open("ab")
    env = {**os.environ, "KUBECONFIG": kubeconfig, "MLOPS_NAMESPACES": namespace, "MLOPS_DATA_DIR": str(data_dir),
           "MLOPS_METRICS_PORT": str(metrics_port), "MLOPS_HEALTH_PORT": str(health_port),
           "MLOPS_POLL_INTERVAL_SECONDS": str(poll)}
    process = subprocess.Popen([sys.executable, "-m", "mlops_operator"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited; see {data_dir / 'operator.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    wait(healthy, 60, "operator liveness", 0.5)
    return process


def watch_phase(cluster: Cluster, kind: str, name: str, done: Callable[[dict], bool], timeout: float,
                what: str, describe: Callable[[dict], str]) -> dict[str, Any]:
    """Wait for ``done``, printing each change of what ``describe`` says."""
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = cluster.get(kind, name)
        text = describe(obj)
        if text != last:
            say(f"   {kind.lower()}/{name}: {text}")
            last = text
        if done(obj):
            return obj
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def describe_training(obj: dict) -> str:
    status = obj.get("status", {})
    run = status.get("latestRun") or {}
    version = (status.get("latestValidatedModel") or {}).get("version")
    return f"phase={status.get('phase')} run={run.get('name')} state={run.get('state')} validated version={version}"


def describe_deployment(obj: dict) -> str:
    status = obj.get("status", {})
    traffic = ", ".join(f"{t['predictor']}(v{t['version']})={t['weight']}%" for t in status.get("traffic", []))
    return (f"phase={status.get('phase')} stable=v{status.get('stableVersion')} "
            f"candidate={status.get('candidateVersion') and 'v' + status['candidateVersion']} traffic=[{traffic}]")


def describe_monitor(obj: dict) -> str:
    status = obj.get("status", {})
    drift = condition(obj, "DriftDetected")
    return (f"phase={status.get('phase')} DriftDetected={drift.get('status')} ({drift.get('reason')}) "
            f"samples={status.get('sampleSize')} drifted={status.get('driftedFeatures')}")


def with_labels(body: dict[str, Any], labels_uri: str) -> dict[str, Any]:
    """An example with its label feed pointed at ``labels_uri`` (productionData / performance)."""
    body = copy.deepcopy(body)
    spec = body["spec"]
    for key in ("productionData", "performance"):
        if key in spec:
            spec[key]["labelsUri"] = labels_uri
    return body


def comparison_text(run: dict[str, Any]) -> str:
    comparison = run.get("comparison") or {}
    new = (comparison.get("challenger") or {}).get("metrics") or {}
    old = comparison.get("champion") or {}
    if "accuracy" not in new:
        return "no comparison recorded"
    text = (f"on the {comparison.get('holdout')} holdout ({comparison.get('holdoutRows')} rows): "
            f"v{run.get('modelVersion')} accuracy {new['accuracy']:.3f}")
    if (old.get("metrics") or {}).get("accuracy") is not None:
        text += f", v{old.get('version')} accuracy {old['metrics']['accuracy']:.3f}"
    return text


def run_loop(cluster: Cluster, timeout: float = 600, labels_dir: Path | None = None,
             analysis: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the examples and drive the loop to a promoted retrained model that has solved the
    drift. Returns a summary. ``analysis`` replaces fields of the deployment's rollout analysis."""
    started = time.monotonic()
    # The label feed: in the operator's data dir, only the namespace's own labels/<namespace>/ may be read.
    labels_dir = Path(labels_dir or demo_dir() / "labels" / cluster.namespace)
    if labels_dir.exists():
        for old in labels_dir.glob("*.csv"):
            old.unlink()
    labels_uri = f"file://{labels_dir.resolve()}/"
    say("step 1/7  training: kubectl apply -f examples/training.yaml")
    cluster.apply(with_labels(example("training.yaml"), labels_uri))
    mt = watch_phase(cluster, "ModelTraining", "iris",
                     lambda o: (o.get("status", {}).get("latestValidatedModel") or {}).get("version") == 1,
                     timeout, "model version 1", describe_training)
    metrics = mt["status"]["latestValidatedModel"]["metrics"]
    say(f"   version 1 validated: {', '.join(f'{k}={v:.3f}' for k, v in metrics.items())}")

    say("step 2/7  serving: kubectl apply -f examples/deployment.yaml")
    deployment = example("deployment.yaml")
    deployment["spec"]["rollout"]["analysis"].update(analysis or {})
    cluster.apply(deployment)
    md = watch_phase(cluster, "ModelDeployment", "iris",
                     lambda o: o.get("status", {}).get("phase") == "Ready" and o["status"].get("endpoint"),
                     timeout, "deployment Ready", describe_deployment)
    endpoint = md["status"]["endpoint"]
    say(f"   serving v{md['status']['stableVersion']} at {endpoint}")

    say("step 3/7  monitoring: kubectl apply -f examples/driftmonitor.yaml; 300 labelled requests of normal traffic")
    traffic = Traffic(endpoint, "iris", labels_dir)
    traffic.burst(300)
    if traffic.failed:
        raise RuntimeError(f"{traffic.failed} of 300 requests to {traffic.url} failed")
    say(f"   300 predictions from {traffic.url}; their labels in {labels_dir}")
    cluster.apply(with_labels(example("driftmonitor.yaml"), labels_uri))
    dm = watch_phase(cluster, "DriftMonitor", "iris", lambda o: o.get("status", {}).get("phase") == "NoDrift",
                     timeout, "a check without drift", describe_monitor)
    before_shift = condition(dm, "DriftDetected").get("message")

    say("step 4/7  shifted traffic: a new device reads petals 2 cm longer (same flowers, same species);"
        " 400 labelled requests, the last 4 from a broken sepal sensor")
    traffic.burst(400, shift=2.0, glitches=4)
    dm = watch_phase(cluster, "DriftMonitor", "iris", lambda o: condition(o, "DriftDetected").get("status") == "True",
                     timeout, "DriftDetected", describe_monitor)
    drift_scores = {
        f"{r['feature']}/{t['test']}": round(t["score"], 4)
        for r in dm["status"].get("results", []) for t in r.get("tests", []) if t.get("drifted")
    }
    drifted = {"message": condition(dm, "DriftDetected").get("message"), "modelVersion": dm["status"].get("modelVersion"),
               "performance": dm["status"].get("performance")}
    say(f"   drift: {drifted['message']}")

    say("step 5/7  retrain requested by the DriftMonitor with its window: v2 trains on the newest labelled rows")
    # No traffic while v2 trains, so the newest 400 labelled rows (productionData.window.rows) are
    # exactly the shifted burst, glitches included: the figures below do not depend on timing.
    mt = watch_phase(cluster, "ModelTraining", "iris",
                     lambda o: (o.get("status", {}).get("latestValidatedModel") or {}).get("version") == 2,
                     timeout, "model version 2", describe_training)
    traffic.start_background(shift=2.0)
    try:
        run = mt["status"]["latestRun"]
        say(f"   retrain trigger: {run['trigger'][:160]}")
        for source in run.get("sources", []):
            say(f"   source {source['name']}: {source.get('rows')} rows, digest {str(source.get('digest'))[:12]}"
                + (f", {source.get('rejectedRows')} rejected {source.get('rejections')}"
                   if source.get("rejectedRows") else ""))
        say(f"   champion vs challenger {comparison_text(run)}")
        say("step 6/7  canary of version 2 (10% → 50% → promoted, analysed between steps); shifted,"
            " labelled traffic keeps flowing")
        md = watch_phase(cluster, "ModelDeployment", "iris",
                         lambda o: o.get("status", {}).get("stableVersion") == "2"
                         and o["status"].get("phase") == "Ready",
                         timeout, "version 2 promoted", describe_deployment)
        say("step 7/7  the DriftMonitor compares the still shifted traffic with version 2's profile")
        dm = watch_phase(cluster, "DriftMonitor", "iris",
                         lambda o: o.get("status", {}).get("phase") == "NoDrift"
                         and o["status"].get("modelVersion") == "2",
                         timeout, "NoDrift against version 2", describe_monitor)
    finally:
        traffic.stop()
    return {
        "endpoint": endpoint,
        "inferUrl": traffic.url,
        "stable": md["status"]["stableVersion"],
        "versions": [r.get("modelVersion") for r in mt["status"].get("history", [])],
        "metrics": mt["status"]["latestValidatedModel"]["metrics"],
        "drift": drift_scores,
        "driftBefore": before_shift,
        "driftDetected": drifted,
        "driftAfter": {"message": condition(dm, "DriftDetected").get("message"),
                       "modelVersion": dm["status"].get("modelVersion"), "phase": dm["status"].get("phase"),
                       "performance": dm["status"].get("performance")},
        "run": mt["status"]["latestRun"],
        "lastAnalysis": md["status"].get("lastAnalysis"),
        "requests": traffic.sent,
        "failedRequests": traffic.failed,
        "retrainRequest": dm["status"].get("lastRetrainRequest"),
        "seconds": round(time.monotonic() - started, 1),
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_dir() -> Path:
    return Path(os.environ.get("MLOPS_DEV_DIR", REPO / ".dev")) / "demo"


def stop_demo(kubeconfig: str) -> None:
    """Delete the demo objects (the running operator stops their processes), then the operator."""
    state_file = demo_dir() / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    cluster = Cluster(kubeconfig, DEMO_NAMESPACE)
    try:
        cluster.delete_all()
        wait(lambda: cluster.remaining() == 0, 90, "demo objects deleted")
    except Exception as error:  # the cluster may be gone already
        say(f"could not delete the demo objects: {error}")
    pid = state.get("operatorPid")
    if pid and Path(f"/proc/{pid}/cmdline").exists() and b"mlops_operator" in Path(f"/proc/{pid}/cmdline").read_bytes():
        os.killpg(pid, signal.SIGTERM)
        say(f"stopped the operator (pid {pid})")
    state_file.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", default="up", choices=["up", "down"])
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for each stage")
    args = parser.parse_args()

    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        say("control plane: hack/devcluster.py up (the first run builds the binaries from Go modules)")
        kubeconfig = str(load_devcluster().ensure_cluster())
    if args.action == "down":
        stop_demo(kubeconfig)
        return 0

    stop_demo(kubeconfig)  # a previous demo's objects and operator, if any
    cluster = Cluster(kubeconfig, DEMO_NAMESPACE)
    say("installing the CRDs (crds/*.yaml)")
    cluster.install_crds()
    cluster.ensure_namespace()
    data_dir = demo_dir()
    metrics_port, health_port = free_port(), free_port()
    operator = start_operator(kubeconfig, DEMO_NAMESPACE, data_dir, metrics_port, health_port)
    (data_dir / "state.json").write_text(json.dumps({"operatorPid": operator.pid, "metricsPort": metrics_port}))
    say(f"operator running (pid {operator.pid}), log {data_dir / 'operator.log'}")

    summary = run_loop(cluster, args.timeout)

    say("done: the loop closed without anyone editing a spec")
    print()
    print("Summary")
    run = summary["run"]
    print(f"  model versions        {summary['versions']} (stable: v{summary['stable']})")
    for source in run.get("sources", []):
        print(f"  v{run.get('modelVersion')} trained on      {source['name']}: {source.get('rows')} rows "
              f"(sha256 {str(source.get('digest'))[:12]}), {source.get('rejectedRows') or 0} rejected by the data checks")
    print(f"  v1 vs v2 on shifted   {comparison_text(run)}")
    analysis = summary.get("lastAnalysis") or {}
    if analysis:
        print(f"  last canary analysis  {analysis.get('message')}")
    print(f"  drifted feature/test  " + ", ".join(f"{k}={v}" for k, v in summary["drift"].items()))
    print(f"  drift against v{summary['driftDetected']['modelVersion']}      {summary['driftDetected']['message']}")
    print(f"  drift against v{summary['driftAfter']['modelVersion']}      {summary['driftAfter']['phase']}: "
          f"{summary['driftAfter']['message']}")
    print(f"  retrain requested     {summary['retrainRequest']}")
    print(f"  requests sent         {summary['requests']} ({summary['failedRequests']} failed)")
    print(f"  loop wall time        {summary['seconds']}s")
    print(f"  endpoint              {summary['inferUrl']}")
    print()
    print("Where to look")
    print(f"  export KUBECONFIG={kubeconfig}")
    print(f"  kubectl -n {DEMO_NAMESPACE} get mlops                # all three kinds")
    print(f"  kubectl -n {DEMO_NAMESPACE} describe md iris          # conditions and events")
    print(f"  curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^mlops_   # operator metrics")
    router = summary["endpoint"].split("/v2/")[0]
    print(f"  curl -s {router}/metrics | grep ^mlops_router      # per-predictor traffic")
    print("  hack/demo.py down                                   # stop the demo's operator and servers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
