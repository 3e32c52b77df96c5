"""Backend job against the real kube-apiserver: the Job the operator creates for a run (its spec as the API
server stored it), exactly one Job per trigger across an operator restart, Replace deleting it, deletion of the
ModelTraining removing it, and a local artifact root refused before any Job exists.

The dev control plane runs no Job controller and no node, so the Job stays without status and the run
Pending: nothing here writes a Job's status (the real node's e2e test, tests/e2e/test_training_job.py,
runs the Jobs to their end)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from kube_support import OperatorProcess, condition, wait_until

ROOT = "s3://models/job-backend"


def training(name: str = "iris", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": name},
            "spec": {"model": name, "backend": "job", "dataset": {"uri": "sklearn://iris", "target": "target"},
                     **spec}}


def jobs(kube_api, namespace: str) -> list[Any]:
    return client.BatchV1Api(kube_api).list_namespaced_job(namespace).items


@pytest.fixture
def job_operator(kubeconfig, namespace, crds, objects, tmp_path):
    """The operator with an s3:// artifact root (nothing here reads it: no run finishes)."""
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator", env={
        "MLOPS_ARTIFACT_ROOT": ROOT, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "us-east-1",
        "MLOPS_TRAINING_IMAGE": "registry.example/mlops-operator:9.9.9"}).start()
    try:
        yield process
        if process.process is not None and process.process.poll() is None:
            objects.delete_all()
            wait_until(lambda: not objects.list_all(), timeout=120, what="deletion")
    finally:
        process.stop()


