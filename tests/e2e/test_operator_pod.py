"""The operator as a Pod, installed by its own chart from the image built from the repository's
Dockerfile, on the local node under Pod Security ``restricted``: train, serve, metrics through its
Service, liveness on /healthz, an upgrade that rolls the Pod, a Pod deleted mid-training, uninstall."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from chart_support import CHART, helm, kubectl
from kube_support import REPO, Objects, condition, load_example, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RUN_TIMEOUT = 420  # one training run on 2 shared cores, in a Pod


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def operator_pod(kubeconfig: str, ns: str) -> dict[str, Any]:
    """The leader's Pod (labelled mlops.dev/leader=true by the leader itself); never two of them."""
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator",
                              "-o", "json", kubeconfig=kubeconfig).stdout)["items"]
    leaders = [p for p in pods if (p["metadata"].get("labels") or {}).get("mlops.dev/leader") == "true"
               and not p["metadata"].get("deletionTimestamp")]
    assert len(leaders) <= 1, [p["metadata"]["name"] for p in leaders]
    return leaders[0] if leaders else {}


def ready_pod(kubeconfig: str, ns: str, other_than: str = "") -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod = operator_pod(kubeconfig, ns)
        if not pod or pod["metadata"]["uid"] == other_than:
            return None
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        return pod if conds.get("Ready") == "True" else None

    return wait_until(probe, timeout=240, interval=1, what="operator Pod Ready and leading")


def exec_in(kubeconfig: str, ns: str, pod: str, *cmd: str, check: bool = True) -> Any:
    return kubectl("exec", "-n", ns, pod, "-c", "operator", "--", *cmd, kubeconfig=kubeconfig, check=check)


