"""Self-healing end to end with the local backend: a promoted version that starts failing after N
requests is detected as an anomaly, explained, rolled back by the post-promotion guard, and
announced to a webhook (a real HTTP receiver on loopback, configured through a Secret).

The failure is injected the way it happens in production: version 2's model server dies after it
has served N requests, and keeps dying each time it is restarted (a crash loop), so the router
answers 502 for it. Nothing here writes the ModelDeployment's status.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from integration.deployment_support import alive, condition, deployment_body, infer, publish_model, recorded_pids
from kube_support import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KIND = "ModelDeployment"
SERVE_TIMEOUT = 180  # a model server start, on a shared and busy two-core machine
N_REQUESTS = 150
TOKEN = "hooks/T0/secret-token"


class Traffic(threading.Thread):
    """Steady client traffic: one request every ~20 ms, answers counted per version and status."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.stopped = endpoint, threading.Event()
        self.answers: list[tuple[str, int]] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                status, headers, _ = infer(self.endpoint, timeout=5)
                self.answers.append((headers.get("x-mlops-model-version", "-"), status))
            except OSError:
                self.answers.append(("-", 0))
            self.stopped.wait(0.02)

    def served_by(self, version: str) -> int:
        return sum(1 for v, status in self.answers if v == version and status == 200)


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def log_message(self, *_args) -> None:
        pass

    def do_POST(self) -> None:
        assert self.path == f"/{TOKEN}"
        Receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_promoted_version_that_starts_failing_is_rolled_back(objects, operator, namespace, kube_api):
    from kubernetes import client

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.bodies = []
    client.CoreV1Api(kube_api).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="mlops-notifications"),
        data={"url": base64.b64encode(f"http://127.0.0.1:{server.server_port}/{TOKEN}".encode()).decode(),
              "format": base64.b64encode(b"alertmanager").decode()}))

    root = (operator.data_dir / "artifacts").resolve().as_uri()
    v1, v2 = publish_model(root, namespace), publish_model(root, namespace, c=0.1)
    source = lambda info: {"uri": info["uri"], "version": str(info["version"]), "name": "iris"}  # noqa: E731
    objects.create(deployment_body(
        "iris", source(v1), {"strategy": "direct", "postPromotion": {"bakeSeconds": 600}},
        anomalyDetection={"intervalSeconds": 2, "minDurationSeconds": 4, "warmupPoints": 5}, region="us-east-1"))
    obj = objects.wait(KIND, "iris", lambda o: condition(o, "Ready").get("status") == "True", timeout=SERVE_TIMEOUT,
                       what="version 1 serving")
    traffic = Traffic(obj["status"]["endpoint"])
    traffic.start()
    killer_stop = threading.Event()
    try:
        # Version 2 is promoted and serves N requests without trouble.
        objects.patch(KIND, "iris", {"spec": {"model": source(v2)}})
        objects.wait(KIND, "iris", lambda o: o["status"].get("stableVersion") == "2"
                     and (o["status"].get("lastRollout") or {}).get("result") == "promoted",
                     timeout=SERVE_TIMEOUT, what="version 2 promoted")
        wait_until(lambda: traffic.served_by("2") >= N_REQUESTS, timeout=60, what=f"{N_REQUESTS} requests on v2")
        # The fault comes once the detector judges version 2's error rate (a fault during the warm-up
        # would be learned as its normal: the operator says when that is over).
        judged = f'mlops_anomaly_learning{{metric="errorRate",name="iris",namespace="{namespace}"}} 0.0'
        wait_until(lambda: judged in operator.metrics(), timeout=120, what="the error-rate baseline learned")
        obj = objects.get(KIND, "iris")
        assert condition(obj, "Anomalous")["status"] == "False", condition(obj, "Anomalous")
        cost = obj["status"]["cost"]
        assert cost["instanceType"] == "t3.large" and cost["requestsPerSecond"] > 1
        assert cost["perThousandPredictions"] == pytest.approx(
            cost["monthly"] / (cost["requestsPerSecond"] * 3600 * 730) * 1000, rel=1e-3)

        # Then its model server dies, and again each time it is restarted.
        def kill_version_2() -> None:
            while not killer_stop.is_set():
                pid = recorded_pids(operator.data_dir, namespace, "iris").get("model-v2")
                if pid and alive(pid):
                    os.kill(pid, signal.SIGKILL)
                killer_stop.wait(0.2)

        failing_since = time.monotonic()
        threading.Thread(target=kill_version_2, daemon=True).start()

        obj = objects.wait(KIND, "iris", lambda o: (o["status"].get("lastRollout") or {}).get("result") == "rolledback",
                           timeout=120, what="rolled back by the post-promotion guard")
        detected = time.monotonic() - failing_since
        record = obj["status"]["lastRollout"]
        assert record["version"] == "2" and "automatically" in record["message"]
        # A dying server shows up as errors or as slow answers, whichever band is crossed for long
        # enough first; the guard acts on either, and its message names the one it acted on.
        guarded = [m for m in ("errorRate", "latencyP99Ms") if f"version 2 {m} " in record["message"]]
        assert len(guarded) == 1 and "bake period 600s" in record["message"], record["message"]
        assert "2" in obj["status"]["rejectedVersions"]
        anomaly = next(a for a in obj["status"]["anomalies"] if a["metric"] == guarded[0])
        assert anomaly["version"] == "2" and anomaly["observed"] > anomaly["high"] and anomaly["since"]
        assert anomaly["cause"].startswith("Likely cause: ")
        # Events are posted in the background (kopf's poster): the status can be read before they land.
        events = wait_until(lambda: (seen := {e.reason: e for e in objects.events("iris")}) and
                            {"AnomalyOpened", "RolledBack"} <= set(seen) and seen, timeout=30,
                            what="the AnomalyOpened and RolledBack events")
        assert "automatically" in events["RolledBack"].message and events["RolledBack"].type == "Warning"
        # The crash loop was reported with the server's last termination reason.
        crash = [e for e in objects.events("iris") if e.reason in ("ServerRestarting", "ServerCrashLoop")]
        assert crash and "exited" in crash[0].message
        killer_stop.set()

        # Version 1 serves again; version 2 is not tried again.
        obj = objects.wait(KIND, "iris", lambda o: o["status"].get("stableVersion") == "1"
                           and condition(o, "Ready").get("status") == "True" and not o["status"].get("candidateVersion"),
                           timeout=SERVE_TIMEOUT, what="version 1 serving again")
        served = traffic.served_by("1")
        wait_until(lambda: traffic.served_by("1") >= served + 20, timeout=30, what="traffic on version 1")
        print(f"\n[figures] version 2 failing -> rolled back (detected and decided) in {detected:.1f}s")
    finally:
        killer_stop.set()
        traffic.stopped.set()

    # The webhook got one message per incident: the anomaly, the rollback.
    wait_until(lambda: any(a["labels"]["alertname"] == "MlopsRolloutFailed" for b in Receiver.bodies
                           for a in b["alerts"]), timeout=30, what="rollback notified")
    alerts = [a for body in Receiver.bodies for a in body["alerts"]]
    names = [a["labels"]["alertname"] for a in alerts if a["status"] == "firing"]
    # The guard's decision, the rollback's completion and version 2's rejection are one incident.
    assert names.count("MlopsAnomaly") >= 1 and names.count("MlopsRolloutFailed") == 1, names
    opened = [a for a in alerts if a["labels"].get("incident") == "2/errorRate" and a["status"] == "firing"]
    assert len(opened) == 1, alerts
    assert all(body["commonLabels"] == {"namespace": namespace, "name": "iris", "kind": "ModelDeployment"}
               for body in Receiver.bodies)
    assert TOKEN not in operator.logs()
    server.shutdown()
