"""Training backends behind one protocol: :class:`TrainingBackend`, chosen once per ModelTraining.

The ModelTraining handler knows only this protocol: it asks a backend to submit a run, observe it,
cancel it, keep its schedule in step with the spec and clean up when the object goes. Each backend
turns its own run states into the API's ``RunRecord`` (``reconcile.modeltraining.run_record``).

- ``local`` (:class:`LocalTraining`): the compiled pipeline through kfp.local in a detached process
  (``training_local``); the operator fires ``spec.schedule`` itself, as a trigger.
- ``kfp`` (:class:`KfpTraining`): a Kubeflow Pipelines v2 API (``training_kfp``); ``spec.schedule``
  is a KFP recurring run, whose fires the backend reads back as runs, each with its own name and
  model version.
- ``job`` (:class:`JobTraining`): the same compiled pipeline through kfp.local inside one Kubernetes
  Job per run (``reconcile.trainingjob``, ``training_job``), for clusters without KFP; the operator
  fires ``spec.schedule`` itself, as for ``local``.

A new backend implements :class:`TrainingBackend` and registers its class in :data:`BACKENDS`; the
handler does not change. All methods are async and never block the event loop (the synchronous
clients run in threads).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mlops_operator.api.errors import STEP_REASONS, Failure, InvalidSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec, ModelTrainingStatus, RunRecord
from mlops_operator.backends import (artifacts, kube, pipeline_package, storage_credentials, training_job,
                                    training_local, uri_policy)
from mlops_operator.reconcile import modeltraining, trainingjob
from mlops_operator.settings import Settings

if TYPE_CHECKING:
    from mlops_operator.backends import training_kfp


def _kfp() -> Any:
    """backends.training_kfp, imported on first use: it imports kfp (about 90 MiB), which an operator whose
    trainings run locally or as Jobs never needs."""
    from mlops_operator.backends import training_kfp

    return training_kfp

@dataclass(frozen=True)
class Observed:
    """A run as the backend sees it now."""

    record: RunRecord
    """The run record (state, times, outputs when it succeeded)."""
    reasons: list[str]
    """The validation gate's reasons when the run produced a model that failed it."""


@dataclass(frozen=True)
class ScheduleRequest:
    """What a backend that schedules runs itself should keep (``cron`` None: no schedule)."""

    cron: str | None
    """spec.schedule."""
    enabled: bool
    """False while spec.suspend."""
    run_prefix: str
    """Each fire's run is named this prefix and its schedule time (reconcile.modeltraining.scheduled_run_prefix)."""
    parameters: dict[str, Any]
    """Pipeline parameters, as for :meth:`TrainingBackend.submit`."""
    since: datetime | None = None
    """Only fires scheduled after this are returned (status.lastScheduleTime: the newest recorded)."""


@dataclass(frozen=True)
class Schedule:
    """What :meth:`TrainingBackend.sync_schedule` found and did."""

    backend_id: str | None = None
    """The backend's own schedule (KFP recurring run id); None when it has none."""
    runs: list[modeltraining.ScheduledRun] = field(default_factory=list)
    """The runs the backend's schedule started after ``since``."""


class TrainingBackend(Protocol):
    """What the ModelTraining handler needs from a training backend."""

    schedules_runs: ClassVar[bool]
    """True: the backend fires spec.schedule itself and :meth:`sync_schedule` returns the runs it
    started; False: the operator fires the schedule as a trigger and calls :meth:`submit`."""

    async def submit(self, run_name: str, trigger: str, parameters: dict[str, Any]) -> RunRecord:
        """Start the run ``run_name`` (or find the one with that name) with the pipeline parameters
        of ``reconcile.modeltraining.pipeline_parameters``; a request the pipeline can never take
        gives a Failed/InvalidSpec record, not an exception."""
        ...

    async def observe(self, record: RunRecord) -> Observed:
        """The active run's current state."""
        ...

    async def cancel(self, record: RunRecord) -> None:
        """Stop an active run (a finished or unknown run is left alone)."""
        ...

    async def sync_schedule(self, request: ScheduleRequest) -> Schedule:
        """Keep the backend's own schedule in step with the spec; returns the runs the schedule
        started (none for a backend that does not schedule). The runs are read before the
        schedule is replaced, so no fire of a replaced schedule goes unrecorded."""
        ...

    async def cleanup(self, status: ModelTrainingStatus) -> None:
        """The ModelTraining is being deleted: stop its active runs, remove its schedule."""
        ...


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


