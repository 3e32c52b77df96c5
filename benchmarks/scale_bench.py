"""The operator at scale against a floor measured in the same run (#16 §4).

N ModelDeployments (backend seldon, so no local processes: each one's child is a SeldonDeployment;
Seldon's controller does not run, so none gets a status), or with ``--kind trainings`` N ModelTrainings
(schedule only: a nightly cron and ``runOnChange: false``, so nothing runs; no child), or both one
after the other (the default), are applied at
once, spread over K namespaces, on the dev control plane (hack/devcluster.py, its own dev dir ``.dev-bench``), first
against the floor (benchmarks/scale_floor.py: a kopf operator whose handlers only patch a condition
and create the child), then against the operator (``python -m mlops_operator`` with its default
settings). For each:

* converge: time from the first apply until every child exists and every object has conditions;
  p50/p99 apply-to-child latency (the create returned → the child's ADDED on a watch; for
  ModelTrainings, which have none, → the object's first conditions);
* the operator process's peak RSS (VmHWM) and CPU seconds, and kube-apiserver requests per object
  (its ``apiserver_request_total``, less what this benchmark sent and the background rate measured
  before the operator started);
* at rest: the same over ``--rest`` seconds with nothing changing, after a settling time (requests/s,
  CPU %, the busiest requests);
* delete: the namespaces deleted; time until they are gone, children created after the deletion
  started (re-created in a terminating namespace), ERROR lines the operator logged meanwhile.

Prints absolute figures, the ratio to the floor, and the issue's goals. Bounded: at most 10,000
objects. Usage: ``python benchmarks/scale_bench.py [--kind deployments|trainings|all] [--objects 1000]
[--namespaces 10] [--rest 60]``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "tests"), str(REPO / "operator")]
import devcluster  # noqa: E402
import scale_floor  # noqa: E402  (this script's directory: the floor, for the line it logs when started)
from kubernetes import client, config, watch  # noqa: E402

GROUP, VERSION = "mlops.dev", "v1alpha1"
SELDON = ("machinelearning.seldon.io", "v1", "seldondeployments")
BENCH_LABEL = "mlops.dev/bench"
DEV_DIR = REPO / ".dev-bench"
# After convergence, the last status writes, events and kopf's own annotations land (both operators)
# before "at rest" is measured.
SETTLE_S = 10.0
# The goals of issue #16 §4 (1,000 objects on 2 cores).
GOALS = {"converge_s": 20.0, "p99_s": 2.0, "rss_mib": 200.0, "requests_ratio": 1.5, "cpu_ratio": 1.5}


def say(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Observed:
    """What the watches saw, by (namespace, name), in monotonic seconds."""

    created: dict[tuple[str, str], float] = field(default_factory=dict)
    child: dict[tuple[str, str], float] = field(default_factory=dict)
    conditions: dict[tuple[str, str], float] = field(default_factory=dict)
    children_added_after: list[tuple[str, str]] = field(default_factory=list)
    deleting_since: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Watcher:
    """Watches SeldonDeployments and the benchmark's kind in every namespace from a thread each."""

    def __init__(self, api: client.ApiClient, seen: Observed, plural: str):
        self.custom = client.CustomObjectsApi(api)
        self.seen = seen
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=args, daemon=True)
                        for args in ((*SELDON, self._on_child), (GROUP, VERSION, plural, self._on_object))]

    def __enter__(self) -> "Watcher":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()

    def _watch(self, group: str, version: str, plural: str, on_event) -> None:
        version_seen = self.custom.list_cluster_custom_object(group, version, plural, limit=1)["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(self.custom.list_cluster_custom_object, group, version, plural,
                                           resource_version=version_seen, timeout_seconds=30):
                    obj = event["object"]
                    version_seen = obj["metadata"]["resourceVersion"]
                    on_event(event["type"], obj)
                    if self.stop.is_set():
                        break
            except client.ApiException as error:
                if error.status == 410:  # expired: start from now (nothing is missed that matters here)
                    version_seen = self.custom.list_cluster_custom_object(
                        group, version, plural, limit=1)["metadata"]["resourceVersion"]
                else:
                    raise

    def _on_child(self, kind: str, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        now = time.monotonic()
        with self.seen.lock:
            if kind == "ADDED":
                self.seen.child.setdefault(key, now)
                if self.seen.deleting_since is not None:
                    self.seen.children_added_after.append(key)

    def _on_object(self, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED" and (obj.get("status") or {}).get("conditions"):
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            with self.seen.lock:
                self.seen.conditions.setdefault(key, time.monotonic())


def apiserver_counts(api: client.ApiClient) -> Counter:
    """kube-apiserver's apiserver_request_total by (verb, resource[/subresource])."""
    response = api.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False)[0]
    counts: Counter = Counter()
    for line in response.data.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            resource = "/".join(filter(None, (labels.get("resource", ""), labels.get("subresource", ""))))
            counts[(labels.get("verb", ""), resource)] += float(line.rsplit(" ", 1)[1])
    return counts


def apiserver_requests(api: client.ApiClient) -> float:
    """The sum of kube-apiserver's apiserver_request_total (every verb, resource and code)."""
    return sum(apiserver_counts(api).values())


class Process:
    """The operator under test as a child process: its CPU seconds, peak RSS and log."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, ready: Callable[["Process"], bool]):
        self.log = log
        self.ready = ready
        """Whether it has started (its start-up done, its watches about to begin)."""
        self.popen = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO,
                                      start_new_session=True)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def errors(self, since_line: int = 0) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()[since_line:]
        return [line for line in lines if "ERROR" in line or "Traceback" in line]

    def lines(self) -> int:
        return len(self.log.read_text(errors="replace").splitlines())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether a health endpoint answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def wait(predicate, timeout: float, what: str, interval: float = 0.2) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


def deployment(name: str, workdir: Path, model_uri: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"backend": "seldon", "model": {"name": "iris", "uri": model_uri, "version": "1"},
                     "rollout": {"strategy": "direct"}}}


def training(name: str, workdir: Path, model_uri: str) -> dict[str, Any]:
    """A schedule-only ModelTraining: nightly, and not on creation, so nothing runs while measured."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelTraining", "metadata": {"name": name},
            "spec": {"model": name, "dataset": {"uri": (workdir / "iris.csv").as_uri(), "format": "csv",
                                                "target": "species"},
                     "schedule": "0 3 * * *", "runOnChange": False}}


