"""Backend job, the pure parts: the Job manifest of a run, and the run state read from a Job and its Pods;
the runner's Job mode (request from the environment, termination message, exit codes)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mlops_operator.api.errors import InvalidSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.backends import training_runner
from mlops_operator.backends.training import training_backend
from mlops_operator.reconcile import trainingjob
from mlops_operator.settings import Settings

BASE = {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}, "backend": "job"}


def manifest(service_account: str | None = None, **spec: object) -> dict:
    return trainingjob.job_manifest(
        run_name="iris-0123abcd-g2", namespace="team", training_name="iris", training_uid="uid-1",
        image="registry/mlops-operator:1.2.3", spec=ModelTrainingSpec.model_validate({**BASE, **spec}),
        request={"arguments": {"run_name": "iris-0123abcd-g2"}},
        plain_env={"AWS_ENDPOINT_URL": "http://minio:9000"}, service_account=service_account)


def test_the_jobs_pods_use_the_configured_service_account():
    assert manifest(service_account="training-runner")["spec"]["template"]["spec"]["serviceAccountName"] == \
        "training-runner"
    assert "serviceAccountName" not in manifest()["spec"]["template"]["spec"]  # the namespace's default


def test_the_job_carries_the_specs_resources_placement_timeout_and_retries():
    job = manifest(resources={"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1}},
                   nodeSelector={"pool": "gpu"},
                   tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                   timeout="1h30m", retries=2, storageSecretName="s3-creds")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["activeDeadlineSeconds"] == 5400
    assert spec["backoffLimit"] == 2
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}}
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["restartPolicy"] == "Never"
    assert container["image"] == "registry/mlops-operator:1.2.3"
    assert container["command"][-2:] == ["mlops_operator.backends.training_runner", "--job"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # The credentials are referenced, never copied; the endpoint (not secret) is plain.
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID",
                                        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert json.loads(env[trainingjob.REQUEST_ENV]["value"]) == {"arguments": {"run_name": "iris-0123abcd-g2"}}
    # A failure a retry cannot change fails the Job at once.
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "train", "operator": "In",
                                                             "values": [trainingjob.NOT_RETRIED_EXIT_CODE]}}


def test_the_datasets_credentials_secret_is_mounted_for_the_dataset_never_copied():
    job = manifest(dataset={"uri": "s3://team-data/iris.csv", "target": "target",
                            "credentialsSecretRef": {"name": "data-creds"}})
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[trainingjob.DATASET_CREDENTIALS_DIR_ENV]["value"] == trainingjob.DATASET_CREDENTIALS_MOUNT
    assert {"name": "dataset-credentials", "mountPath": trainingjob.DATASET_CREDENTIALS_MOUNT,
            "readOnly": True} in container["volumeMounts"]
    assert {"name": "dataset-credentials", "secret": {"secretName": "data-creds", "defaultMode": 0o444}} in pod["volumes"]
    plain = manifest()
    assert trainingjob.DATASET_CREDENTIALS_DIR_ENV not in {e["name"] for e in plain["spec"]["template"]["spec"]
                                                           ["containers"][0]["env"]}
    assert [v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


def test_the_job_is_owned_named_and_labelled_for_its_run():
    job = manifest()
    meta = job["metadata"]
    assert meta["name"] == "iris-0123abcd-g2" and meta["namespace"] == "team"
    assert meta["ownerReferences"] == [{"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "name": "iris",
                                        "uid": "uid-1", "controller": True, "blockOwnerDeletion": False}]
    assert meta["labels"][trainingjob.TRAINING_LABEL] == "iris"
    assert meta["annotations"][trainingjob.RUN_ANNOTATION] == "iris-0123abcd-g2"
    assert job["spec"]["ttlSecondsAfterFinished"] == trainingjob.TTL_SECONDS_AFTER_FINISHED
    # No timeout, retries 0, no resources: none set.
    assert "activeDeadlineSeconds" not in job["spec"] and job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "resources" not in container and not any(e["name"].startswith("AWS_SECRET") for e in container["env"])
    # Pod Security restricted.
    assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_job_names_are_deterministic_and_fit_a_label():
    assert trainingjob.job_name("short-run") == "short-run"
    long = "a" * 63 + "-0123abcd-r" + "f" * 16
    name = trainingjob.job_name(long)
    assert len(name) <= 63 and name == trainingjob.job_name(long) and name != trainingjob.job_name(long + "x")
    assert name[-1].isalnum()


def job(*conditions: dict, **status: object) -> dict:
    return {"metadata": {"name": "run-1"}, "status": {"conditions": list(conditions), **status}}


def test_job_status_to_run_state():
    assert trainingjob.job_run(job()) == trainingjob.JobRun("Pending")
    assert trainingjob.job_run(job(active=1), "2026-11-30T00:00:05Z") == trainingjob.JobRun("Running",
                                                                                           "2026-11-30T00:00:05Z")
    # Pods still stopping: not finished yet.
    assert trainingjob.job_run(job({"type": "FailureTarget", "status": "True"}), "t0").state == "Running"
    done = trainingjob.job_run(job({"type": "Complete", "status": "True"}, completionTime="2026-11-30T00:01:00Z"), "t0")
    assert (done.state, done.started, done.finished) == ("Succeeded", "t0", "2026-11-30T00:01:00Z")


def test_an_active_job_past_its_own_deadline_is_failed_deadline_exceeded():
    from datetime import UTC, datetime

    active = {"metadata": {"name": "run-1"}, "spec": {"activeDeadlineSeconds": 30},
              "status": {"startTime": "2026-11-30T00:00:00Z", "active": 1}}
    within = trainingjob.job_run(active, "2026-11-30T00:00:02Z", now=datetime(2026, 11, 30, 0, 0, 30, tzinfo=UTC))
    assert within.state == "Running"
    past = trainingjob.job_run(active, "2026-11-30T00:00:02Z", now=datetime(2026, 11, 30, 0, 0, 31, tzinfo=UTC))
    assert (past.state, past.reason, past.finished) == ("Failed", "DeadlineExceeded", "2026-11-30T00:00:31Z")
    assert "activeDeadlineSeconds (30 s" in past.message


def test_a_failed_job_names_its_condition_and_the_steps_reason():
    deadline = trainingjob.job_run(job({"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                        "message": "Job was active longer than specified deadline",
                                        "lastTransitionTime": "t9"}), "t0")
    assert (deadline.state, deadline.reason, deadline.finished) == ("Failed", "DeadlineExceeded", "t9")
    assert "DeadlineExceeded" in deadline.message and "deadline" in deadline.message
    backoff = trainingjob.job_run(job({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                       "message": "Job has reached the specified backoff limit"}), "t0")
    assert backoff.reason == "BackoffLimitExceeded"
    message = trainingjob.termination_message("FAILED", "DataValidationFailed", "column x: 40% missing")
    step = trainingjob.job_run(job({"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                    "message": "Container train for pod run-1-x failed with exit code 3"}), "t0",
                               message)
    assert step.reason == "DataValidationFailed"
    assert "PodFailurePolicy" in step.message and "column x: 40% missing" in step.message
    # A Pod killed before the runner wrote its record: the log tail is the message.
    killed = trainingjob.job_run(job({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}), "t0",
                                 "Traceback ...\nMemoryError")
    assert killed.reason == "BackoffLimitExceeded" and killed.message.endswith("MemoryError")


def test_pods_give_the_runs_start_and_the_last_failure():
    pods = [
        {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 1, "startedAt": "t1",
                                                                    "finishedAt": "t2", "message": "first"}}}]}},
        {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 1, "startedAt": "t3",
                                                                    "finishedAt": "t4", "message": "second"}}}]}},
        {"status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}},
    ]
    assert trainingjob.first_container_start(pods) == "t1"
    assert trainingjob.last_termination_message(pods) == "second"
    assert trainingjob.first_container_start(pods[2:]) is None


def test_the_termination_message_fits_kubernetes_limit():
    text = trainingjob.termination_message("FAILED", "PipelineFailed", "é" * 10_000)
    assert len(text.encode()) <= trainingjob.TERMINATION_MESSAGE_BYTES
    assert json.loads(text)["reason"] == "PipelineFailed"


def test_the_runner_in_a_job_reports_a_bad_request_as_not_retried(tmp_path: Path):
    log = tmp_path / "termination-log"
    code = training_runner.run_job("{not json", tmp_path, log)
    assert code == trainingjob.NOT_RETRIED_EXIT_CODE
    assert trainingjob.parse_termination_message(log.read_text())[0] == InvalidSpec.reason


def test_backend_job_refuses_a_local_artifact_root_before_any_job(tmp_path: Path):
    spec = ModelTrainingSpec.model_validate(BASE)
    backend = training_backend(spec, "team", "iris", Settings(data_dir=tmp_path, artifact_root=None))
    assert (type(backend).__name__, backend.schedules_runs) == ("JobTraining", False)
    with pytest.raises(InvalidSpec, match="MLOPS_ARTIFACT_ROOT"):
        asyncio.run(backend.submit("iris-0123abcd-g1", "spec (generation 1)", {}))