class LocalTraining:
    """Backend ``local``: the compiled pipeline through kfp.local in a detached runner process."""

    schedules_runs: ClassVar[bool] = False
    STATES: ClassVar[dict[str, str]] = {
        training_local.PENDING: "Pending",
        training_local.RUNNING: "Running",
        training_local.SUCCEEDED: "Succeeded",
        training_local.FAILED: "Failed",
        training_local.CANCELED: "Canceled",
    }

    def __init__(self, spec: ModelTrainingSpec, namespace: str, name: str, settings: Settings) -> None:
        self.spec, self.namespace, self.name, self.settings = spec, namespace, name, settings

    def _record(self, run: training_local.RunStatus, trigger: str) -> RunRecord:
        return modeltraining.run_record(run.run_name, trigger, run.run_name, self.STATES[run.state], run.started,
                                        run.finished, run.reason, run.message, run.outputs)

    async def submit(self, run_name: str, trigger: str, parameters: dict[str, Any]) -> RunRecord:
        package = await pipeline_source(self.spec, self.namespace, self.settings)
        request = {"namespace": self.namespace, "parameters": parameters,
                   **({"pipeline_package": package} if package else {}),
                   **({"retries": self.spec.retries} if self.spec.retries else {})}
        env = await dataset_credentials_env(self.spec, self.namespace)
        run = await asyncio.to_thread(training_local.submit, run_name, request, self.settings.data_dir,
                                      self.namespace, env, self.settings.training_zygote)
        return self._record(run, trigger)

    async def observe(self, record: RunRecord) -> Observed:
        try:
            run = await asyncio.to_thread(training_local.status, record.name, self.settings.data_dir, self.namespace)
        except FileNotFoundError:
            return Observed(record.model_copy(update={"state": "Failed", "reason": training_local.REASON_RUNNER_LOST,
                                                      "message": "the run directory is gone"}), [])
        return Observed(self._record(run, record.trigger), list(run.outputs.get("validation_reasons") or []))

    async def cancel(self, record: RunRecord) -> None:
        await asyncio.to_thread(training_local.cancel, record.name, self.settings.data_dir, self.namespace)

    async def sync_schedule(self, request: ScheduleRequest) -> Schedule:
        return Schedule()  # the operator fires the schedule itself

    async def cleanup(self, status: ModelTrainingStatus) -> None:
        if status.latest_run is not None and status.latest_run.state in modeltraining.ACTIVE_STATES:
            await self.cancel(status.latest_run)


