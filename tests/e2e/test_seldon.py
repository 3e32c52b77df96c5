"""Backend seldon with the real Seldon Core v1.17.1 controller on the real node.

Seldon is installed from its chart's objects (patched CRD, RBAC, ``seldon-config`` pointing at our
executor, MLServer and rclone images, its validating webhook with a certificate made here) and its
controller runs as a host process with the chart's ServiceAccount (tests/seldon_support.py). Model
versions live in a real S3 server (MinIO) bound on the node's bridge address, so the rclone storage
initializer in each Pod downloads them with the credentials of a Secret named by
``spec.storageSecretName`` (Seldon's envSecretRefName). The operator runs as a host process.

The loop of `make demo` on Seldon, driven by the operator alone (hack/demo.py's examples, its
``Traffic`` of labelled iris requests, its label feed here on S3): a ModelTraining (local backend
beside the operator, artifact root on S3) writes version 1 → the ModelDeployment follows it
(``fromTraining``, backend seldon): Seldon's Deployments, init container download, MLServer serving
through the predictor Service with the predictions of the model loaded directly, the endpoint in
status callable as it is (resolved by the node's CoreDNS) → labelled traffic through that endpoint;
the executors' request logger posts every request to the operator's sink on the bridge address,
which writes the inference log on S3 → the DriftMonitor sees no drift → shifted traffic is
DriftDetected and a retrain is requested with the drift window → the ModelTraining retrains on the
production rows Seldon served, joined with their labels, and version 2 beats version 1 there →
version 2 rolls out by itself as a canary at 33% without a mesh (MLOPS_SELDON_ROUTING=none: the step's
weight becomes 2 stable and 1 canary replicas, and the operator's routing Service over every
predictor's Pods lets the node's real kube-proxy split requests by ready replicas; the split over 400
requests is checked against a binomial bound) → the step is analysed from the real Prometheus and
version 2 promoted automatically → the still shifted traffic is no drift against version 2. Last,
version 3 (pinned by hand: a training never publishes a model that cannot load) fails after its
progress deadline with the failing container named and is rejected; version 2 keeps serving.
Nothing here writes a SeldonDeployment status (the controller does) nor any status or metric.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pytest
from scipy.stats import binom
from sklearn.datasets import load_iris

from chart_support import bin_dir
from e2e.conftest import SUMMARY
from integration.deployment_support import deployment_body, publish_model
from mlops_operator.backends import artifacts
from kube_support import REPO, Objects, OperatorProcess, condition, install_crds, load_demo, wait_until
from prometheus_support import KubernetesPrometheus, prometheus_binary
from s3_support import S3Server
from seldon_support import SeldonInstall, seldon_build, source_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KIND = "ModelDeployment"
# Rows of every class, so two models can disagree.
ROWS = load_iris().data[::15].tolist()
POD_READY_TIMEOUT = 300  # image import is done before; an MLServer Pod is Ready in ~30 s (probe delay 20 s)
# The canary split without a mesh: weight 33 → 2 stable + 1 canary replicas; kube-proxy picks one of
# the 3 ready endpoints uniformly per connection (each request here is a new connection), so the
# canary's count over SPLIT_REQUESTS is Binomial(n, 1/3). It must lie in the central 1 - 1e-4 interval
# (a correct split fails this 1 time in 10,000; a 50/50 split, what equal replica counts would give,
# passes it 2 times in 1,000): for n = 400, 98..171 canary answers (24.5%..42.75%).
SPLIT_WEIGHT, SPLIT_REQUESTS, SPLIT_ALPHA = 33, 400, 1e-4
# The canary step's pause, from the canary predictor's readiness: the stable predictor's second replica
# (27-48 s measured) and the split's 400 requests (8-36 s one by one with the background traffic beside
# them on the loaded machine; now four at a time) fit in it; then the step is analysed and version 2 promoted automatically.
SPLIT_PAUSE = 75


def _timed(timings: dict[str, float], what: str, start: float) -> None:
    timings[what] = time.monotonic() - start


def resolve(name: str, dns_server: str) -> str:
    """The A record of ``name`` from ``dns_server`` (the node's CoreDNS): one UDP query, stdlib only."""
    query_id = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(packet, (dns_server, 53))
        answer = sock.recv(4096)
    _, flags, _, count, _, _ = struct.unpack(">HHHHHH", answer[:12])
    assert flags & 0xF == 0 and count > 0, f"{name}: DNS rcode {flags & 0xF}, {count} answers"
    pos = 12 + len(question) + 4
    for _ in range(count):
        pos += 2 if answer[pos] & 0xC0 == 0xC0 else len(answer[pos:].split(b"\0", 1)[0]) + 1
        rtype, _, _, length = struct.unpack(">HHIH", answer[pos:pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            return socket.inet_ntoa(answer[pos:pos + 4])
        pos += length
    raise AssertionError(f"{name}: no A record")


def v2_infer(url: str, rows: list[list[float]], timeout: float = 10) -> dict[str, Any]:
    """POST a V2 request to ``url`` (…/infer); the answer's JSON, or an AssertionError with the body."""
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                        "data": [x for row in rows for x in row]}]}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{url}: HTTP {error.code} {error.read()[:500]!r}") from None