def test_operator_pod_installed_by_the_chart(node_cluster, node_kubeconfig, node_api, node_namespace):
    kc, ns, release = node_kubeconfig, node_namespace, "mlops"
    image = node_cluster.image("operator")
    repo, tag = image.ref.rsplit(":", 1)
    values = ["--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
              "--set", "operator.pollIntervalSeconds=1", "--set", "operator.logFormat=text",
              # The test trains with backend local inside the operator Pod, which the chart refuses by default.
              "--set", "operator.localTrainingInPod=true"]
    helm("install", release, str(CHART), "-n", ns, *values, "--wait", "--timeout", "5m", kubeconfig=kc)
    objects = Objects(node_api, ns)
    try:
        pod = ready_pod(kc, ns)
        name, pod_ip = pod["metadata"]["name"], pod["status"]["podIP"]
        assert pod["spec"]["nodeName"] == node_cluster.devnode.NODE_NAME
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        # The image runs this checkout's code (a stale build cache once installed an older wheel).
        source = "import hashlib,pathlib,mlops_operator as m;r=pathlib.Path(m.__file__).parent;print(" \
                 "hashlib.sha256(b''.join(p.relative_to(r).as_posix().encode()+p.read_bytes() " \
                 "for p in sorted(r.rglob('*.py')))).hexdigest())"
        here = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True,
                              cwd="/", env={**os.environ, "PYTHONPATH": str(REPO / "operator")}).stdout
        assert exec_in(kc, ns, name, "python3", "-c", source).stdout == here
        # The image's user and the chart's read-only root filesystem hold inside the container.
        assert exec_in(kc, ns, name, "id", "-u").stdout.strip() == "65532"
        denied = exec_in(kc, ns, name, "touch", "/opt/x", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        # The probes' endpoint, straight from the host over the bridge.
        probe = pod["spec"]["containers"][0]["livenessProbe"]["httpGet"]
        assert probe["path"] == "/healthz"
        assert _get(f"http://{pod_ip}:8081/healthz")[0] == 200

        # Train, then serve with the local backend inside the Pod.
        training = load_example("training.yaml")
        # The label feed in this namespace's own directory of the chart's data dir (the example's is default's).
        training["spec"]["productionData"]["labelsUri"] = f"file:///var/lib/mlops-operator/labels/{ns}/iris/"
        objects.create(training)
        mt = objects.wait("ModelTraining", "iris", lambda o: o.get("status", {}).get("phase") in ("Succeeded", "Failed"),
                          timeout=RUN_TIMEOUT, what="first training run")
        assert mt["status"]["phase"] == "Succeeded", mt["status"]
        assert mt["status"]["latestValidatedModel"]["version"] == 1
        objects.create(load_example("deployment.yaml"))
        md = objects.wait("ModelDeployment", "iris",
                          lambda o: (condition(o, "Ready") or {}).get("status") == "True" and o["status"].get("endpoint"),
                          timeout=300, what="ModelDeployment Ready")
        endpoint = md["status"]["endpoint"]
        request = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                          "data": [5.1, 3.5, 1.4, 0.2]}]})
        answer = exec_in(kc, ns, name, "python3", "-c",
                         "import sys,urllib.request as u;r=u.Request(sys.argv[1]+'/infer',data=sys.argv[2].encode(),"
                         "headers={'Content-Type':'application/json'});print(u.urlopen(r,timeout=20).read().decode())",
                         endpoint, request).stdout
        assert json.loads(answer)["outputs"][0]["data"] == [0]

        # /metrics through the chart's Service (ClusterIP via kube-proxy).
        svc = json.loads(kubectl("get", "svc", f"{release}-mlops-operator-metrics", "-n", ns, "-o", "json",
                                 kubeconfig=kc, check=False).stdout or "{}")
        if not svc:
            svc = next(s for s in json.loads(kubectl("get", "svc", "-n", ns, "-o", "json", kubeconfig=kc).stdout)["items"]
                       if s["metadata"]["name"].endswith("-metrics"))
        ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]
        code, text = _get(f"http://{ip}:{port}/metrics")
        assert code == 200
        assert 'mlops_reconcile_total{kind="ModelTraining"' in text
        assert 'mlops_training_runs_total{result="succeeded"} 1.0' in text
        assert f'mlops_deployment_ready{{name="iris",namespace="{ns}"}} 1.0' in text

        # Delete the Pod in the middle of a run: the new Pod reports the lost run once and starts
        # no second run by itself; a new request then trains again.
        objects.patch("ModelTraining", "iris", {"metadata": {"annotations": {
            "mlops.dev/retrain-requested": "2026-11-29T00:00:00Z by the e2e test"}}})
        objects.wait("ModelTraining", "iris", lambda o: o["status"].get("phase") == "Running", timeout=120,
                     what="retrain running")
        kubectl("delete", "pod", "-n", ns, name, "--wait=true", kubeconfig=kc)
        pod = ready_pod(kc, ns, other_than=pod["metadata"]["uid"])
        mt = objects.wait("ModelTraining", "iris", lambda o: o["status"].get("phase") in ("Succeeded", "Failed"),
                          timeout=RUN_TIMEOUT, what="the interrupted run's outcome")
        started = [e for e in objects.events("iris") if e.reason == "RunStarted"]
        assert len(started) == 2, [e.message for e in started]  # the first run and the interrupted one
        assert mt["status"]["latestRun"]["state"] == "Failed" and mt["status"]["latestRun"]["reason"] == "RunnerLost"
        assert mt["status"]["latestValidatedModel"]["version"] == 1

        # An upgrade with a changed value rolls the Pod: the new one waits on standby until the old one
        # hands the Lease over at its clean stop (never two leaders: operator_pod checks it).
        old_uid = pod["metadata"]["uid"]
        helm("upgrade", release, str(CHART), "-n", ns, *values, "--set", "operator.logLevel=DEBUG",
             "--wait", "--timeout", "5m", kubeconfig=kc)
        pod = ready_pod(kc, ns, other_than=old_uid)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MLOPS_LOG_LEVEL"] == "DEBUG"
    except BaseException:
        print(kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/component=operator", "--tail=80",
                      kubeconfig=kc, check=False).stdout)
        print(kubectl("get", "events", "-n", ns, kubeconfig=kc, check=False).stdout[-4000:])
        raise
    finally:
        # Our objects go first, while the operator still runs to release their finalizers.
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=180, what="our objects deleted")
        helm("uninstall", release, "-n", ns, "--wait", "--timeout", "3m", kubeconfig=kc, check=False)

    # Uninstall keeps the CRDs and leaves no Pod and no process of the operator or its servers.
    crds = kubectl("get", "crd", "-o", "name", kubeconfig=kc).stdout
    for kind in ("modeltrainings", "modeldeployments", "driftmonitors"):
        assert f"{kind}.mlops.dev" in crds
    wait_until(lambda: not operator_pod(kc, ns), timeout=120, what="operator Pod gone")

    def no_operator_processes() -> bool:
        for pid in node_cluster.devnode._pod_pids():
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"mlops-operator" in argv or b"mlserver" in argv:
                return False
        return True

    wait_until(no_operator_processes, timeout=60, what="no operator or model-server process on the node")