class KfpTraining:
    """Backend ``kfp``: runs and a recurring run on a Kubeflow Pipelines v2 API."""

    schedules_runs: ClassVar[bool] = True

    def __init__(self, spec: ModelTrainingSpec, namespace: str, name: str, settings: Settings) -> None:
        self.spec, self.namespace, self.name, self.settings = spec, namespace, name, settings
        self.experiment = spec.kfp.experiment if spec.kfp else "mlops-operator"
        self._connection: training_kfp.KfpConnection | None = None

    @property
    def recurring_run_name(self) -> str:
        """The display name of this object's recurring run (deterministic: found again after a restart,
        and on delete without the object's uid)."""
        return f"{self.namespace}.{self.name}"

    async def connection(self) -> training_kfp.KfpConnection:
        """The KFP API connection of this object (its token read from the Secret now, never stored)."""
        if self._connection is None:
            spec = self.spec
            token = None
            if spec.kfp and spec.kfp.token_secret_ref:
                ref = spec.kfp.token_secret_ref
                try:
                    token = await kube.read_secret_key(self.namespace, ref.name, ref.key)
                except KeyError:
                    raise InvalidSpec(f"spec.kfp.tokenSecretRef: Secret {ref.name} has no key {ref.key}") from None
                except Exception as error:  # the message names the Secret, never its value
                    raise InvalidSpec("spec.kfp.tokenSecretRef: "
                                      + kube.describe_api_error(error, f"Secret {ref.name}")) from None
            host = (spec.kfp and spec.kfp.host) or self.settings.kfp_host or ""
            namespace = (spec.kfp and spec.kfp.namespace) or self.settings.kfp_namespace
            try:
                self._connection = _kfp_connection(host, namespace, token)
            except ValueError as error:  # no host, not http(s), not a URL: the spec's to fix
                raise InvalidSpec(f"spec.kfp.host: {error}") from None
        return self._connection

    async def package(self) -> str:
        """The compiled pipeline to send: the spec's, or the built-in one in the trainingImage
        setting's image; with the spec's resources, retries, node selector and tolerations."""
        source = await pipeline_source(self.spec, self.namespace, self.settings)
        image = None if source else self.settings.training_image_ref
        package = source or str(pipeline_package.default_pipeline_package())
        return await asyncio.to_thread(_kfp().with_run_settings, package, kfp_run_settings(self.spec, image),
                                       Path(self.settings.data_dir) / "pipelines")

    def _outputs(self, run_name: str) -> dict[str, Any]:
        """KFP does not return a run's output parameters through its run API: read from the artifact store."""
        return stored_outputs(self.settings.artifact_root_uri, self.namespace, self.spec.model, run_name)

    @staticmethod
    def _record(run: training_kfp.KfpRun, name: str, trigger: str, outputs: dict[str, Any]) -> RunRecord:
        reason = None
        if run.state == "Failed":
            message = run.message or ""
            reason = next((r for r in STEP_REASONS if r in message), Failure.reason)
        return modeltraining.run_record(name, trigger, run.run_id, run.state, _iso(run.started), _iso(run.finished),
                                        reason, run.message, outputs)

    async def _observed(self, run: training_kfp.KfpRun, name: str, trigger: str) -> Observed:
        outputs = await asyncio.to_thread(self._outputs, name) if run.state == "Succeeded" else {}
        return Observed(self._record(run, name, trigger, outputs), list(outputs.get("validation_reasons") or []))

    async def submit(self, run_name: str, trigger: str, parameters: dict[str, Any]) -> RunRecord:
        conn = await self.connection()
        package = await self.package()
        try:
            # Parameter types coerced to the compiled pipeline's inputs (estimator_params travels as
            # JSON text), the pipeline digest filled in: the same arguments as a local run.
            arguments = pipeline_package.pipeline_arguments({"parameters": parameters}, run_name,
                                                            self.settings.data_dir, package)
            run = await asyncio.to_thread(_kfp().submit_run, conn, run_name, package, arguments,
                                          self.experiment, pipeline_root=self.settings.kfp_pipeline_root,
                                          service_account=self.settings.kfp_service_account,
                                          enable_caching=self.spec.caching)
        except (_kfp().RequestRejected, ValueError) as error:  # the KFP API will never take this run
            stamp = _iso(datetime.now(UTC))
            return modeltraining.run_record(run_name, trigger, None, "Failed", stamp, stamp, InvalidSpec.reason,
                                            str(error))
        return self._record(run, run_name, trigger, {})

    async def observe(self, record: RunRecord) -> Observed:
        conn = await self.connection()
        run = await asyncio.to_thread(_kfp().get_run, conn, record.backend_run_id)
        return await self._observed(run, record.name, record.trigger)

    async def cancel(self, record: RunRecord) -> None:
        if record.backend_run_id:
            conn = await self.connection()
            await asyncio.to_thread(_kfp().cancel_run, conn, record.backend_run_id)

    async def sync_schedule(self, request: ScheduleRequest) -> Schedule:
        conn = await self.connection()
        jobs = await asyncio.to_thread(_kfp().find_recurring_runs, conn, self.recurring_run_name)
        runs = []
        for job in jobs:
            for run in await asyncio.to_thread(_kfp().recurring_run_runs, conn, job):
                if run.scheduled is None or (request.since is not None and run.scheduled <= request.since):
                    continue
                name = request.run_prefix + run.scheduled.astimezone(UTC).strftime(_kfp().SCHEDULED_TIME_FORMAT)
                trigger = f"schedule {request.cron or '(removed)'} at {_iso(run.scheduled)}"
                observed = await self._observed(run, name, trigger)
                runs.append(modeltraining.ScheduledRun(run.scheduled, observed.record, observed.reasons))
        if request.cron is None:
            await asyncio.to_thread(_kfp().delete_recurring_run, conn, self.recurring_run_name)
            return Schedule(None, runs)
        package = await self.package()
        # Each fire gets its own run name, so its own model version: KFP puts the fire's schedule
        # time in place of the macro, and the same time is the fire's scheduled_at, read back above.
        arguments = pipeline_package.pipeline_arguments(
            {"parameters": request.parameters}, request.run_prefix + _kfp().SCHEDULED_TIME_MACRO,
            self.settings.data_dir, package)
        recurring_run_id = await asyncio.to_thread(
            _kfp().ensure_recurring_run, conn, self.recurring_run_name, package, arguments, request.cron,
            self.experiment, enabled=request.enabled, pipeline_root=self.settings.kfp_pipeline_root,
            service_account=self.settings.kfp_service_account, enable_caching=self.spec.caching)
        return Schedule(recurring_run_id, runs)

    async def cleanup(self, status: ModelTrainingStatus) -> None:
        """Terminate the active runs (the latest one and any fire of the recurring run), then delete
        the recurring run."""
        if status.latest_run is not None and status.latest_run.state in modeltraining.ACTIVE_STATES:
            await self.cancel(status.latest_run)
        conn = await self.connection()
        jobs = await asyncio.to_thread(_kfp().find_recurring_runs, conn, self.recurring_run_name)
        # Disabled first, so it fires no more while its runs are being stopped; deleted last: deleting
        # it first lets the cluster's garbage collector remove its runs' Workflows, and KFP then fails
        # to terminate those runs (500 "patching error", seen on the real KFP 2.17 server).
        for job in jobs:
            await asyncio.to_thread(_kfp().disable_recurring_run, conn, job)
            for run in await asyncio.to_thread(_kfp().recurring_run_runs, conn, job):
                if not run.is_finished:
                    await asyncio.to_thread(_kfp().cancel_run, conn, run.run_id)
        await asyncio.to_thread(_kfp().delete_recurring_run, conn, self.recurring_run_name)


