"""The URI policy on the real operator: a tenant's URI that would make the operator read its own files,
a cloud metadata endpoint or a loopback service is InvalidSpec, naming the field and the rule, and
nothing is read (no run starts, the loopback server sees no request)."""

from __future__ import annotations

import copy
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kube_support import OperatorProcess, condition, load_example, wait_until

pytestmark = pytest.mark.cluster


def invalid(objects, kind: str, name: str, condition_type: str) -> str:
    obj = objects.wait(kind, name, lambda o: (condition(o, condition_type) or {}).get("reason") == "InvalidSpec",
                       what=f"{kind} {name} InvalidSpec")
    return condition(obj, condition_type)["message"]


def training(name: str, uri: str) -> dict:
    body = copy.deepcopy(load_example("training.yaml"))
    body["metadata"]["name"] = name
    body["spec"].pop("productionData", None)
    body["spec"]["dataset"] = {"uri": uri, "format": "csv", "target": "target"}
    return body


def test_refused_uris_are_invalid_and_nothing_is_read(operator, objects):
    requests: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"target,x\n0,1\n")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        objects.create(training("passwd", "file:///etc/passwd"))
        objects.create(training("metadata", "http://169.254.169.254/latest/meta-data/iam.csv"))
        objects.create(training("loopback", f"http://127.0.0.1:{server.server_port}/data.csv"))
        # Another run's training data in the operator's data dir (allowed by the tests' file roots: all of /tmp).
        objects.create(training("rundata", (operator.data_dir / "runs" / "team-b" / "iris-1" / "train.csv").as_uri()))
        # Another namespace's dataset in the data dir's tenant area.
        objects.create(training("otherdata", (operator.data_dir / "datasets" / "team-b" / "iris.csv").as_uri()))
        deployment = copy.deepcopy(load_example("deployment.yaml"))
        deployment["spec"]["model"] = {"uri": "file:///etc/ssl", "version": "1"}
        objects.create(deployment)
        # Ground-truth labels are read by the operator too (the retrain's extract step, the DriftMonitor).
        labelled = copy.deepcopy(load_example("training.yaml"))
        labelled["metadata"]["name"] = "labels"
        labelled["spec"]["productionData"]["labelsUri"] = "file:///etc/"
        objects.create(labelled)
        monitor = copy.deepcopy(load_example("driftmonitor.yaml"))
        monitor["spec"]["performance"]["labelsUri"] = "http://169.254.169.254/latest/labels.csv"
        objects.create(monitor)
        # Service endpoints a tenant names: called from the operator's network position (a KFP token with them).
        recorder = f"http://127.0.0.1:{server.server_port}"
        kfp = training("kfp-endpoint", "sklearn://iris")
        kfp["spec"]["backend"] = "kfp"
        kfp["spec"]["kfp"] = {"host": recorder}
        objects.create(kfp)
        prometheus = copy.deepcopy(load_example("deployment.yaml"))
        prometheus["metadata"]["name"] = "prometheus-endpoint"
        prometheus["spec"]["rollout"].setdefault("analysis", {})["prometheusUrl"] = f"{recorder}/prometheus"
        objects.create(prometheus)

        message = invalid(objects, "ModelTraining", "passwd", "Succeeded")
        assert "spec.dataset.uri: file:///etc/passwd refused by the URI policy" in message
        assert "outside the directories the operator may read (MLOPS_URI_FILE_ROOTS" in message
        message = invalid(objects, "ModelTraining", "metadata", "Succeeded")
        assert "spec.dataset.uri" in message and "169.254.169.254, a link-local address" in message
        assert "MLOPS_URI_ALLOWED_NETWORKS" in message
        message = invalid(objects, "ModelTraining", "loopback", "Succeeded")
        assert "a loopback address" in message
        message = invalid(objects, "ModelTraining", "rundata", "Succeeded")
        assert "is the operator's own state in its data dir" in message, message
        assert f"/labels/{objects.namespace}/ and " in message, message
        message = invalid(objects, "ModelTraining", "otherdata", "Succeeded")
        assert "datasets/team-b/iris.csv is not in this namespace's directories of the data dir" in message, message
        message = invalid(objects, "ModelDeployment", "iris", "Ready")
        assert "spec.model.uri: file:///etc/ssl refused by the URI policy" in message
        message = invalid(objects, "ModelTraining", "labels", "Succeeded")
        assert "spec.productionData.labelsUri: file:///etc/ refused by the URI policy" in message
        assert "outside the directories the operator may read (MLOPS_URI_FILE_ROOTS" in message
        message = invalid(objects, "DriftMonitor", "iris", "Ready")
        assert "spec.performance.labelsUri: http://169.254.169.254/latest/labels.csv refused by the URI policy" in message
        assert "a link-local address" in message

        message = invalid(objects, "ModelTraining", "kfp-endpoint", "Succeeded")
        assert f"spec.kfp.host: '{recorder}' is not an endpoint this operator may call (endpoint allow-list" in message
        assert "MLOPS_ENDPOINT_PREFIXES" in message, message
        message = invalid(objects, "ModelDeployment", "prometheus-endpoint", "Ready")
        assert (f"spec.rollout.analysis.prometheusUrl: '{recorder}/prometheus' is not an endpoint this operator may "
                "call") in message, message

        for name in ("passwd", "metadata", "loopback", "labels", "rundata", "otherdata", "kfp-endpoint"):
            assert not objects.get("ModelTraining", name).get("status", {}).get("latestRun")
        runs = operator.data_dir / "runs"
        assert not runs.exists() or not any(runs.rglob("request.json"))
        assert requests == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_to_a_forbidden_target_is_refused_when_the_dataset_is_read(kubeconfig, namespace, objects, tmp_path):
    """The dataset's host (127.0.0.1, allowed here) passes the check at validation; when the run reads it,
    it redirects to 127.0.0.2, a loopback address this operator may not reach: the run fails naming the rule,
    and the forbidden server is never asked."""
    asked: dict[str, list[str]] = {"allowed": [], "forbidden": []}

    def handler(name: str, location: str | None):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                asked[name].append(self.path)
                self.send_response(302 if location else 200)
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                if not location:
                    self.wfile.write(b"target,x\n0,1\n1,2\n")

            def log_message(self, *_: object) -> None:
                pass
        return Handler

    forbidden = ThreadingHTTPServer(("127.0.0.2", 0), handler("forbidden", None))
    allowed = ThreadingHTTPServer(("127.0.0.1", 0), handler("allowed", f"http://127.0.0.2:{forbidden.server_port}/x.csv"))
    for server in (forbidden, allowed):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    operator = OperatorProcess(kubeconfig, namespace, tmp_path / "operator",
                               env={"MLOPS_URI_ALLOWED_NETWORKS": "127.0.0.1/32"}).start()
    try:
        objects.create(training("redirected", f"http://127.0.0.1:{allowed.server_port}/data.csv"))
        mt = objects.wait("ModelTraining", "redirected",
                          lambda o: (o.get("status", {}).get("latestRun") or {}).get("state") == "Failed",
                          timeout=300, what="the run failed")
        message = mt["status"]["latestRun"].get("message") or ""
        assert f"http://127.0.0.2:{forbidden.server_port}/x.csv (redirected from http://127.0.0.1:" in message, message
        assert "refused by the URI policy" in message and "127.0.0.2, a loopback address" in message, message
        assert asked["allowed"] and asked["forbidden"] == []
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=120, what="deletion")
    finally:
        operator.stop()
        for server in (forbidden, allowed):
            server.shutdown()
            server.server_close()