def test_a_run_is_one_job_with_the_specs_settings(job_operator, objects, kube_api, namespace, kubeconfig, tmp_path,
                                                  monkeypatch):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s3-creds"),
        string_data={"AWS_ACCESS_KEY_ID": "id-not-copied", "AWS_SECRET_ACCESS_KEY": "secret-not-copied"}))
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="data-creds"), string_data={"key": "data-id-not-copied"}))
    created = objects.create(training(
        dataset={"uri": "s3://team-data/iris.csv", "target": "target", "credentialsSecretRef": {"name": "data-creds"}},
        resources={"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi", "nvidia.com/gpu": 1}},
        nodeSelector={"pool": "gpu"}, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        timeout="10m", retries=2, storageSecretName="s3-creds", concurrencyPolicy="Replace"))
    mt = objects.wait("ModelTraining", "iris", lambda o: (o.get("status") or {}).get("latestRun"),
                      what="the run recorded")
    run = mt["status"]["latestRun"]
    assert run["state"] == "Pending"  # no Job controller, no node: the Job never starts a Pod here
    (job,) = wait_until(lambda: jobs(kube_api, namespace) or None, what="the Job")
    assert run["backendRunId"] == job.metadata.name
    assert job.metadata.annotations["mlops.dev/run"] == run["name"]
    (owner,) = job.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("ModelTraining", "iris",
                                                                     created["metadata"]["uid"], True)
    spec = job.spec
    assert (spec.active_deadline_seconds, spec.backoff_limit, spec.ttl_seconds_after_finished) == (600, 2, 86400)
    pod = spec.template.spec
    (container,) = pod.containers
    assert container.image == "registry.example/mlops-operator:9.9.9"
    assert container.resources.requests == {"cpu": "250m", "memory": "512Mi"}
    assert container.resources.limits == {"memory": "1Gi", "nvidia.com/gpu": "1"}
    assert pod.node_selector == {"pool": "gpu"}
    assert [(t.key, t.operator) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists")]
    env = {e.name: e for e in container.env}
    assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == "s3-creds"
    assert env["AWS_ENDPOINT_URL"].value == "http://127.0.0.1:9"
    # The pipeline arguments travel in the request; the artifact root is the operator's object storage.
    assert f'"artifact_root":"{ROOT}"' in env["MLOPS_TRAINING_REQUEST"].value
    # The dataset's Secret is mounted for the extract step, by reference.
    assert env["MLOPS_DATASET_CREDENTIALS_DIR"].value == "/var/run/secrets/mlops.dev/dataset-credentials"
    (volume,) = [v for v in pod.volumes if v.name == "dataset-credentials"]
    assert volume.secret.secret_name == "data-creds"
    # The Secrets' values are in no part of the Job.
    text = str(client.ApiClient().sanitize_for_serialization(job))
    assert "id-not-copied" not in text and "secret-not-copied" not in text

    # A dataset Secret that does not exist is InvalidSpec before any Job (a Pod would wait for its volume).
    objects.create(training("nocreds", dataset={"uri": "s3://team-data/iris.csv", "target": "target",
                                                "credentialsSecretRef": {"name": "absent"}}))
    refused = objects.wait("ModelTraining", "nocreds", lambda o: (condition(o, "Succeeded") or {}).get("reason")
                           == "InvalidSpec", what="the missing dataset Secret refused")
    assert "spec.dataset.credentialsSecretRef: cannot read Secret absent" in condition(refused, "Succeeded")["message"]
    assert [j.metadata.name for j in jobs(kube_api, namespace)] == [job.metadata.name]
    objects.delete("ModelTraining", "nocreds")

    # A restart re-submits the recorded trigger's run under the same name: still one Job, the same one.
    job_operator.stop()
    objects.patch("ModelTraining", "iris", {"metadata": {"annotations": {"poke": "1"}}})
    job_operator.start()
    wait_until(lambda: objects.get("ModelTraining", "iris")["metadata"]["annotations"].get("poke"), what="seen")
    mt = objects.wait("ModelTraining", "iris", lambda o: o["status"]["latestRun"]["name"] == run["name"],
                      what="the same run")
    assert [j.metadata.uid for j in jobs(kube_api, namespace)] == [job.metadata.uid]

    # A submit of the same run again (the operator stopped between creating the Job and recording the run):
    # create answers AlreadyExists and the existing Job is the run.
    from mlops_operator.api.modeltraining import ModelTrainingSpec
    from mlops_operator.backends import kube
    from mlops_operator.backends.training import JobTraining
    from mlops_operator.reconcile.modeltraining import pipeline_parameters
    from mlops_operator.settings import Settings

    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(kube, "_api_client", None)
    backend = JobTraining(ModelTrainingSpec.model_validate(mt["spec"]), namespace, "iris",
                          Settings(artifact_root=ROOT, data_dir=tmp_path / "submit"))
    parameters = pipeline_parameters(backend.spec, namespace, ROOT, None)
    again = asyncio.run(backend.submit(run["name"], run["trigger"], parameters))
    assert (again.backend_run_id, again.state) == (job.metadata.name, "Pending")
    assert [j.metadata.uid for j in jobs(kube_api, namespace)] == [job.metadata.uid]

    # Replace: a retrain request cancels the active run, whose Job is deleted, and starts a second Job.
    objects.patch("ModelTraining", "iris", {"metadata": {"annotations": {
        "mlops.dev/retrain-requested": "2026-11-30T00:00:00Z by the test"}}})
    mt = objects.wait("ModelTraining", "iris", lambda o: o["status"]["latestRun"]["name"] != run["name"],
                      what="the replacing run")
    assert mt["status"]["history"][0]["state"] == "Canceled"
    names = wait_until(lambda: (n := [j.metadata.name for j in jobs(kube_api, namespace)
                                      if not j.metadata.deletion_timestamp]) == [mt["status"]["latestRun"]["backendRunId"]]
                       and n, what="only the new Job")
    assert names != [job.metadata.name]

    # Deleting the ModelTraining deletes its Job.
    objects.delete_all()
    wait_until(lambda: not objects.list_all(), what="the ModelTraining deleted")
    wait_until(lambda: not jobs(kube_api, namespace), what="its Job deleted")


def test_a_local_artifact_root_is_refused_before_any_job(kubeconfig, namespace, crds, objects, kube_api, tmp_path):
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator").start()  # default: <dataDir>/artifacts
    try:
        objects.create(training())
        mt = objects.wait("ModelTraining", "iris", lambda o: (condition(o, "Succeeded") or {}).get("reason")
                          == "InvalidSpec", what="refused")
        message = condition(mt, "Succeeded")["message"]
        assert "backend: job" in message and "MLOPS_ARTIFACT_ROOT" in message and "s3://" in message
        assert not jobs(kube_api, namespace)
        assert "latestRun" not in mt["status"]
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), what="deletion")
    finally:
        process.stop()