# --kind: the objects' kind, plural, body, and whether each gets a child (a SeldonDeployment).
KINDS = {"deployments": ("ModelDeployment", "modeldeployments", deployment, True),
         "trainings": ("ModelTraining", "modeltrainings", training, False)}


def run_one(label: str, api: client.ApiClient, start_operator, kind: str, objects: int, namespaces: int, rest: float,
            model_uri: str, workdir: Path) -> dict[str, float]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    title, plural, body, has_child = KINDS[kind]
    names = [f"bench-{label}-{i}" for i in range(namespaces)]
    for ns in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels={BENCH_LABEL: label})))
    seen = Observed()
    result: dict[str, float] = {}
    with Watcher(api, seen, plural):
        # Background: what the control plane and the watches cost with no operator.
        before, t0 = apiserver_requests(api), time.monotonic()
        time.sleep(5)
        background_rate = (apiserver_requests(api) - before - 1) / (time.monotonic() - t0)
        # Kept after the run, beside the control plane's logs.
        log_path = DEV_DIR / "logs" / f"scale-{kind}-{label}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process = start_operator(log_path)
        say(f"{label}: log {log_path}")
        try:
            def started() -> bool:
                if not process.alive():
                    raise RuntimeError(f"{label} exited at start:\n{process.log.read_text()[-3000:]}")
                return process.ready(process)
            took = wait(started, timeout=120, what=f"{label}: started")
            say(f"{label}: started in {took:.1f}s")
            time.sleep(1)  # its watches' first listing (of nothing)
            counts0, cpu0, start = apiserver_counts(api), process.cpu_seconds(), time.monotonic()

            def create(i: int) -> None:
                ns = names[i % namespaces]
                name = f"m{i}"
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body(name, workdir, model_uri))
                with seen.lock:
                    seen.created[(ns, name)] = time.monotonic()

            say(f"{label}: applying {objects} {title}s in {namespaces} namespaces")
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, range(objects)))
            wanted = set(seen.created)
            wait(lambda: (wanted <= set(seen.child) or not has_child) and wanted <= set(seen.conditions), timeout=900,
                 what=f"{label}: every child and every object's conditions")
            converged = time.monotonic() - start
            reached = seen.child if has_child else seen.conditions
            latencies = [reached[key] - seen.created[key] for key in wanted]
            converging = apiserver_counts(api) - counts0
            requests = sum(converging.values()) - objects - background_rate * converged - 2
            result.update(converge_s=converged, p50_s=float(np.percentile(latencies, 50)),
                          p99_s=float(np.percentile(latencies, 99)), requests_per_object=requests / objects,
                          cpu_s=process.cpu_seconds() - cpu0)
            # Where the requests went (the bench's own creates included), per object.
            busiest = ", ".join(f"{verb} {resource} {n / objects:.2f}" for (verb, resource), n in converging.most_common(14))
            say(f"{label}: while converging, requests per object: {busiest}")
            say(f"{label}: converged in {converged:.1f}s; settling {SETTLE_S:.0f}s, then at rest for {rest:.0f}s")
            time.sleep(SETTLE_S)

            counts0, cpu0, t0 = apiserver_counts(api), process.cpu_seconds(), time.monotonic()
            time.sleep(rest)
            took = time.monotonic() - t0
            at_rest = apiserver_counts(api) - counts0
            result.update(rest_requests_per_s=max((sum(at_rest.values()) - 2) / took - background_rate, 0.0),
                          rest_cpu_pct=100 * (process.cpu_seconds() - cpu0) / took, rss_mib=process.peak_rss_mib())
            busiest = ", ".join(f"{verb} {resource} {n / took:.1f}/s" for (verb, resource), n in at_rest.most_common(4))
            say(f"{label}: at rest, the busiest requests: {busiest}")

            say(f"{label}: deleting the namespaces")
            log_lines = process.lines()
            with seen.lock:
                seen.deleting_since = time.monotonic()
            for ns in names:
                core.delete_namespace(ns)
            result["delete_s"] = wait(lambda: not core.list_namespace(label_selector=f"{BENCH_LABEL}={label}").items,
                                      timeout=900, what=f"{label}: namespaces deleted", interval=1)
            result["children_recreated"] = len(seen.children_added_after)
            result["errors_logged"] = len(process.errors(log_lines))
        finally:
            process.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=[*sorted(KINDS), "all"], default="all")
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--rest", type=float, default=60.0)
    args = parser.parse_args()
    objects, namespaces = min(args.objects, 10000), max(1, min(args.namespaces, args.objects))

    # Each ModelDeployment has a routing Service (MLOPS_SELDON_ROUTING=none), so a ClusterIP: the dev
    # control plane's default range holds 253, which would fail the rest with a 500 on create.
    os.environ.setdefault("MLOPS_DEV_SERVICE_CIDR", "10.0.0.0/16")
    say(f"control plane in {DEV_DIR} (Services from {os.environ['MLOPS_DEV_SERVICE_CIDR']})")
    kubeconfig = str(devcluster.ensure_cluster(DEV_DIR))
    api = config.new_client_from_config(config_file=kubeconfig)
    from kube_support import install_crds
    from seldon_support import install_seldon_crd, patched_crd, seldon_build

    install_crds(api, [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))])
    try:
        install_seldon_crd(api, patched_crd(seldon_build.source_dir()))
    except seldon_build.SeldonSourceMissing as error:
        sys.exit(f"scale_bench needs Seldon's CRD: {error}")

    with tempfile.TemporaryDirectory(prefix="scale-bench-") as scratch:
        workdir = Path(scratch)
        env = {**os.environ, "KUBECONFIG": kubeconfig}

        def floor(log: Path) -> Process:
            return Process([sys.executable, str(REPO / "benchmarks" / "scale_floor.py")], env, log,
                           ready=lambda p: scale_floor.READY_LINE in p.log.read_text(errors="replace"))

        def operator(log: Path) -> Process:
            health = free_port()
            return Process([sys.executable, "-m", "mlops_operator"], {
                **env, "MLOPS_DATA_DIR": str(workdir / "data"), "MLOPS_METRICS_PORT": str(free_port()),
                "MLOPS_HEALTH_PORT": str(health), "MLOPS_SELDON_LOGGER_PORT": "0",
                "MLOPS_URI_FILE_ROOTS": str(workdir), "PYTHONPATH": str(REPO / "operator")}, log,
                ready=lambda _: healthy(f"http://127.0.0.1:{health}/healthz"))

        from integration.deployment_support import publish_model

        model_uri = publish_model((workdir / "artifacts").as_uri(), "bench")["uri"]
        (workdir / "iris.csv").write_text("sepal_length,sepal_width,petal_length,petal_width,species\n"
                                          "5.1,3.5,1.4,0.2,setosa\n")  # named by the ModelTrainings, never read
        reports = []
        for kind in sorted(KINDS) if args.kind == "all" else [args.kind]:
            results = {label: run_one(label, api, start, kind, objects, namespaces, args.rest, model_uri, workdir)
                       for label, start in (("floor", floor), ("operator", operator))}
            reports.append((results, kind))
    for results, kind in reports:
        report(results, objects, kind)