def proxied_endpoints(namespace: str, service: str, port: str = "http") -> int:
    """How many endpoints kube-proxy has programmed for ``namespace/service:port`` (its nat rules,
    read with iptables-save as root): a split is measured only once every ready Pod is in them."""
    import subprocess

    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True,
                           timeout=30).stdout
    marker = f'--comment "{namespace}/{service}:{port} -> '
    return sum(1 for line in rules.splitlines() if line.startswith("-A KUBE-SVC-") and marker in line)


def dashboard_and_alert_metric_names() -> set[str]:
    """The metric names the chart's Grafana dashboard and Prometheus alerts query (tests/unit/test_alerts.py's
    PromQL extraction)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlops_test_alerts", REPO / "tests" / "unit" / "test_alerts.py")
    assert spec and spec.loader
    alerts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alerts)
    exprs = [rule["expr"] for rule in alerts.alert_rules()]
    exprs += [alerts.grafana_to_promql(expr) for _, expr in alerts.dashboard_queries()]
    return {name for expr in exprs for name, _ in alerts.selectors(expr)}


def not_in_a_seldon_run(names: set[str]) -> set[str]:
    """Names only the local backend's router exports (mlops_router_*)."""
    return {n for n in names if n.startswith("mlops_router_")}


def create_models_secret(node_api: Any, ns: str, s3: S3Server) -> None:
    """The Secret ``s3-models`` the storage initializer reads (rclone's env config; Seldon's envSecretRefName)."""
    from kubernetes import client

    client.CoreV1Api(node_api).create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="s3-models"), string_data={
        "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Minio", "RCLONE_CONFIG_S3_ENV_AUTH": "false",
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": s3.access_key, "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "RCLONE_CONFIG_S3_ENDPOINT": s3.endpoint_url, "RCLONE_CONFIG_S3_REGION": "us-east-1"}))


def direct_predictions(s3: S3Server, uri: str) -> list[int]:
    """What the model file at ``uri`` predicts for ROWS, loaded here with joblib (no server)."""
    import boto3

    bucket, key = urllib.parse.urlparse(uri).netloc, urllib.parse.urlparse(uri).path.lstrip("/")
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.joblib"
        client.download_file(bucket, f"{key}/model.joblib", str(path))
        return [int(x) for x in joblib.load(path).predict(np.array(ROWS))]


@pytest.fixture(scope="module")
def seldon(node_cluster, node_api, tmp_path_factory):
    """Seldon Core installed on the node (chart objects + controller as a host process)."""
    source_or_skip()
    timings = node_cluster.timings
    start = time.monotonic()
    built = not any((seldon_build.cache_root() / f"seldon-{seldon_build.tree_hash(seldon_build.source_dir())}"
                     ).glob("executor"))
    seldon_build.build()
    _timed(timings, f"seldon controller+executor ({'built' if built else 'cached'})", start)
    images = {name: node_cluster.image(image).ref
              for name, image in (("executor", "seldon-executor"), ("mlserver", "mlserver"), ("rclone", "rclone"))}
    start = time.monotonic()
    install = SeldonInstall(node_api, node_cluster.kubeconfig, tmp_path_factory.mktemp("seldon"), images,
                            bin_dir() / "helm").start()
    _timed(timings, "seldon installed and controller up", start)
    yield install
    install.uninstall()


@pytest.fixture
def seldon_namespace(node_api, request):
    """A fresh namespace under Pod Security ``baseline`` (Seldon 1.17.1's Pods set no seccomp profile
    nor dropped capabilities, which ``restricted`` requires)."""
    from kubernetes import client

    from conftest import _namespace_name

    core = client.CoreV1Api(node_api)
    name = _namespace_name(request.node.nodeid)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={
        "mlops.dev/test": "true", "pod-security.kubernetes.io/enforce": "baseline"})))
    yield name
    core.delete_namespace(name)


