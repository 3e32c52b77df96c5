"""Backend ``job``, pure: the Kubernetes Job of one training run, and the run's state read from the Job.

The I/O (create, read, delete, the Pods' termination messages) is in ``backends.training_job``;
``backends.training.JobTraining`` ties both to the TrainingBackend protocol. The design is
described there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlops_operator.api.common import GROUP, VERSION
from mlops_operator.api.modeltraining import GPU_RESOURCE, ModelTrainingSpec
from mlops_operator.reconcile.conditions import parse_rfc3339
from mlops_operator.reconcile.durations import parse_duration
from mlops_operator.reconcile.modeltraining import DEADLINE_EXCEEDED

REQUEST_ENV = "MLOPS_TRAINING_REQUEST"
"""The Job Pod's request (pipeline arguments, and the package text when not the built-in one), JSON."""
CONTAINER = "train"
"""The Job's one container."""
NOT_RETRIED_EXIT_CODE = 3
"""The runner's exit code for a failure a retry cannot change (InvalidSpec, DataValidationFailed): the
Pod failure policy fails the Job at once instead of spending backoffLimit on it."""
TERMINATION_MESSAGE_BYTES = 4096
"""Kubernetes keeps at most this much of a container's termination message."""
TTL_SECONDS_AFTER_FINISHED = 86_400
"""A finished Job (and its Pod, with the log) is kept a day for people to look at; the run's result
lives in the artifact store and in status, so nothing is lost when Kubernetes removes it."""
RUN_ANNOTATION = "mlops.dev/run"
"""The run's full name on the Job and its Pod (a label value is too short for every run name)."""
TRAINING_LABEL = "mlops.dev/modeltraining"
"""The ModelTraining's name, on the Job and its Pod."""
MANAGED_BY = {"app.kubernetes.io/managed-by": "mlops-operator", "app.kubernetes.io/component": "training"}
DATASET_CREDENTIALS_MOUNT = "/var/run/secrets/mlops.dev/dataset-credentials"
"""Where spec.dataset.credentialsSecretRef's Secret is mounted in the Job's Pod (read-only; the extract step
reads it through ``MLOPS_DATASET_CREDENTIALS_DIR``)."""
DATASET_CREDENTIALS_DIR_ENV = "MLOPS_DATASET_CREDENTIALS_DIR"
"""Names the mount for the extract step (``backends.storage_credentials`` reads it; the same name)."""
SECRET_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))
"""spec.storageSecretName's keys the Pod references (name, optional)."""
# Labels and Job names are at most 63 characters (the Job controller labels its Pods with the Job's name).
_MAX_NAME = 63


def job_name(run_name: str) -> str:
    """The Job of a run: the run's name (deterministic, so a restart finds the same Job), shortened
    with a digest of the whole name when longer than a label value may be."""
    if len(run_name) <= _MAX_NAME:
        return run_name
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:10]
    return f"{run_name[:_MAX_NAME - 11].rstrip('-.')}-{digest}"


def _resources(spec: ModelTrainingSpec) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if spec.resources is None:
        return out
    for kind, amounts in (("requests", spec.resources.requests), ("limits", spec.resources.limits)):
        for name in ("cpu", "memory"):
            value = getattr(amounts, name) if amounts else None
            if value is not None:
                out.setdefault(kind, {})[name] = value
    gpus = [a.gpu for a in (spec.resources.limits, spec.resources.requests) if a and a.gpu]
    if gpus:  # an extended resource: the limit is what counts, the request equals it
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpus[0])
    return out


def _env(request: dict[str, Any], plain_env: dict[str, str], storage_secret: str | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": REQUEST_ENV, "value": json.dumps(request, sort_keys=True, separators=(",", ":"))},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(plain_env.items())]
    if storage_secret:  # referenced, never copied: the kubelet reads the Secret
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": storage_secret, "key": key,
                                                             **({"optional": True} if optional else {})}}}
                for key, optional in SECRET_KEYS]
    return env


def job_manifest(*, run_name: str, namespace: str, training_name: str, training_uid: str, image: str,
                 spec: ModelTrainingSpec, request: dict[str, Any], plain_env: dict[str, str] | None = None,
                 service_account: str | None = None) -> dict[str, Any]:
    """The Job that runs one training run: the runner (``training_runner --job``) in ``image``, owned by
    the ModelTraining, with spec.resources, nodeSelector, tolerations, timeout and retries.

    ``request`` travels in the environment (:data:`REQUEST_ENV`); ``plain_env`` carries settings that are
    not secret (AWS_ENDPOINT_URL, AWS_REGION); spec.storageSecretName's keys are referenced, and
    spec.dataset.credentialsSecretRef's Secret is mounted read-only (:data:`DATASET_CREDENTIALS_MOUNT`) for the
    dataset alone: the kubelet reads both, nothing is copied into the Job. The Pod runs under Pod Security
    ``restricted``, with a read-only root and /tmp an emptyDir."""
    name = job_name(run_name)
    labels = {**MANAGED_BY, TRAINING_LABEL: training_name}
    annotations = {RUN_ANNOTATION: run_name}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": ["python3", "-m", "mlops_operator.backends.training_runner", "--job"],
        "env": _env(request, plain_env or {}, spec.storage_secret_name),
        "workingDir": "/tmp",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # The runner writes {state, reason, message} here; a Pod killed before that leaves its log's tail.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    dataset_secret = spec.dataset.credentials_secret_ref
    if dataset_secret:
        container["env"].append({"name": DATASET_CREDENTIALS_DIR_ENV, "value": DATASET_CREDENTIALS_MOUNT})
        container["volumeMounts"].append({"name": "dataset-credentials", "mountPath": DATASET_CREDENTIALS_MOUNT,
                                          "readOnly": True})
        volumes.append({"name": "dataset-credentials",
                        "secret": {"secretName": dataset_secret.name, "defaultMode": 0o444}})
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the run needs no Kubernetes API
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.retries,
        "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": [NOT_RETRIED_EXIT_CODE]}},
            # A Pod evicted or preempted is not the run's fault: tried again without counting.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
    }
    if spec.timeout:
        job_spec["activeDeadlineSeconds"] = max(1, int(parse_duration(spec.timeout).total_seconds()))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name, "namespace": namespace, "labels": labels, "annotations": annotations,
            # Deleting the ModelTraining deletes its Jobs (and their Pods) through the garbage collector.
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelTraining", "name": training_name,
                                 "uid": training_uid, "controller": True, "blockOwnerDeletion": False}],
        },
        "spec": job_spec,
    }