def stored_outputs(root: str, namespace: str, model: str, run_name: str) -> dict[str, Any]:
    """A finished run's outputs as the export step wrote them to the shared artifact store, under a
    claim keyed by the run name ({} when the run published no complete version)."""
    version = artifacts.version_for_run(root, namespace, model, run_name)
    if version is None or not artifacts.is_complete(root, namespace, model, version):
        return {}
    info = artifacts.read_model_version(root, namespace, model, version)
    return {"model_version": version, "model_uri": info["uri"], "metrics": info["metrics"],
            "validated": info["validated"], "validation_reasons": info["validationReasons"],
            "profile_uri": info["profileUri"],
            "dataset_digest": (info["lineage"].get("dataset") or {}).get("digest"),
            "sources": info["lineage"].get("sources"), "comparison": info["lineage"].get("comparison")}


class JobTraining:
    """Backend ``job``: each run is a Kubernetes Job running the compiled pipeline through kfp.local
    (``training_runner --job``) in the trainingImage setting's image (default the operator's own).

    - **Inputs**: the pipeline arguments (resolved here, as for a local run) and, for a pipeline the
      spec names, the package's text travel in the Pod's environment (``reconcile.trainingjob.REQUEST_ENV``);
      the built-in pipeline is the image's own. The artifact root must be object storage the Pod can
      reach (``s3://``): a ``file://`` root is InvalidSpec before any Job exists. Its credentials are
      spec.storageSecretName's keys, referenced by ``secretKeyRef`` (the kubelet reads the Secret; the
      operator only checks that the keys are there), or the Pod's service account (IRSA);
      AWS_ENDPOINT_URL and AWS_REGION, not secret, are copied from the operator's environment.
      spec.dataset.credentialsSecretRef's Secret is mounted read-only in the Pod for the dataset alone.
    - **Result**: the export step writes the model version (metrics, URI, validation reasons, lineage)
      to the artifact store under a claim keyed by the run name; the operator reads it from there, as
      for KFP (:func:`stored_outputs`), with no size limit, and it survives the Job. A failed Pod's
      reason and message come from its termination message (the runner writes ``{state, reason,
      message}`` within the 4 KiB Kubernetes keeps; ``FallbackToLogsOnError`` leaves a killed Pod's log
      tail). Reading it lists the Job's Pods.
    - **Ownership**: the Job's name is the run's (``trainingjob.job_name``), so a restart or a second
      reconcile finds it: create is idempotent on AlreadyExists and never starts a second Job for one
      trigger. The ModelTraining owns its Jobs (deletion cascades); labels name the ModelTraining, an
      annotation the run. A finished Job is removed by Kubernetes after ``ttlSecondsAfterFinished``
      (a day); a Job gone before the operator saw it finish is read back from the artifact store
      (Succeeded) or reported Failed/JobLost. Cancel (Replace, delete, timeout) deletes the Job with
      propagation Background.
    - **States**: no Pod container started: Pending; started: Running (``started`` is the first
      container's start); condition Complete: Succeeded; condition Failed: Failed with the step's
      reason (DataValidationFailed, ...) or, when the Pod left none, the condition's (DeadlineExceeded,
      BackoffLimitExceeded, PodFailurePolicy), the condition named in the message. An active Job past
      its ``activeDeadlineSeconds`` (counted from its startTime) is Failed/DeadlineExceeded at once,
      so the handler's own spec.timeout count (from the container's start, later) never deletes it:
      the Job controller stops the Pod and marks the Job Failed/DeadlineExceeded itself.
    - **Resources**: spec.resources (cpu, memory, nvidia.com/gpu), nodeSelector and tolerations go to the
      Job's one container and Pod; spec.timeout is ``activeDeadlineSeconds``; spec.retries is
      ``backoffLimit``, with a Pod failure policy that fails the Job at once on InvalidSpec and
      DataValidationFailed (exit code 3), which a retry cannot change.
    """

    schedules_runs: ClassVar[bool] = False
    MAX_PACKAGE_BYTES: ClassVar[int] = 256 * 1024
    """Largest pipeline package carried in the Job's environment (the Job object is at most 1.5 MiB)."""
    PLAIN_ENV: ClassVar[tuple[str, ...]] = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
    """The operator's environment the Job's Pod gets as well (where the artifact store is; not secret)."""
    REASON_JOB_LOST: ClassVar[str] = "JobLost"

    def __init__(self, spec: ModelTrainingSpec, namespace: str, name: str, settings: Settings) -> None:
        self.spec, self.namespace, self.name, self.settings = spec, namespace, name, settings

    def _artifact_root_problem(self) -> str | None:
        root = self.settings.artifact_root_uri
        scheme = root.split("://", 1)[0].lower() if "://" in root else "file"
        if scheme in ("file", "local"):
            return (f"spec.backend: job runs each training in its own Pod, which cannot write the operator's local "
                    f"artifact root {root}: set the operator's MLOPS_ARTIFACT_ROOT (chart: operator.artifactRoot) "
                    "to object storage such as s3://bucket/prefix")
        return None

    async def _check_storage_secret(self) -> None:
        name = self.spec.storage_secret_name
        if not name:
            return
        try:
            keys = set(await kube.read_secret(self.namespace, name))
        except Exception as error:  # the message names the Secret, never a value
            raise InvalidSpec("spec.storageSecretName: " + kube.describe_api_error(error, f"Secret {name}")) from None
        missing = [key for key, optional in trainingjob.SECRET_KEYS if not optional and key not in keys]
        if missing:
            raise InvalidSpec(f"spec.storageSecretName: Secret {name} has no key {', '.join(missing)}")

    async def submit(self, run_name: str, trigger: str, parameters: dict[str, Any]) -> RunRecord:
        problem = self._artifact_root_problem()
        if problem:
            raise InvalidSpec(problem)
        await self._check_storage_secret()
        # The dataset's Secret is mounted in the Pod (the kubelet reads it); checked here so a missing Secret is
        # InvalidSpec now, not a Pod waiting for its volume. Its values are read and dropped.
        await dataset_credentials_env(self.spec, self.namespace)
        source = await pipeline_source(self.spec, self.namespace, self.settings)
        package = source or str(pipeline_package.default_pipeline_package())
        stamp = _iso(datetime.now(UTC))
        try:
            arguments = pipeline_package.pipeline_arguments({"parameters": parameters}, run_name,
                                                            self.settings.data_dir, package)
            request: dict[str, Any] = {"arguments": arguments}
            if source:
                text = Path(source).read_text()
                if len(text.encode()) > self.MAX_PACKAGE_BYTES:
                    raise ValueError(f"spec.pipeline: the compiled pipeline is {len(text.encode())} bytes; backend job "
                                     f"carries at most {self.MAX_PACKAGE_BYTES} in the Job")
                request["pipelinePackageText"] = text
        except (ValueError, KeyError, TypeError) as error:  # the pipeline will never take this run
            return modeltraining.run_record(run_name, trigger, None, "Failed", stamp, stamp, InvalidSpec.reason,
                                            str(error))
        owner = await kube.get_object("modeltrainings", self.namespace, self.name)
        if owner is None:  # deleted meanwhile: nothing to run for
            return modeltraining.run_record(run_name, trigger, None, "Canceled", None, stamp, "Canceled",
                                            "the ModelTraining was deleted")
        manifest = trainingjob.job_manifest(
            run_name=run_name, namespace=self.namespace, training_name=self.name,
            training_uid=owner["metadata"]["uid"], image=self.settings.training_image_ref, spec=self.spec,
            request=request, plain_env={k: os.environ[k] for k in self.PLAIN_ENV if os.environ.get(k)},
            service_account=self.settings.training_service_account)
        job, _ = await asyncio.to_thread(training_job.create_job, manifest)
        run = trainingjob.job_run(job)
        return modeltraining.run_record(run_name, trigger, job["metadata"]["name"], run.state, run.started,
                                        run.finished, run.reason, run.message)

    async def observe(self, record: RunRecord) -> Observed:
        name = record.backend_run_id or trainingjob.job_name(record.name)
        job = await asyncio.to_thread(training_job.read_job, self.namespace, name)
        root = self.settings.artifact_root_uri
        if job is None:
            outputs = await asyncio.to_thread(stored_outputs, root, self.namespace, self.spec.model, record.name)
            if outputs:  # finished and removed (TTL) while the operator was away
                done = modeltraining.run_record(record.name, record.trigger, name, "Succeeded", record.started,
                                                record.finished or _iso(datetime.now(UTC)), outputs=outputs)
                return Observed(done, list(outputs.get("validation_reasons") or []))
            lost = record.model_copy(update={
                "state": "Failed", "reason": self.REASON_JOB_LOST, "finished": _iso(datetime.now(UTC)),
                "message": f"the Job {name} is gone (deleted by someone else, or removed after it finished) and the "
                           "artifact store has no model version of this run"})
            return Observed(lost, [])
        pods = await asyncio.to_thread(training_job.job_pods, self.namespace, name)
        run = trainingjob.job_run(job, trainingjob.first_container_start(pods), trainingjob.last_termination_message(pods),
                                  datetime.now(UTC))
        outputs = {}
        if run.state == "Succeeded":
            outputs = await asyncio.to_thread(stored_outputs, root, self.namespace, self.spec.model, record.name)
        done = modeltraining.run_record(record.name, record.trigger, name, run.state, run.started, run.finished,
                                        run.reason, run.message, outputs)
        return Observed(done, list(outputs.get("validation_reasons") or []))

    async def cancel(self, record: RunRecord) -> None:
        name = record.backend_run_id or trainingjob.job_name(record.name)
        await asyncio.to_thread(training_job.delete_job, self.namespace, name)

    async def sync_schedule(self, request: ScheduleRequest) -> Schedule:
        return Schedule()  # the operator fires the schedule itself

    async def cleanup(self, status: ModelTrainingStatus) -> None:
        """Delete the active run's Job (the garbage collector removes the rest with their owner)."""
        if status.latest_run is not None and status.latest_run.state in modeltraining.ACTIVE_STATES:
            await self.cancel(status.latest_run)


