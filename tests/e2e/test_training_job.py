"""Backend job on the real node: the operator (installed by its chart from the image built from this
checkout) runs a ModelTraining's pipeline in a Kubernetes Job Pod of the same image, with MinIO (on the
node's bridge) as the artifact root and the credentials referenced from a Secret. The model version
lands on MinIO and the status shows it validated; the operator Pod is deleted during the run and there
is still exactly one Job; a Job past its deadline ends Failed with reason DeadlineExceeded; a run whose data fails validation fails
its Job at the first Pod with the step's reason; a dataset on MinIO is read with the credentials its Secret gives the Pod,
and a read failure is retried up to spec.retries before the Job controller gives up (BackoffLimitExceeded)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chart_support import CHART, helm, kubectl
from kube_support import REPO, Objects, condition, wait_until
from s3_support import REGION
from e2e.test_operator_pod import operator_pod, ready_pod

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RUN_TIMEOUT = 420  # one training run on 2 shared cores, in a Pod


def training(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": name},
            "spec": {"model": name, "backend": "job", "storageSecretName": "s3-creds",
                     "dataset": {"uri": "sklearn://iris", "target": "target"},
                     "training": {"estimator": "LogisticRegression", "parameters": {"max_iter": 200}},
                     "validation": {"thresholds": [{"metric": "accuracy", "min": 0.8}]},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
                     **spec}}


def jobs(kc: str, ns: str) -> list[dict[str, Any]]:
    return json.loads(kubectl("get", "jobs", "-n", ns, "-o", "json", kubeconfig=kc).stdout)["items"]


def test_training_in_a_job(node_cluster, node_kubeconfig, node_api, node_namespace, s3, monkeypatch):
    from kubernetes import client

    from mlops_operator.backends import artifacts

    kc, ns, release = node_kubeconfig, node_namespace, "mlops"
    client.CoreV1Api(node_api).create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s3-creds"),
        string_data={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}))
    root = f"s3://{s3.bucket}/job-e2e"
    image = node_cluster.image("operator")
    repo, tag = image.ref.rsplit(":", 1)
    # An earlier release in this session (test_operator_pod) kept the CRDs (crds.keep): they are applied from
    # this checkout and the chart leaves them alone; CRDs this release installs go with it (crds.keep=false),
    # so a later install in the session (another test's) owns them again.
    kept = "modeltrainings.mlops.dev" in kubectl("get", "crd", "-o", "name", kubeconfig=kc).stdout
    if kept:
        kubectl("apply", "-f", str(REPO / "crds"), kubeconfig=kc)
    helm("install", release, str(CHART), "-n", ns, "--set", f"crds.install={str(not kept).lower()}",
         "--set", "crds.keep=false",
         "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
         "--set", "image.pullPolicy=Never", "--set", "operator.pollIntervalSeconds=2",
         "--set", "operator.logFormat=text", "--set", f"operator.artifactRoot={root}",
         "--set", f"operator.s3.endpointUrl={s3.endpoint_url}", "--set", f"operator.s3.region={REGION}",
         "--set", "operator.s3.credentialsSecret=s3-creds", "--wait", "--timeout", "5m", kubeconfig=kc)
    objects = Objects(node_api, ns)
    try:
        pod = ready_pod(kc, ns)
        objects.create(training("iris"))
        # The run's Pod has started: the operator Pod is deleted in the middle of the run.
        job = wait_until(lambda: next(iter(jobs(kc, ns)), None), timeout=120, what="the run's Job")
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == image.ref
        objects.wait("ModelTraining", "iris", lambda o: (o.get("status") or {}).get("latestRun", {}).get("state") == "Running",
                     timeout=180, what="the run's container started")
        kubectl("delete", "pod", "-n", ns, pod["metadata"]["name"], "--wait=true", kubeconfig=kc)
        ready_pod(kc, ns, other_than=pod["metadata"]["uid"])
        mt = objects.wait("ModelTraining", "iris", lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
                          timeout=RUN_TIMEOUT, what="the run's outcome")
        assert mt["status"]["phase"] == "Succeeded", mt["status"]
        run = mt["status"]["latestRun"]
        assert (run["state"], run["validated"], run["modelVersion"]) == ("Succeeded", True, 1)
        assert run["backendRunId"] == job["metadata"]["name"]
        assert mt["status"]["latestValidatedModel"]["version"] == 1
        assert mt["status"]["latestValidatedModel"]["uri"].startswith(f"{root}/models/{ns}/iris/")
        assert run["metrics"]["accuracy"] >= 0.8
        # Exactly one Job for the one trigger, across the operator's restart; it completed.
        (only,) = jobs(kc, ns)
        assert only["metadata"]["uid"] == job["metadata"]["uid"]
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in only["status"]["conditions"])
        started = [e for e in objects.events("iris") if e.reason == "RunStarted"]
        assert len(started) == 1, [e.message for e in started]
        # The model version is on MinIO (read from the host with the test's credentials).
        # This module's MinIO, not the one of a module that ran before (fsspec caches S3 filesystems with
        # the endpoint they were made with).
        from s3fs import S3FileSystem

        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        S3FileSystem.clear_instance_cache()
        assert artifacts.is_complete(root, ns, "iris", 1)

        # The S3 credentials are in no status, event, the Jobs, the operator's log nor the run Pod's log.
        from secret_scan import assert_no_secrets

        logs = {"operator": kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/component=operator", "--tail=-1",
                                    kubeconfig=kc).stdout,
                "run": kubectl("logs", "-n", ns, f"job/{job['metadata']['name']}", kubeconfig=kc).stdout,
                "jobs": json.dumps(jobs(kc, ns))}
        assert_no_secrets(node_api, ns, [s3.access_key, s3.secret_key], logs=logs)

        # The dataset on MinIO, read with spec.dataset.credentialsSecretRef's Secret (mounted in the Pod): right
        # keys train; a wrong secret key fails the read although the Pod's own (storageSecretName) keys are right,
        # so the mounted ones are what the read used. That failure may pass on a retry: retried once, then the
        # Job controller gives up (BackoffLimitExceeded) and the step's reason comes back.
        import boto3
        from sklearn.datasets import load_iris

        boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key, region_name=REGION).put_object(
            Bucket=s3.bucket, Key="datasets/iris.csv", Body=load_iris(as_frame=True).frame.to_csv(index=False).encode())
        wrong_secret = "wrong-secret-key-e2e-0123456789"
        for secret, key in (("data-creds", s3.secret_key), ("data-creds-wrong", wrong_secret)):
            client.CoreV1Api(node_api).create_namespaced_secret(ns, client.V1Secret(
                metadata=client.V1ObjectMeta(name=secret),
                string_data={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": key}))
        for name, secret, retries in (("creds", "data-creds", 0), ("wrongcreds", "data-creds-wrong", 1)):
            objects.create(training(name, retries=retries, dataset={
                "uri": f"s3://{s3.bucket}/datasets/iris.csv", "target": "target",
                "credentialsSecretRef": {"name": secret}}))
        # A run longer than spec.timeout: Kubernetes stops the Job at its activeDeadlineSeconds.
        objects.create(training("slow", timeout="3s"))
        # A step failure a retry cannot change: the Pod failure policy fails the Job at its first Pod (retries
        # 2 unused), and the step's reason comes back through the Pod's termination message.
        objects.create(training("short", retries=2, dataValidation={"minRows": 100000}))
        slow = objects.wait("ModelTraining", "slow", lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
                            timeout=180, what="the slow run's outcome")
        run = slow["status"]["latestRun"]
        assert (run["state"], run["reason"]) == ("Failed", "DeadlineExceeded"), run
        assert "DeadlineExceeded" in run["message"]
        # The operator left the Job to Kubernetes, whose Job controller stopped it and named the reason.

        def failed_condition() -> dict[str, Any] | None:
            (slow_job,) = [j for j in jobs(kc, ns) if j["metadata"]["name"] == run["backendRunId"]]
            return next((c for c in (slow_job.get("status") or {}).get("conditions") or []
                         if c["type"] == "Failed" and c["status"] == "True"), None)

        assert wait_until(failed_condition, timeout=60, what="the Job Failed")["reason"] == "DeadlineExceeded"
        assert (condition(slow, "Succeeded") or {}).get("status") == "False"

        short = objects.wait("ModelTraining", "short", lambda o: (o.get("status") or {}).get("phase") in
                             ("Succeeded", "Failed"), timeout=180, what="the invalid data's run outcome")
        run = short["status"]["latestRun"]
        assert (run["state"], run["reason"]) == ("Failed", "DataValidationFailed"), run
        assert "PodFailurePolicy" in run["message"] and "100000" in run["message"], run["message"]
        pods = json.loads(kubectl("get", "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={run['backendRunId']}",
                                  "-o", "json", kubeconfig=kc).stdout)["items"]
        assert len(pods) == 1  # not retried

        def outcome(name: str) -> dict[str, Any]:
            return objects.wait("ModelTraining", name, lambda o: (o.get("status") or {}).get("phase") in
                                ("Succeeded", "Failed"), timeout=RUN_TIMEOUT, what=f"{name}'s run outcome")["status"]

        creds = outcome("creds")
        assert creds["phase"] == "Succeeded", creds
        (source,) = creds["latestRun"]["sources"]
        assert (source["name"], source["uri"]) == ("base", f"s3://{s3.bucket}/datasets/iris.csv"), source
        run = outcome("wrongcreds")["latestRun"]
        assert (run["state"], run["reason"]) == ("Failed", "DatasetUnavailable"), run
        assert "BackoffLimitExceeded" in run["message"] and "datasets/iris.csv" in run["message"], run["message"]
        pods = json.loads(kubectl("get", "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={run['backendRunId']}",
                                  "-o", "json", kubeconfig=kc).stdout)["items"]
        assert len(pods) == 2  # the first Pod and one retry
        logs = {"operator": kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/component=operator", "--tail=-1",
                                    kubeconfig=kc).stdout,
                "runs": kubectl("logs", "-n", ns, "-l", "mlops.dev/modeltraining", "--tail=-1", "--prefix",
                                kubeconfig=kc).stdout,
                "jobs": json.dumps(jobs(kc, ns))}
        assert_no_secrets(node_api, ns, [s3.secret_key, wrong_secret], logs=logs)
    except BaseException:
        print(kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/component=operator", "--tail=80",
                      kubeconfig=kc, check=False).stdout)
        print(kubectl("logs", "-n", ns, "-l", "mlops.dev/modeltraining", "--tail=60", kubeconfig=kc,
                      check=False).stdout)
        print(kubectl("get", "jobs,pods", "-n", ns, "-o", "wide", kubeconfig=kc, check=False).stdout)
        print(kubectl("get", "events", "-n", ns, kubeconfig=kc, check=False).stdout[-4000:])
        raise
    finally:
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=180, what="our objects deleted")
        # The Jobs went with their owners (garbage collector).
        wait_until(lambda: not jobs(kc, ns), timeout=120, what="the Jobs deleted with their ModelTrainings")
        helm("uninstall", release, "-n", ns, "--wait", "--timeout", "3m", kubeconfig=kc, check=False)
    wait_until(lambda: not operator_pod(kc, ns), timeout=120, what="operator Pod gone")