def termination_message(state: str, reason: str | None, message: str | None) -> str:
    """What the runner writes to its termination log: JSON within Kubernetes' 4 KiB."""
    record = {"state": state, "reason": reason, "message": message or ""}
    text = json.dumps(record)
    while len(text.encode()) > TERMINATION_MESSAGE_BYTES:
        record["message"] = record["message"][: max(0, len(record["message"]) - (len(text.encode()) - 4000))]
        text = json.dumps(record)
    return text


def parse_termination_message(text: str | None) -> tuple[str | None, str | None]:
    """(reason, message) of a failed Pod's termination message: the runner's JSON, else the tail of
    its log (FallbackToLogsOnError) as the message."""
    if not text:
        return None, None
    try:
        record = json.loads(text)
    except ValueError:
        return None, text.strip()[-1024:]
    if not isinstance(record, dict):
        return None, text.strip()[-1024:]
    return record.get("reason"), record.get("message")


@dataclass(frozen=True)
class JobRun:
    """A run's state as its Job shows it."""

    state: str
    """Pending, Running, Succeeded or Failed (RunRecord states)."""
    started: str | None = None
    """When the run's container first started (RFC 3339); None while none has."""
    finished: str | None = None
    """When the Job finished."""
    reason: str | None = None
    """Why it failed: the step's reason from the Pod's termination message, DeadlineExceeded, else the
    Job condition's reason (BackoffLimitExceeded, PodFailurePolicy, ...)."""
    message: str | None = None
    """A readable account of the failure, naming the Job condition."""


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_run(job: dict[str, Any], container_started: str | None = None, termination: str | None = None,
            now: datetime | None = None) -> JobRun:
    """The run state of a Job (as the API returns it).

    ``container_started``: when the first Pod's container started (the run's start; a Pod waiting
    for a node or an image has not started the run); ``termination``: the last failed Pod's
    termination message. Only the Job's terminal conditions (Complete, Failed) end the run;
    SuccessCriteriaMet and FailureTarget mean its Pods are still being stopped. An active Job past
    its own activeDeadlineSeconds at ``now`` (counted from its startTime, as the Job controller does) is
    Failed/DeadlineExceeded already: the Job controller, which may lag a few seconds, stops it and
    marks it so; the operator does not delete it first (its own spec.timeout count starts later,
    at the container's start)."""
    status = job.get("status") or {}
    name = (job.get("metadata") or {}).get("name", "")
    complete = _condition(job, "Complete")
    if complete:
        return JobRun("Succeeded", container_started or status.get("startTime"),
                      status.get("completionTime") or complete.get("lastTransitionTime"))
    failed = _condition(job, "Failed")
    if failed:
        step_reason, step_message = parse_termination_message(termination)
        job_reason = failed.get("reason") or "Failed"
        account = f"Job {name} failed: {job_reason}: {failed.get('message') or ''}".rstrip(": ")
        if job_reason == DEADLINE_EXCEEDED:
            reason = DEADLINE_EXCEEDED
        else:
            reason = step_reason or job_reason
        message = f"{account}; {step_message}" if step_message else account
        return JobRun("Failed", container_started or status.get("startTime"), failed.get("lastTransitionTime"),
                      reason, message)
    deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
    if deadline and now is not None and status.get("startTime"):
        if (now - parse_rfc3339(status["startTime"])).total_seconds() > deadline:
            return JobRun("Failed", container_started or status["startTime"], now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          DEADLINE_EXCEEDED, f"Job {name} was active longer than its activeDeadlineSeconds ({deadline} s, "
                          "spec.timeout); Kubernetes stops it (Job condition Failed, reason DeadlineExceeded)")
    if container_started:
        return JobRun("Running", container_started)
    return JobRun("Pending")


def first_container_start(pods: list[dict[str, Any]]) -> str | None:
    """When the earliest of a Job's Pods started its container (running or terminated), or None."""
    starts = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            state = status.get("state") or {}
            stamp = (state.get("running") or {}).get("startedAt") or (state.get("terminated") or {}).get("startedAt")
            if stamp:
                starts.append(stamp)
    return min(starts) if starts else None


def last_termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The termination message of the most recently finished failed container, or None."""
    found: tuple[str, str] | None = None
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode", 0) != 0 and terminated.get("message"):
                stamp = terminated.get("finishedAt") or ""
                if found is None or stamp >= found[0]:
                    found = (stamp, terminated["message"])
    return found[1] if found else None