def seldon_deployment(spec: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``spec`` with backend seldon, the models Secret, a progress deadline and small requests."""
    return {**spec, "backend": "seldon", "storageSecretName": "s3-models", "progressDeadlineSeconds": 180,
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}, **fields}


@pytest.mark.timeout(1200)  # two trainings, three rollouts and four drift checks: about 5 minutes warm
def test_the_loop_on_the_real_seldon(node_cluster, node_api, seldon, s3, seldon_namespace, tmp_path, monkeypatch):
    """The loop of `make demo` (hack/demo.py's examples, traffic and label feed) on Seldon, driven by the
    operator alone: no model version is published by hand, no spec is edited between v1 and v2."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ns, timings, kc = seldon_namespace, node_cluster.timings, node_cluster.kubeconfig
    core = client.CoreV1Api(node_api)
    custom = client.CustomObjectsApi(node_api)
    demo = load_demo()
    t0 = time.monotonic()

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)  # this process reads the versions and writes the label feed on S3
    root = f"s3://{s3.bucket}/{ns}"
    # The label feed (ground truth by request id) on S3 too, where the DriftMonitor and the retrain read it.
    labels_uri = f"s3://{s3.bucket}/{ns}/labels/"
    create_models_secret(node_api, ns, s3)

    install_crds(node_api, [__import__("yaml").safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))])
    operator = OperatorProcess(kc, ns, tmp_path / "operator", env={
        **s3.env(), "MLOPS_ARTIFACT_ROOT": root,
        # The executors in the Pods post their request logs to the sink on the bridge address.
        "MLOPS_SELDON_LOGGER_HOST": node_cluster.devnode.NODE_IP, "MLOPS_SELDON_LOGGER_PORT": "0"})
    # A real Prometheus (only Kubernetes SD compiled in) discovers the namespace's Pods through the API
    # server and scrapes the executors' and MLServer's metrics ports; it also scrapes the operator (a
    # host process here). The canary is analysed from it.
    start = time.monotonic()
    prometheus = KubernetesPrometheus(prometheus_binary(), tmp_path / "prometheus", kc, [ns],
                                      [(f"127.0.0.1:{operator.metrics_port}", {"job": "mlops-operator"})]).start()
    operator.extra_env["MLOPS_PROMETHEUS_URL"] = prometheus.url
    operator.start()
    _timed(timings, "seldon prometheus and operator up", start)
    objects = Objects(node_api, ns)
    cluster = demo.Cluster(kc, ns)
    traffic = None
    try:
        # 1. The ModelTraining (local backend: a run of the built-in pipeline beside the operator) writes
        # version 1 to S3.
        start = time.monotonic()
        cluster.apply(demo.with_labels(demo.example("training.yaml"), labels_uri))
        mt = objects.wait("ModelTraining", "iris",
                          lambda o: (o.get("status", {}).get("latestValidatedModel") or {}).get("version") == 1,
                          timeout=600, what="model version 1 trained")
        _timed(timings, "seldon loop: v1 trained", start)
        v1_uri = mt["status"]["latestValidatedModel"]["uri"]
        assert v1_uri == f"{root}/models/{ns}/iris/1", v1_uri
        expected = {"1": direct_predictions(s3, v1_uri)}

        # 2. The ModelDeployment follows the training (spec.model.fromTraining) on backend seldon: the real
        # controller creates the Deployments, rclone downloads version 1 from S3, MLServer serves it. Each
        # new version rolls out as a canary at 33% without a mesh (MLOPS_SELDON_ROUTING=none) and is
        # promoted automatically once its step has been analysed from Prometheus.
        start = time.monotonic()
        deployment = demo.example("deployment.yaml")
        deployment["spec"] = seldon_deployment(deployment["spec"])
        deployment["spec"]["rollout"]["steps"] = [{"weight": SPLIT_WEIGHT, "pauseSeconds": SPLIT_PAUSE}]
        # The example's p99 bound (500 ms) is a production figure; on this shared 2-core machine, with the
        # split's requests beside the background traffic, the canary's p99 from the executor's histogram
        # (Prometheus's default buckets: 0.5, 1, 2.5 s) was 635 ms once. 2500 ms is a bucket edge: fewer
        # than 1% of the canary's requests may take longer.
        deployment["spec"]["rollout"]["analysis"]["maxLatencyP99Ms"] = 2500
        assert deployment["spec"]["model"] == {"fromTraining": "iris"}
        cluster.apply(deployment)
        md = objects.wait(KIND, "iris", lambda o: (condition(o, "Ready") or {}).get("status") == "True",
                          timeout=POD_READY_TIMEOUT, what="ModelDeployment Ready on Seldon")
        _timed(timings, "seldon v1 Ready (Pods up)", start)
        assert md["status"]["stableVersion"] == "1"
        sdep = custom.get_namespaced_custom_object("machinelearning.seldon.io", "v1", ns, "seldondeployments", "iris")
        assert sdep["status"]["state"] == "Available"
        pods = core.list_namespaced_pod(ns, label_selector="seldon-deployment-id=iris").items
        assert pods and all(p.spec.node_name == node_cluster.devnode.NODE_NAME for p in pods)
        (pod,) = [p for p in pods if p.metadata.deletion_timestamp is None]
        init = [c for c in pod.spec.init_containers if c.args and c.args[0] == v1_uri]
        assert init and init[0].image == seldon.images["rclone"], [c.image for c in pod.spec.init_containers]
        assert {c.image for c in pod.spec.containers} == {seldon.images["mlserver"], seldon.images["executor"]}

        # The endpoint in status is the routing Service's URL (named like the ModelDeployment, over every
        # predictor's Pods: no mesh here), callable as it is (endpoint + /infer).
        endpoint = md["status"]["endpoint"]
        url = urllib.parse.urlparse(endpoint)
        assert url.hostname == f"iris.{ns}.svc.cluster.local" and url.path == "/v2/models/iris", endpoint
        # The routing Service is written once Seldon took the SeldonDeployment on, seconds before its Pods
        # were ready; CoreDNS may still take a moment to serve its name.
        def resolved() -> str | None:
            try:
                return resolve(url.hostname, node_cluster.devnode.NODE_IP)
            except AssertionError:
                return None

        service_ip = wait_until(resolved, timeout=30, interval=0.5, what=f"{url.hostname} resolved by CoreDNS")
        assert service_ip == core.read_namespaced_service("iris", ns).spec.cluster_ip
        callable_endpoint = endpoint.replace(url.hostname, service_ip, 1)  # the host has no cluster DNS
        # The stable predictor's own Service (Seldon's), for what only the stable predictor must answer.
        stable_endpoint = f"http://{core.read_namespaced_service('iris-stable', ns).spec.cluster_ip}:8000/v2/models/iris"

        # Seldon says Available once the Pods are; kube-proxy programs the Service's rules on its own
        # clock, so the first call is sent once its rules name an endpoint: before that, a packet to the
        # ClusterIP leaves this machine by its default route (the likely source of the HTTP 404 that a
        # Service written moments before the first call once got).
        wait_until(lambda: proxied_endpoints(ns, "iris") >= 1, timeout=30, interval=0.5,
                   what="kube-proxy's rules for the routing Service")

        def answer_of(endpoint: str, rows: list[list[float]] = ROWS) -> Callable[[], dict[str, Any] | None]:
            def answer() -> dict[str, Any] | None:
                try:
                    return v2_infer(f"{endpoint}/infer", rows, timeout=5)
                except urllib.error.URLError:
                    return None
            return answer

        answer = wait_until(answer_of(callable_endpoint), timeout=30, interval=1, what="the endpoint answering after Ready")
        assert answer["model_name"] == "iris" and answer["model_version"] == "1"
        assert [int(x) for x in answer["outputs"][0]["data"]] == expected["1"]

        # 3. Normal, labelled traffic through the endpoint (hack/demo.py's Traffic, its labels on S3): the
        # executors' request logger posts each request to the operator's sink, which writes the inference
        # log on S3, and the DriftMonitor sees no drift against version 1's training profile.
        start = time.monotonic()
        traffic = demo.Traffic(callable_endpoint, "iris", labels_uri)
        traffic.burst(300)
        assert traffic.failed == 0 and traffic.versions == {"1": 300}, (traffic.failed, traffic.versions)
        monitor = demo.with_labels(demo.example("driftmonitor.yaml"), labels_uri)
        monitor["spec"]["interval"] = "5s"
        cluster.apply(monitor)
        dm = objects.wait("DriftMonitor", "iris", lambda o: o.get("status", {}).get("phase") == "NoDrift",
                          timeout=180, what="a check of the Seldon-served traffic without drift")
        assert dm["status"]["sampleSize"] >= 100 and dm["status"]["modelVersion"] == "1", dm["status"]
        assert dm["status"]["referenceUri"] == f"{v1_uri}/profile.json"
        _timed(timings, "seldon loop: NoDrift against v1", start)

        # 4. Shifted, labelled traffic (petals read 2 cm longer; the last 4 rows from a broken sensor):
        # DriftDetected, and the DriftMonitor asks the ModelTraining for a retrain with its window. 512
        # rows: the request logger writes the inference log to S3 per 256 rows (or every 5 s), so the
        # whole burst is on S3 as it ends, not up to 5 s later. (Before the DriftMonitor flushed the sink
        # ahead of its retrain request, a warm retrain once read 337 of 400 rows, without the glitches.)
        start = time.monotonic()
        traffic.burst(512, shift=2.0, glitches=4)
        assert traffic.failed == 0, traffic.failed
        dm = objects.wait("DriftMonitor", "iris", lambda o: condition(o, "DriftDetected").get("status") == "True",
                          timeout=180, what="DriftDetected on the shifted traffic")
        assert dm["status"]["modelVersion"] == "1"
        drifted = {r["feature"] for r in dm["status"].get("results", []) if any(t.get("drifted") for t in r.get("tests", []))}
        assert drifted and all(f.startswith("petal") for f in drifted), dm["status"]
        _timed(timings, "seldon loop: DriftDetected", start)

        # 5. The retrain learns from the production rows Seldon served, joined with their labels by the
        # callers' request ids, and publishes version 2, which beats version 1 on them.
        start = time.monotonic()
        mt = objects.wait("ModelTraining", "iris",
                          lambda o: (o.get("status", {}).get("latestValidatedModel") or {}).get("version") == 2,
                          timeout=600, what="model version 2 retrained")
        _timed(timings, "seldon loop: v2 retrained", start)
        run = mt["status"]["latestRun"]
        assert run["trigger"].startswith("retrain requested:"), run["trigger"]
        assert run["retrainWindow"]["monitor"] == "iris"
        sources = {source["name"]: source for source in run["sources"]}
        assert sources["production"]["rows"] >= 300 and sources["production"]["rejectedRows"] == 4, sources
        comparison = run["comparison"]
        assert comparison["holdout"] == "production" and comparison["champion"]["version"] == 1
        assert comparison["challenger"]["metrics"]["accuracy"] - comparison["champion"]["metrics"]["accuracy"] >= 0.3
        v2_uri = mt["status"]["latestValidatedModel"]["uri"]
        expected["2"] = direct_predictions(s3, v2_uri)

        # 6. Version 2 rolls out as a canary by itself: its own predictor, Deployment and Service; at 33%
        # without a mesh, 2 stable replicas and 1 canary replica. Shifted, labelled traffic keeps flowing
        # (what the analysis counts).
        start = time.monotonic()
        traffic.start_background(per_second=10, shift=2.0)

        def canary_serves() -> dict[str, Any] | None:
            try:
                svc = core.read_namespaced_service("iris-canary", ns)
                out = v2_infer(f"http://{svc.spec.cluster_ip}:8000/v2/models/iris/infer", ROWS, timeout=5)
            except (ApiException, AssertionError, OSError):
                return None
            return out

        canary = wait_until(canary_serves, timeout=POD_READY_TIMEOUT, interval=1, what="canary predictor serving")
        _timed(timings, "seldon v2 canary serving", start)
        assert canary["model_version"] == "2" and [int(x) for x in canary["outputs"][0]["data"]] == expected["2"]
        # The stable predictor still serves version 1 meanwhile.
        assert v2_infer(f"{stable_endpoint}/infer", ROWS)["model_version"] == "1"

        # The step runs with the split the replicas give, reported in status.traffic.
        def split_reported(o: dict[str, Any]) -> bool:
            weights = {t["predictor"]: t["weight"] for t in o["status"].get("traffic") or []}
            return weights == {"stable": 67, "canary": 33}

        objects.wait(KIND, "iris", split_reported, timeout=POD_READY_TIMEOUT, what="the 2:1 split reported")
        sdep = custom.get_namespaced_custom_object("machinelearning.seldon.io", "v1", ns, "seldondeployments", "iris")
        assert [(p["name"], p["replicas"]) for p in sdep["spec"]["predictors"]] == [("stable", 2), ("canary", 1)]
        wait_until(lambda: proxied_endpoints(ns, "iris") == 3, timeout=60, interval=0.5,
                   what="kube-proxy routing iris over the 3 ready Pods")
        _timed(timings, "seldon split ready (2 stable + 1 canary)", start)

        # The split through the routing Service, on the node's real kube-proxy: one new connection per
        # request, within the step's pause (the background traffic goes on beside it).
        start = time.monotonic()
        # Four at a time (each its own connection, so kube-proxy's choices stay independent): 400 requests
        # one by one took up to 36 s on the loaded machine, close to the step's end.
        with ThreadPoolExecutor(4) as pool:
            versions = list(pool.map(lambda _: v2_infer(f"{callable_endpoint}/infer", ROWS[:1], timeout=10)
                                     ["model_version"], range(SPLIT_REQUESTS)))
        answers = dict(Counter(versions))
        low, high = binom.interval(1 - SPLIT_ALPHA, SPLIT_REQUESTS, 1 / 3)
        canary_share = answers.get("2", 0)
        assert set(answers) == {"1", "2"} and low <= canary_share <= high, (
            f"canary answered {canary_share} of {SPLIT_REQUESTS} (expected {low:.0f}..{high:.0f}): {answers}")
        # Measured within the step: version 2 was not promoted (and the canary not scaled away) meanwhile.
        assert objects.get(KIND, "iris")["status"]["stableVersion"] == "1", "promoted during the measurement"
        _timed(timings, "seldon split measured", start)
        SUMMARY.append(f"seldon split without a mesh (weight {SPLIT_WEIGHT}, 2+1 replicas): canary "
                       f"{canary_share}/{SPLIT_REQUESTS} = {100 * canary_share / SPLIT_REQUESTS:.1f}% "
                       f"(binomial 1-{SPLIT_ALPHA:g} interval {low:.0f}..{high:.0f})")

        # 7. The step is analysed from Prometheus (the canary's executor metrics, scraped through
        # Kubernetes SD) and version 2 is promoted automatically: the stable predictor serves it, the
        # canary predictor is gone.
        start = time.monotonic()
        def promoted(o: dict[str, Any]) -> bool:
            assert "2" not in (o["status"].get("rejectedVersions") or []), condition(o, "Degraded")
            return o["status"].get("stableVersion") == "2" and (condition(o, "Ready") or {}).get("status") == "True"

        md = objects.wait(KIND, "iris", promoted, timeout=POD_READY_TIMEOUT, what="version 2 promoted automatically")
        _timed(timings, "seldon v2 promoted", start)
        assert md["status"]["lastRollout"]["result"] == "promoted"
        analysis = md["status"]["lastAnalysis"]
        assert analysis["source"] == "prometheus" and analysis["passed"], analysis
        assert analysis["requests"] >= 20, analysis  # minRequests
        # Over the last minutes: the canary's Pod is gone once promoted, and Prometheus marks its series stale
        # at the next scrape, so an instant query may no longer return it.
        scraped = prometheus.query(f'sum by (predictor_name) (max_over_time(seldon_api_executor_server_requests_seconds_count'
                                   f'{{namespace="{ns}",deployment_name="iris"}}[15m]))')
        assert {r["metric"]["predictor_name"] for r in scraped} >= {"stable", "canary"}, scraped

        def stable_serves_v2() -> dict[str, Any] | None:
            try:
                out = v2_infer(f"{stable_endpoint}/infer", ROWS, timeout=5)
            except (AssertionError, OSError):  # refused, or a 500 while a Pod is replaced
                return None
            return out if out["model_version"] == "2" else None

        answer = wait_until(stable_serves_v2, timeout=POD_READY_TIMEOUT, interval=1, what="stable serves version 2")
        _timed(timings, "seldon v2 served by stable", start)
        assert [int(x) for x in answer["outputs"][0]["data"]] == expected["2"]
        sdep = custom.get_namespaced_custom_object("machinelearning.seldon.io", "v1", ns, "seldondeployments", "iris")
        assert [p["name"] for p in sdep["spec"]["predictors"]] == ["stable"]
        wait_until(lambda: not [d for d in client.AppsV1Api(node_api).list_namespaced_deployment(ns).items
                                if "-canary-" in d.metadata.name], timeout=120, what="canary Deployment removed")

        # 8. The still shifted traffic is no drift against version 2 (what it was trained on).
        start = time.monotonic()
        dm = objects.wait("DriftMonitor", "iris", lambda o: o.get("status", {}).get("phase") == "NoDrift"
                          and o["status"].get("modelVersion") == "2", timeout=240, what="NoDrift against version 2")
        assert dm["status"]["referenceUri"] == f"{v2_uri}/profile.json"
        _timed(timings, "seldon loop: NoDrift against v2", start)
        traffic.stop()
        # Every request was answered, but for a few while a predictor's Pods were replaced (promotion; the
        # stable predictor back to 1 replica): Seldon 1.17.1's executor stops listening on SIGTERM and has
        # no preStop delay, so kube-proxy may still pick a Pod being stopped for about a second (README,
        # "Canary and shadow on Seldon"); on a starved node (load average 19 on the 2 cores) the kubelet also
        # restarted MLServers whose liveness probe timed out, and their executors answered 500, or 404 while
        # the model reloaded, until the readiness probe caught up. At most 1%, and never a 400 (a request
        # our side got wrong).
        total = traffic.sent + traffic.failed
        assert not [e for e in traffic.errors if e.startswith("HTTP 4") and e != "HTTP 404"] \
            and traffic.failed <= total // 100, f"{traffic.failed} of {total} requests failed: {traffic.errors}"
        SUMMARY.append(f"seldon loop: {total} labelled requests, answers per version {traffic.versions}, "
                       f"failed {traffic.errors or 0}")
        mt = objects.get("ModelTraining", "iris")
        assert mt["metadata"]["generation"] == 1 and objects.get(KIND, "iris")["metadata"]["generation"] == 1

        # The inference log the sink wrote on S3 has each predictor's and version's answers to ROWS.
        def logged() -> dict[tuple[str, str], list[int]] | None:
            fs, base = artifacts.open_fs(f"{root}/inference/{ns}/iris")
            seen: dict[tuple[str, str], list[int]] = {}
            for path in fs.find(base):
                if path.endswith(".jsonl"):
                    for line in fs.cat_file(path).decode().splitlines():
                        record = json.loads(line)
                        if record.get("status") == 200 and record.get("outputs") and \
                                len(record["outputs"][0]["data"]) == len(ROWS):
                            seen[(record["predictor"], record["modelVersion"])] = record["outputs"][0]["data"]
            return seen if {("stable", "1"), ("canary", "2"), ("stable", "2")} <= set(seen) else None

        records = wait_until(logged, timeout=60, interval=1, what="the inference log of every predictor and version")
        assert records[("stable", "1")] == expected["1"] and records[("canary", "2")] == expected["2"]
        assert records[("stable", "2")] == expected["2"]

        # The Grafana dashboard's and the alerts' metric names were really scraped by this Prometheus,
        # except those only a local backend's router exports (none runs here).
        used = dashboard_and_alert_metric_names()

        def not_scraped() -> set[str]:
            return used - prometheus.metric_names() - not_in_a_seldon_run(used)

        try:
            wait_until(lambda: not not_scraped(), timeout=30, interval=1, what="the dashboard's and alerts' metrics")
        except AssertionError:
            raise AssertionError(f"used by the dashboard or the alerts, never scraped: {sorted(not_scraped())}") from None
        assert {"seldon_api_executor_server_requests_seconds_count", "mlops_deployment_ready",
                "mlops_rollouts_total", "mlops_retrain_requests_total"} <= prometheus.metric_names()
        objects.delete("DriftMonitor", "iris")
        _timed(timings, "seldon loop: operator-driven v1 -> v2", t0)

        # 9. Version 3 cannot load: its canary Pod crash-loops, Seldon reports Failed after the progress
        # deadline (30 s here), the condition names the failing container, version 3 is rejected and
        # the stable predictor keeps serving version 2 throughout.
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as scratch:
            broken = Path(scratch) / "model.joblib"
            broken.write_bytes(b"not a model")
            v3 = artifacts.publish_model_version(root, ns, "iris", artifacts.allocate_version(root, ns, "iris"),
                                                 model_file=broken, metrics={"accuracy": 0.95}, validated=True,
                                                 reasons=[], profile={}, lineage={"test": "broken"})
        # Pinned by hand (a training never publishes a model that cannot load): the spec leaves fromTraining.
        objects.patch(KIND, "iris", {"spec": {"model": {"fromTraining": None, "uri": v3["uri"], "version": "3",
                                                        "name": "iris"}, "progressDeadlineSeconds": 30}})
        md = objects.wait(KIND, "iris", lambda o: "3" in (o["status"].get("rejectedVersions") or []),
                          timeout=240, what="version 3 rejected")
        _timed(timings, "seldon v3 failed and rejected", start)
        degraded = condition(md, "Degraded") or {}
        assert degraded.get("status") == "True", md["status"]["conditions"]
        # The failing container named: its exit (MLServer exits when the model cannot load), or, when the
        # deadline passed while it was still starting (a loaded node), that it runs but is not ready.
        assert "Pod iris-canary-0-iris-" in degraded["message"] and ", container iris: " in degraded["message"] \
            and ("exit code" in degraded["message"] or "not ready" in degraded["message"]), degraded
        SUMMARY.append(f"seldon v3: {degraded['message']}")
        assert md["status"]["stableVersion"] == "2"

        # Through the stable predictor's Service and the routing Service. The stable predictor is scaled
        # back from 2 replicas to 1 now, and a connection kube-proxy still sends to the Pod being stopped
        # is refused for a moment (Seldon's executor stops listening on SIGTERM, before kube-proxy has
        # dropped the endpoint; seen in CI on the stable Service too).
        assert wait_until(answer_of(stable_endpoint), timeout=30, interval=0.5,
                          what="the stable Service answering")["model_version"] == "2"
        assert wait_until(answer_of(callable_endpoint), timeout=30, interval=0.5,
                          what="the routing Service answering")["model_version"] == "2"
        objects.wait(KIND, "iris", lambda o: (condition(o, "Ready") or {}).get("status") == "True"
                     and [p["name"] for p in custom.get_namespaced_custom_object(
                         "machinelearning.seldon.io", "v1", ns, "seldondeployments", "iris")["spec"]["predictors"]]
                     == ["stable"], timeout=180, what="back to the stable predictor alone")
        _timed(timings, "seldon back to stable after v3", start)

        # The S3 credentials (the operator's environment, the models Secret) are in no status, event or
        # log of the operator or its training runs, nor in the SeldonDeployment it wrote (which names the
        # Secret).
        from secret_scan import assert_no_secrets

        logs: dict[str, str | Path] = {"operator": operator.log_path, "SeldonDeployment": json.dumps(
            custom.get_namespaced_custom_object("machinelearning.seldon.io", "v1", ns, "seldondeployments", "iris"))}
        for runner_log in sorted((operator.data_dir / "runs" / ns).glob("*/runner.log")):
            logs[f"run {runner_log.parent.name}"] = runner_log
        assert len(logs) >= 4, sorted(logs)  # the operator, the SeldonDeployment and both training runs
        assert_no_secrets(node_api, ns, [s3.access_key, s3.secret_key], logs=logs)
    except BaseException:
        print("\n".join(line for line in operator.logs().splitlines()
                        if "Timer 'observe' succeeded" not in line)[-8000:])
        print(seldon.log_tail(40))
        print_namespace(node_api, ns)
        raise
    finally:
        if traffic is not None:
            traffic.stop()
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=120, what="our objects deleted")
        operator.stop()
        prometheus.stop()
    _timed(timings, "seldon lifecycle total", t0)
    SUMMARY.append("seldon e2e: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if "seldon" in k))


def print_namespace(api: Any, ns: str) -> None:
    """For a failed test: our objects' phases and conditions, the Pods, and the namespace's last events
    (what happened to Pods and Deployments that are gone by now, and the operator's own news)."""
    from kubernetes import client

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    for plural in ("modeldeployments", "modeltrainings", "driftmonitors"):
        for obj in custom.list_namespaced_custom_object("mlops.dev", "v1alpha1", ns, plural)["items"]:
            status = obj.get("status") or {}
            print(plural, obj["metadata"]["name"], "phase", status.get("phase"), "rollout", status.get("rollout"))
            for c in status.get("conditions") or []:
                print("   ", c.get("type"), c.get("status"), c.get("reason"), (c.get("message") or "")[:300])
    for p in core.list_namespaced_pod(ns).items:
        print(p.metadata.name, p.status.phase, [(c.name, c.state) for c in (p.status.container_statuses or [])])
    for e in sorted(core.list_namespaced_event(ns).items, key=lambda e: str(e.last_timestamp or e.event_time))[-60:]:
        print(e.last_timestamp or e.event_time, e.involved_object.kind, e.involved_object.name, e.reason,
              (e.message or "")[:300])


def virtual_service_layout(vs: dict[str, Any], ns: str) -> tuple:
    """What a VirtualService Seldon wrote routes: the HTTP route's (predictor, weight) pairs and its
    mirror (predictor, percent), with the gRPC route checked to say the same."""
    suffix = f".{ns}.svc.cluster.local"
    layouts = []
    for route in vs["spec"]["http"]:
        weights = tuple((d["destination"]["host"].removesuffix(suffix).removeprefix("iris-"), d.get("weight"))
                        for d in route.get("route") or [])
        mirror = route.get("mirror")
        mirrored = None
        if mirror:
            mirrored = (mirror["host"].removesuffix(suffix).removeprefix("iris-"),
                        (route.get("mirrorPercentage") or {}).get("value", 100))
        layouts.append((weights, mirrored))
    assert len(layouts) == 2 and layouts[0] == layouts[1], f"HTTP and gRPC routes differ: {layouts}"
    return layouts[0]


def test_istio_virtual_service_follows_the_rollout_steps(node_cluster, node_api, seldon, s3, seldon_namespace,
                                                         tmp_path, monkeypatch):
    """MLOPS_SELDON_ROUTING=istio, with Seldon's controller installed with ``istio.enabled`` and Istio's
    VirtualService and DestinationRule CRDs from istio.io/api v1.32.0: at each step of a shadow →
    canary 25% → canary 60% → promoted rollout, the VirtualService Seldon writes routes what our step
    says (weights, and the mirror with our mirrorPercent). Istio itself does not run here (no Envoy):
    the objects are checked, not the traffic; the API server validates them against Istio's schemas.
    Last, an automatic canary without a metrics source is refused before any traffic."""
    from kubernetes import client

    from istio_support import ISTIO_API_VERSION, istio_crds

    ns, timings, kc = seldon_namespace, node_cluster.timings, node_cluster.kubeconfig
    custom = client.CustomObjectsApi(node_api)
    start = time.monotonic()
    install_crds(node_api, istio_crds(), what=f"Istio CRDs (istio.io/api {ISTIO_API_VERSION})")
    # Seldon's controller as the chart runs it with istio.enabled (ISTIO_ENABLED, ISTIO_GATEWAY): one
    # controller at a time, so the module's (without Istio) stops first.
    seldon.stop()
    istio = SeldonInstall(node_api, kc, tmp_path / "seldon-istio", seldon.images, seldon.helm,
                          values={"istio.enabled": "true"}).start()
    assert istio.env()["ISTIO_ENABLED"] == "true"
    _timed(timings, "seldon istio: CRDs and controller", start)

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    root = f"s3://{s3.bucket}/{ns}"
    v1, v2 = publish_model(root, ns), publish_model(root, ns, c=0.001)
    create_models_secret(node_api, ns, s3)
    install_crds(node_api, [__import__("yaml").safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))])
    operator = OperatorProcess(kc, ns, tmp_path / "operator", env={
        **s3.env(), "MLOPS_ARTIFACT_ROOT": root, "MLOPS_SELDON_ROUTING": "istio", "MLOPS_SELDON_LOGGER_MODE": "never"}
    ).start()
    objects = Objects(node_api, ns)

    # Every distinct layout of the VirtualService, in order, polled beside the rollout.
    seen: list[tuple] = []

    def record() -> None:
        try:
            vs = custom.get_namespaced_custom_object("networking.istio.io", "v1alpha3", ns, "virtualservices", "iris")
        except client.exceptions.ApiException as error:
            if error.status == 404:
                return
            raise
        layout = virtual_service_layout(vs, ns)
        if not seen or seen[-1] != layout:
            seen.append(layout)

    def wait_recording(predicate, what: str, timeout: float = POD_READY_TIMEOUT) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            record()
            obj = objects.get(KIND, "iris")
            return obj if predicate(obj) else None
        return wait_until(probe, timeout=timeout, interval=0.25, what=what)

    try:
        start = time.monotonic()
        rollout = {"strategy": "shadow", "shadow": {"mirrorPercent": 50, "durationSeconds": 8},
                   "steps": [{"weight": 25, "pauseSeconds": 8}, {"weight": 60, "pauseSeconds": 8}],
                   "approval": "manual"}
        objects.create(deployment_body("iris", {"uri": v1["uri"], "version": "1", "name": "iris"}, rollout,
                                       backend="seldon", storageSecretName="s3-models", progressDeadlineSeconds=180,
                                       resources={"requests": {"cpu": "50m", "memory": "128Mi"}}))
        wait_recording(lambda o: (condition(o, "Ready") or {}).get("status") == "True" and seen,
                       "version 1 Ready and its VirtualService written")
        objects.patch(KIND, "iris", {"spec": {"model": {"uri": v2["uri"], "version": "2", "name": "iris"}}})
        md = wait_recording(lambda o: o["status"].get("phase") == "AwaitingApproval"
                            and seen and seen[-1] == ((("stable", 40), ("canary", 60)), None),
                            "shadow, canary 25%, canary 60% and the approval gate")
        assert [t["weight"] for t in md["status"]["traffic"]] == [40, 60]
        objects.patch(KIND, "iris", {"metadata": {"annotations": {"mlops.dev/approve": "2"}}})
        wait_recording(lambda o: o["status"].get("stableVersion") == "2" and not o["status"].get("rollout")
                       and len(seen) > 4 and seen[-1] == ((("stable", 100),), None), "promoted, stable at 100%")
        _timed(timings, "seldon istio rollout", start)
        assert seen == [
            ((("stable", 100),), None),                       # version 1
            ((("stable", 100),), ("shadow", 50)),             # shadow: every request to stable, half mirrored
            ((("stable", 75), ("canary", 25)), None),         # step 1
            ((("stable", 40), ("canary", 60)), None),         # step 2, held for approval
            ((("stable", 100),), None),                       # promoted: version 2 on the stable predictor
        ], seen
        rules = custom.list_namespaced_custom_object("networking.istio.io", "v1alpha3", ns, "destinationrules")
        hosts = {r["metadata"]["name"]: r["spec"]["host"] for r in rules["items"]}
        assert hosts.get("iris-stable") == f"iris-stable.{ns}.svc.cluster.local", hosts
        SUMMARY.append("seldon istio: VirtualService layouts " + " -> ".join(str(x) for x in seen))

        # With automatic promotion and no metrics source (this operator has no Prometheus), a canary would
        # pass its steps on their pauses alone: it is refused before any traffic, naming what to set.
        v3 = publish_model(root, ns, c=0.01)
        objects.patch(KIND, "iris", {"spec": {"model": {"uri": v3["uri"], "version": "3", "name": "iris"},
                                              "rollout": {"approval": "automatic"}}})
        md = objects.wait(KIND, "iris", lambda o: "3" in (o["status"].get("rejectedVersions") or []), timeout=60,
                          what="version 3 refused without a metrics source")
        degraded = condition(md, "Degraded") or {}
        assert degraded.get("reason") == "RolloutAborted" and "no request metrics source" in degraded["message"]
        assert "before any traffic" in degraded["message"] and md["status"]["stableVersion"] == "2"
        sdep = custom.get_namespaced_custom_object("machinelearning.seldon.io", "v1", ns, "seldondeployments", "iris")
        assert [p["labels"]["mlops.dev/model-version"] for p in sdep["spec"]["predictors"]] == ["2"]
    except BaseException:
        print("VirtualService layouts seen:", seen)
        print("\n".join(line for line in operator.logs().splitlines()
                        if "Timer 'observe' succeeded" not in line)[-6000:])
        print(istio.log_tail(40))
        print_namespace(node_api, ns)
        raise
    finally:
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=120, what="our objects deleted")
        operator.stop()
        istio.stop()