_connections: dict[tuple[str, str | None, str], training_kfp.KfpConnection] = {}
_MAX_CONNECTIONS = 64


def _kfp_connection(host: str, namespace: str | None, token: str | None) -> training_kfp.KfpConnection:
    """One connection (and so one kfp.Client, probed once) per KFP API, profile and token, reused by
    every reconcile; keyed by the token's digest, so a rotated token gets a new client."""
    key = (host, namespace, hashlib.sha256((token or "").encode()).hexdigest())
    connection = _connections.get(key)
    if connection is None:
        if len(_connections) >= _MAX_CONNECTIONS:
            _connections.pop(next(iter(_connections)))
        connection = _connections[key] = _kfp().KfpConnection(host=host, namespace=namespace, token=token)
    return connection


BACKENDS: dict[str, type[LocalTraining] | type[KfpTraining] | type[JobTraining]] = {
    "local": LocalTraining, "kfp": KfpTraining, "job": JobTraining}
"""spec.backend -> the class that implements it."""


def training_backend(spec: ModelTrainingSpec, namespace: str, name: str, settings: Settings) -> TrainingBackend:
    """The backend of one ModelTraining, chosen by spec.backend."""
    return BACKENDS[spec.backend](spec, namespace, name, settings)


def kfp_run_settings(spec: ModelTrainingSpec, image: str | None) -> training_kfp.RunSettings:
    """spec.resources, retries, nodeSelector and tolerations (and the steps' image) for KFP."""
    requests = spec.resources.requests if spec.resources and spec.resources.requests else None
    limits = spec.resources.limits if spec.resources and spec.resources.limits else None
    gpus = (limits and limits.gpu) or (requests and requests.gpu) or None  # an extended resource: request = limit
    return _kfp().RunSettings(
        image=image, cpu_request=requests and requests.cpu, cpu_limit=limits and limits.cpu,
        memory_request=requests and requests.memory, memory_limit=limits and limits.memory, gpus=gpus,
        node_selector=dict(spec.node_selector or {}),
        tolerations=tuple(t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or ()),
        retries=spec.retries)