def report(results: dict[str, dict[str, float]], objects: int, kind: str) -> None:
    floor, ours = results["floor"], results["operator"]
    title, _, _, has_child = KINDS[kind]
    reached = "child" if has_child else "conditions"
    rows = [("converged (s)", "converge_s"), (f"apply→{reached} p50 (s)", "p50_s"), (f"apply→{reached} p99 (s)", "p99_s"),
            ("API requests per object", "requests_per_object"), ("CPU while converging (s)", "cpu_s"),
            ("peak RSS (MiB)", "rss_mib"), ("at rest: API requests/s", "rest_requests_per_s"),
            ("at rest: CPU (%)", "rest_cpu_pct"), ("delete namespaces (s)", "delete_s"),
            ("children re-created while deleting", "children_recreated"), ("ERROR lines while deleting", "errors_logged")]
    print(f"\n{objects} {title}s ({'backend seldon' if has_child else 'schedule only, nothing running'}):")
    print(f"  {'':38s} {'operator':>10s} {'floor':>10s} {'ratio':>8s}")
    for title, key in rows:
        ratio = ours[key] / floor[key] if floor[key] else float("nan")
        print(f"  {title:38s} {ours[key]:10.2f} {floor[key]:10.2f} {ratio:7.2f}x")
    checks = [
        ("all reconciled within 20 s", ours["converge_s"] <= GOALS["converge_s"]),
        (f"p99 apply→{reached} <= 2 s", ours["p99_s"] <= GOALS["p99_s"]),
        ("peak RSS <= 200 MiB", ours["rss_mib"] <= GOALS["rss_mib"]),
        ("requests <= 1.5x floor", ours["requests_per_object"] <= GOALS["requests_ratio"] * floor["requests_per_object"]),
        ("CPU <= 1.5x floor", ours["cpu_s"] <= GOALS["cpu_ratio"] * floor["cpu_s"]),
        ("at rest: requests/s independent of idle objects (<= 1/s)", ours["rest_requests_per_s"] <= 1.0),
        ("delete within 2x floor", ours["delete_s"] <= 2 * floor["delete_s"]),
        ("no child re-created while deleting", ours["children_recreated"] == 0),
        ("no ERROR logged while deleting", ours["errors_logged"] == 0),
    ]
    print("goals (issue #16 §4):")
    for title, met in checks:
        print(f"  [{'x' if met else ' '}] {title}")


if __name__ == "__main__":
    main()