def builtin_kfp_package(settings: Settings) -> str:
    """The built-in pipeline with its steps in the trainingImage setting's image (default: the
    operator's own image and version, what the pipeline is compiled with)."""
    return _kfp().with_component_image(str(pipeline_package.default_pipeline_package()),
                                             settings.training_image_ref, settings.data_dir / "pipelines")


async def dataset_credentials_env(spec: ModelTrainingSpec, namespace: str) -> dict[str, str]:
    """The run's environment carrying spec.dataset.credentialsSecretRef's keys (read now, never stored)."""
    ref = spec.dataset.credentials_secret_ref
    if ref is None:
        return {}
    try:
        data = await kube.read_secret(namespace, ref.name)
    except Exception as error:  # the message names the Secret, never a value
        reason = getattr(error, "reason", None) or type(error).__name__
        raise InvalidSpec(f"spec.dataset.credentialsSecretRef: cannot read Secret {ref.name}: {reason}") from None
    if not data:
        raise InvalidSpec(f"spec.dataset.credentialsSecretRef: Secret {ref.name} has no keys")
    return storage_credentials.dataset_env(data)


async def pipeline_source(spec: ModelTrainingSpec, namespace: str, settings: Settings) -> str | None:
    """Path of the compiled pipeline the spec names (None: the built-in template)."""
    source = spec.pipeline
    if source.config_map_ref:
        ref = source.config_map_ref
        try:
            text = await kube.read_config_map_key(namespace, ref.name, ref.key)
        except KeyError:
            raise InvalidSpec(f"spec.pipeline.configMapRef: ConfigMap {ref.name} has no key {ref.key}") from None
        except Exception as error:
            raise InvalidSpec("spec.pipeline.configMapRef: "
                              + kube.describe_api_error(error, f"ConfigMap {ref.name}")) from None
        path = Path(settings.data_dir) / "pipelines" / namespace / f"{ref.name}-{ref.key}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)
    if source.uri:
        import fsspec

        path = Path(settings.data_dir) / "pipelines" / namespace / source.uri.replace("/", "_")[-120:]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if uri_policy.is_http(source.uri):  # under the URI policy again, now: redirects, rebinding
                path.write_bytes(await asyncio.to_thread(uri_policy.http_get, source.uri, uri_policy.environment_policy(),
                                                         namespace=namespace))
            else:
                with fsspec.open(source.uri, "rb") as handle:
                    path.write_bytes(handle.read())
        except Exception as error:
            raise InvalidSpec(f"spec.pipeline.uri: cannot read {source.uri}: {error}") from None
        return str(path)
    return None
