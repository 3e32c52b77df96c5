"""Training backend ``kfp``: compiled KFP v2 pipelines submitted to a Kubeflow Pipelines v2 API.

Everything here is synchronous (``kfp.Client`` is); the kopf handlers call it through
``asyncio.to_thread``. Idempotency comes from deterministic display names chosen by the caller:
a run or recurring run is looked up by display name before anything is created, so a crash
between "submitted" and "status written" never leads to a second run.

What the KFP v2beta1 REST API tells about a finished run: its state, error, timestamps, state
history and, in ``run_details.task_details``, each task's state, error, pod name and the *artifact
ids* (ML Metadata) of its inputs and outputs. Output *parameter values* (and so a pipeline's
return values) are not part of that API: they live in ML Metadata. Pipelines run by this operator
therefore write what the operator needs (metrics, model, profile) to the artifact store, and the
handler reads it there; :class:`KfpRun` carries the task states and output artifact ids for
reference.

Errors: :class:`~mlops_operator.api.errors.BackendUnavailable` for anything worth retrying later (host unreachable, timeouts,
5xx, 429, rejected credentials), :class:`RequestRejected` for requests that will not succeed as
they are (invalid package or parameters, other 4xx). Neither ever contains the bearer token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import kfp
import kfp_server_api
import urllib3
import yaml
from croniter import croniter
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from kfp_server_api.rest import RESTClientObject

from mlops_operator.api.errors import BackendUnavailable

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# kfp.Client warns on every construction that it needs a v2 server; this backend only talks v2.
warnings.filterwarnings(
    "ignore", message="This client only works with Kubeflow Pipeline v2", category=FutureWarning
)

RunState = Literal["Pending", "Running", "Succeeded", "Failed", "Canceled"]
"""Our run states (the same values as ``RunRecord.state`` in the ModelTraining API)."""

KFP_RUN_STATES: dict[str, RunState] = {
    "RUNTIME_STATE_UNSPECIFIED": "Pending",
    "PENDING": "Pending",
    "RUNNING": "Running",
    # Still running: cancellation has been asked for but pods may still be working.
    "CANCELING": "Running",
    # A paused run is neither finished nor failed; it resumes where it stopped.
    "PAUSED": "Running",
    "SUCCEEDED": "Succeeded",
    # KFP (and kfp.Client.wait_for_run_completion) treat SKIPPED as a finished, non-failed run.
    "SKIPPED": "Succeeded",
    "FAILED": "Failed",
    "CANCELED": "Canceled",
}
"""KFP v2beta1 ``RuntimeState`` → our run state."""

_FILTER_EQUALS = "EQUALS"
_MANAGED_DESCRIPTION = "Managed by mlops-operator; spec-hash: "
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
SCHEDULED_TIME_MACRO = "[[ScheduledTime]]"
"""A recurring run's parameter macro: the ScheduledWorkflow controller replaces it in each fire's
parameters by the time the fire was scheduled for (backend/src/common/util/parameter_formatter.go)."""
SCHEDULED_TIME_FORMAT = "%Y%m%d%H%M%S"
"""The macro's format (Go layout 20060102150405, UTC), the same as the fire's ``scheduled_at``."""
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class RequestRejected(Exception):
    """The request cannot succeed as it is: an invalid pipeline package or parameters, or a 4xx
    answer from the API. ``status`` is the HTTP status, or None when rejected before sending."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class KfpTask:
    """One task of a KFP run, as ``run_details.task_details`` reports it."""

    name: str
    """Task display name (driver and executor tasks included, as KFP lists them)."""
    kfp_state: str
    """The KFP runtime state of the task."""
    error: str | None
    """The task's error message, if any."""
    outputs: dict[str, list[str]]
    """Output name → ML Metadata artifact ids (values of output parameters are not exposed)."""
    started: dt.datetime | None
    finished: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class KfpRun:
    """A KFP run, reduced to what the operator uses."""

    run_id: str
    name: str
    """Display name (the deterministic name the caller chose)."""
    experiment_id: str | None
    state: RunState
    """Our state, from :data:`KFP_RUN_STATES`."""
    kfp_state: str
    """The KFP runtime state as the API returned it."""
    message: str | None
    """Why the run failed or was canceled; None otherwise."""
    created: dt.datetime | None
    scheduled: dt.datetime | None
    """When the run was scheduled: for a recurring run's fire, the schedule time it fired for."""
    started: dt.datetime | None
    """When the run first reported RUNNING (state history), else when it was scheduled."""
    finished: dt.datetime | None
    parameters: dict[str, Any]
    """Runtime parameters the run was created with."""
    tasks: tuple[KfpTask, ...]
    recurring_run_id: str | None
    """Set when a recurring run created this run."""

    @property
    def is_finished(self) -> bool:
        """Whether the run reached a final state."""
        return self.state in ("Succeeded", "Failed", "Canceled")


class KfpConnection:
    """How to reach one KFP v2 API; the ``kfp.Client`` is built on first use and then reused.

    ``host`` is the API endpoint (``http://ml-pipeline.kubeflow.svc:8888``, or the Kubeflow
    gateway ``https://.../pipeline``). ``namespace`` is the Kubeflow profile namespace in
    multi-user mode, None in single-user mode. ``token`` is sent as ``Authorization: Bearer`` and
    never logged, shown in ``repr`` or put in any error message. Timeouts bound every request;
    connection failures are retried ``connect_retries`` times before giving up.
    """

    def __init__(
        self,
        host: str,
        namespace: str | None,
        token: str | None = None,
        verify_ssl: bool = True,
        ca_cert_path: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        connect_retries: int = 1,
    ) -> None:
        if not host.startswith(("http://", "https://")):
            raise ValueError("the KFP host must start with http:// or https://")
        self.host = host.rstrip("/")
        self.namespace = namespace or None
        self.verify_ssl = verify_ssl
        self.ca_cert_path = ca_cert_path
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.connect_retries = connect_retries
        self._token = token or None
        self._client: _OperatorKfpClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KfpConnection(host={_display_host(self.host)!r}, namespace={self.namespace!r})"

    def client(self) -> kfp.Client:
        """The connection's ``kfp.Client``; built (and the API probed) on first call.

        Raises :class:`BackendUnavailable` when the API cannot be reached.
        """
        with self._lock:
            if self._client is None:
                self._client = self._call("connect", self._build_client)
            return self._client

    def _build_client(self) -> _OperatorKfpClient:
        return _OperatorKfpClient(
            host=self.host,
            namespace=self.namespace,
            existing_token=self._token,
            verify_ssl=self.verify_ssl,
            ssl_ca_cert=self.ca_cert_path,
            request_timeout=(self.connect_timeout, self.read_timeout),
            retries=urllib3.Retry(
                total=self.connect_retries,
                connect=self.connect_retries,
                read=0,  # a POST that reached the server must not be sent twice
                status=0,
                redirect=0,
                backoff_factor=0.2,
                raise_on_status=False,
            ),
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _call(self, operation: str, call: Callable[[], _T]) -> _T:
        """Runs one API call, turning every failure into a token-free BackendUnavailable or RequestRejected."""
        where = _display_host(self.host)
        try:
            return call()
        except kfp_server_api.ApiException as err:
            raise self._api_error(operation, where, err) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            cause = getattr(err, "reason", None) or err
            # NewConnectionError subclasses ConnectTimeoutError in urllib3, though it is a refusal.
            timed_out = isinstance(cause, (urllib3.exceptions.TimeoutError, TimeoutError)) and not isinstance(
                cause, urllib3.exceptions.NewConnectionError
            )
            what = "timed out" if timed_out else "unreachable"
            raise BackendUnavailable(f"KFP API at {where} {what} ({operation}): {self._redact(str(cause))}") from None

    def _api_error(self, operation: str, where: str, err: kfp_server_api.ApiException) -> BackendUnavailable | RequestRejected:
        status = err.status or 0
        if status == 0:  # raised by the generated client itself, e.g. on a TLS failure
            return BackendUnavailable(f"KFP API at {where} unreachable ({operation}): {self._redact(str(err.reason))}")
        detail = self._redact(_server_message(err))
        message = f"KFP API at {where} answered {status} {err.reason or ''} to {operation}".rstrip()
        if detail:
            message += f": {detail}"
        if status >= 500 or status == 429:
            return BackendUnavailable(message)
        if status in (401, 403):
            return BackendUnavailable(message + " (check the token Secret and its permissions)")
        return RequestRejected(message, status=status)


class _OperatorKfpClient(kfp.Client):
    """``kfp.Client`` made fit for a long-running, multi-threaded operator.

    Out of the box the client reads and writes ``~/.config/kfp/context.json``, probes
    ``/apis/v2beta1/healthz`` up to five times with 5 s sleeps when no namespace is set, and sends
    requests without any timeout. Here: no home-directory state, a single healthz probe, and a
    default (connect, read) timeout and connection retry policy on every request.
    """

    def __init__(
        self,
        *,
        request_timeout: tuple[float, float],
        retries: urllib3.Retry,
        **kwargs: Any,
    ) -> None:
        self._request_timeout = request_timeout
        self._retries = retries
        super().__init__(**kwargs)
        # Every generated API shares this one ApiClient; give it a REST client whose requests
        # carry a timeout (kfp.Client passes none, and urllib3 then waits forever).
        api_client = self._run_api.api_client
        api_client.rest_client.pool_manager.clear()
        api_client.rest_client = _RestClientWithTimeout(self._existing_config, request_timeout)

    def _load_config(self, *args: Any, **kwargs: Any) -> kfp_server_api.Configuration:
        config = super()._load_config(*args, **kwargs)
        config.retries = self._retries
        return config

    def _load_context_setting_or_default(self) -> None:
        # The operator's namespace comes from the resource, never from a file in $HOME.
        self._context_setting = {"namespace": ""}

    def set_user_namespace(self, namespace: str) -> None:
        # kfp writes this to ~/.config/kfp/context.json; keep it in memory only.
        self._context_setting["namespace"] = namespace

    def get_kfp_healthz(self, sleep_duration: int = 5) -> kfp_server_api.V2beta1GetHealthzResponse:
        # One attempt, bounded: the caller retries on its own schedule (kopf TemporaryError).
        return self._healthz_api.healthz_service_get_healthz(_request_timeout=self._request_timeout)


class _RestClientWithTimeout(RESTClientObject):
    """The generated REST client with a default timeout for requests that do not set one."""

    def __init__(self, configuration: kfp_server_api.Configuration, timeout: tuple[float, float]) -> None:
        super().__init__(configuration)
        self._default_timeout = timeout

    def request(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().request(*args, _request_timeout=_request_timeout or self._default_timeout, **kwargs)


def submit_run(
    conn: KfpConnection,
    run_name: str,
    pipeline_package_path: str,
    params: Mapping[str, Any],
    experiment: str,
    *,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    enable_caching: bool | None = None,
) -> KfpRun:
    """Starts a run of a compiled pipeline package (``.yaml``) unless one with this name exists.

    ``run_name`` must be deterministic (e.g. ``<mt-name>-<uid8>-g3``): the run is first looked up
    by display name in ``experiment`` (created if missing) and returned if found, so a repeated
    call never creates a second run. ``params`` are checked against the pipeline's inputs before
    anything is sent (:class:`RequestRejected` on unknown, missing or mistyped parameters).
    """
    spec = load_pipeline_spec(pipeline_package_path)
    check_pipeline_parameters(spec, params)
    client = conn.client()
    experiment_id = _experiment_id(conn, experiment)
    existing = _find_run(conn, experiment_id, run_name)
    if existing is not None:
        logger.info("KFP run %s already exists (%s); not creating another", run_name, existing.run_id)
        return _to_kfp_run(existing)
    result = conn._call(
        "create run",
        lambda: client.create_run_from_pipeline_package(
            pipeline_file=pipeline_package_path,
            arguments=dict(params),
            run_name=run_name,
            experiment_id=experiment_id,
            pipeline_root=pipeline_root,
            service_account=service_account,
            enable_caching=enable_caching,
        ),
    )
    logger.info("created KFP run %s (%s) in experiment %s", run_name, result.run_id, experiment)
    return _to_kfp_run(result.run_info)


def find_run(conn: KfpConnection, run_name: str, experiment: str) -> KfpRun | None:
    """The run with this display name in ``experiment``, or None (the experiment is not created)."""
    client = conn.client()
    filter_json = display_name_filter(experiment)
    found = conn._call(
        "find experiment",
        lambda: client.list_experiments(filter=filter_json, namespace=conn.namespace, page_size=2),
    )
    if not found.experiments:
        return None
    run = _find_run(conn, found.experiments[0].experiment_id, run_name)
    return _to_kfp_run(run) if run is not None else None


def get_run(conn: KfpConnection, run_id: str) -> KfpRun:
    """The run's current state, error, times, parameters and task details.

    Raises :class:`RequestRejected` with status 404 when KFP does not know the run.
    """
    client = conn.client()
    return _to_kfp_run(conn._call("get run", lambda: client.get_run(run_id)))


def cancel_run(conn: KfpConnection, run_id: str) -> None:
    """Asks KFP to terminate the run (concurrencyPolicy Replace). A run that is already finished
    or unknown is left alone."""
    client = conn.client()
    try:
        run = get_run(conn, run_id)
    except RequestRejected as err:
        if err.status == 404:
            return
        raise
    if run.is_finished or run.kfp_state == "CANCELING":
        return
    conn._call("terminate run", lambda: client.terminate_run(run_id))
    logger.info("asked KFP to terminate run %s (%s)", run.name, run_id)


def ensure_recurring_run(
    conn: KfpConnection,
    name: str,
    pipeline_package_path: str,
    params: Mapping[str, Any],
    cron: str,
    experiment: str,
    max_concurrency: int = 1,
    *,
    enabled: bool = True,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    enable_caching: bool | None = None,
) -> str:
    """Makes a KFP recurring run named ``name`` match the arguments; returns its id.

    ``cron`` is a standard five-field expression (or ``@daily`` …) and is sent as KFP's
    six-field form (:func:`kfp_cron`). Idempotent by display name: a matching recurring run is
    kept; one whose package, parameters, schedule or concurrency changed is deleted and created
    again (KFP has no update); ``enabled`` is applied with enable/disable (``spec.suspend``).
    """
    kfp_schedule = kfp_cron(cron)
    spec = load_pipeline_spec(pipeline_package_path)
    check_pipeline_parameters(spec, params)
    if not 1 <= max_concurrency <= 10:
        raise RequestRejected("max_concurrency must be between 1 and 10 (a KFP limit)")
    with open(pipeline_package_path, "rb") as package:
        package_bytes = package.read()
    fingerprint = _recurring_run_fingerprint(
        package_bytes, params, kfp_schedule, max_concurrency, pipeline_root, service_account, enable_caching
    )

    client = conn.client()
    experiment_id = _experiment_id(conn, experiment)
    keep: kfp_server_api.V2beta1RecurringRun | None = None
    for existing in _list_recurring_runs(conn, name, experiment_id=experiment_id):
        if keep is None and existing.description == _MANAGED_DESCRIPTION + fingerprint:
            keep = existing
            continue
        _delete_recurring_run(conn, existing)

    if keep is not None:
        is_enabled = (keep.status or "").upper() != "DISABLED" and (keep.mode or "").upper() != "DISABLE"
        if enabled and not is_enabled:
            conn._call("enable recurring run", lambda: client.enable_recurring_run(keep.recurring_run_id))
        elif not enabled and is_enabled:
            conn._call("disable recurring run", lambda: client.disable_recurring_run(keep.recurring_run_id))
        return keep.recurring_run_id

    created = conn._call(
        "create recurring run",
        lambda: client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=name,
            description=_MANAGED_DESCRIPTION + fingerprint,
            cron_expression=kfp_schedule,
            max_concurrency=max_concurrency,
            no_catchup=True,  # after downtime, one run rather than a backlog of missed ones
            params=dict(params),
            pipeline_package_path=pipeline_package_path,
            enabled=enabled,
            pipeline_root=pipeline_root,
            service_account=service_account,
            enable_caching=enable_caching,
        ),
    )
    logger.info("created KFP recurring run %s (%s), cron %r", name, created.recurring_run_id, kfp_schedule)
    return created.recurring_run_id


@dataclasses.dataclass(frozen=True)
class KfpRecurringRun:
    """A recurring run, reduced to what the operator uses."""

    recurring_run_id: str
    name: str
    experiment_id: str | None
    enabled: bool


def find_recurring_runs(conn: KfpConnection, name: str) -> list[KfpRecurringRun]:
    """The recurring runs with this display name (in the connection's namespace)."""
    return [KfpRecurringRun(job.recurring_run_id, job.display_name, job.experiment_id or None,
                            (job.status or "").upper() != "DISABLED" and (job.mode or "").upper() != "DISABLE")
            for job in _list_recurring_runs(conn, name, experiment_id=None)]


def disable_recurring_run(conn: KfpConnection, recurring_run: KfpRecurringRun) -> None:
    """Stop a recurring run from firing (its runs stay, and can still be cancelled)."""
    if recurring_run.enabled:
        conn._call("disable recurring run",
                   lambda: conn.client().disable_recurring_run(recurring_run.recurring_run_id))


def recurring_run_runs(conn: KfpConnection, recurring_run: KfpRecurringRun, limit: int = 20) -> list[KfpRun]:
    """The newest ``limit`` runs a recurring run has started, newest first (ListRuns filtered on
    ``recurring_run_id``, the v2beta1 field the API server maps to the run's job UUID)."""
    client = conn.client()
    filter_json = json.dumps({"predicates": [{"operation": _FILTER_EQUALS, "key": "recurring_run_id",
                                              "stringValue": recurring_run.recurring_run_id}]})
    response = conn._call(
        "list runs of a recurring run",
        lambda: client.list_runs(
            experiment_id=recurring_run.experiment_id,
            namespace=None if recurring_run.experiment_id else conn.namespace,
            filter=filter_json,
            sort_by="created_at desc",
            page_size=limit,
        ),
    )
    # The filter is exact, but a server that ignored it must not make us adopt another run.
    return [_to_kfp_run(run) for run in response.runs or [] if run.recurring_run_id == recurring_run.recurring_run_id]


def delete_recurring_run(conn: KfpConnection, name: str) -> int:
    """Deletes every recurring run with this display name (in the connection's namespace);
    returns how many were deleted. Deleting one that is already gone is not an error."""
    runs = _list_recurring_runs(conn, name, experiment_id=None)
    for existing in runs:
        _delete_recurring_run(conn, existing)
    return len(runs)


def kfp_cron(cron: str) -> str:
    """KFP's six-field cron (seconds first, as robfig/cron parses it) from a standard one.

    ``"*/15 * * * *"`` → ``"0 */15 * * * *"``; macros (``@daily`` …) pass unchanged. Anything else
    raises :class:`RequestRejected`: a five-field expression sent as is would be read by KFP with
    the minutes as seconds.
    """
    expression = " ".join(cron.split())
    if expression in _CRON_MACROS:
        return expression
    fields = expression.split(" ")
    if len(fields) != 5 or not croniter.is_valid(expression):
        raise RequestRejected(f"invalid cron schedule {cron!r}: expected five fields or a macro like @daily")
    return "0 " + expression


def display_name_filter(name: str) -> str:
    """A KFP list filter (``v2beta1.Filter`` as protobuf JSON, the form kfp.Client documents)
    matching exactly this display name."""
    return json.dumps({"predicates": [{"operation": _FILTER_EQUALS, "key": "display_name", "stringValue": name}]})


def load_pipeline_spec(pipeline_package_path: str) -> pipeline_spec_pb2.PipelineSpec:
    """The PipelineSpec of a compiled package (IR YAML; a second document is the platform spec)."""
    if not pipeline_package_path.endswith((".yaml", ".yml")):
        raise RequestRejected(f"pipeline package {pipeline_package_path!r} must be compiled IR YAML (.yaml)")
    try:
        with open(pipeline_package_path, encoding="utf-8") as package:
            documents = [doc for doc in yaml.safe_load_all(package) if doc is not None]
        if not documents or not isinstance(documents[0], dict):
            raise ValueError("no pipeline spec document")
        return json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    except (OSError, yaml.YAMLError, json_format.ParseError, ValueError) as err:
        raise RequestRejected(f"invalid pipeline package {pipeline_package_path!r}: {err}") from None


def with_component_image(pipeline_package_path: str, image: str, directory: str | os.PathLike[str]) -> str:
    """A compiled pipeline whose every step runs in ``image``: the package itself when it already
    does, else a copy in ``directory`` named by its content (the same inputs give the same file,
    so a recurring run's fingerprint and the lineage's pipeline digest stay stable)."""
    try:
        with open(pipeline_package_path, encoding="utf-8") as package:
            documents = [doc for doc in yaml.safe_load_all(package) if doc is not None]
    except (OSError, yaml.YAMLError) as err:
        raise RequestRejected(f"invalid pipeline package {pipeline_package_path!r}: {err}") from None
    executors = (documents[0].get("deploymentSpec") or {}).get("executors") or {} if documents else {}
    containers = [executor["container"] for executor in executors.values() if executor.get("container")]
    if all(container.get("image") == image for container in containers):
        return pipeline_package_path
    for container in containers:
        container["image"] = image
    text = yaml.safe_dump_all(documents, sort_keys=False)
    return _write_package(text, pipeline_package_path, directory)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Per-ModelTraining settings of the steps of a run, written into the compiled pipeline as kfp's
    compiler and kfp-kubernetes write them."""

    image: str | None = None
    """Image of every step (the built-in pipeline: the trainingImage setting)."""
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpus: int | None = None
    """NVIDIA GPUs per step (accelerator nvidia.com/gpu, a limit)."""
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Pod spec tolerations (key, operator, value, effect, tolerationSeconds)."""
    retries: int = 0
    """Retries of each task (KFP retry policy)."""

    def fingerprint(self) -> str:
        """A stable text of these settings (recurring-run fingerprints, file names)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)


def with_run_settings(pipeline_package_path: str, settings: RunSettings, directory: str | os.PathLike[str]) -> str:
    """A compiled pipeline whose steps carry ``settings``: the package itself when nothing changes,
    else a copy in ``directory`` named by its content.

    Resources go into each executor's container as ``PipelineTask.set_cpu_request`` ... and
    ``set_accelerator_type/limit`` compile them (both the ``resource*`` strings and the older
    numeric fields, for older KFP servers); retries into each task's ``retryPolicy`` as
    ``set_retry(n)`` compiles it; node selector and tolerations into the Kubernetes platform spec
    (the package's second document) through kfp-kubernetes' own ``add_node_selector`` and
    ``add_toleration``, per executor.
    """
    from kfp.compiler import compiler_utils
    from kfp.kubernetes import node_selector as k8s_node_selector
    from kfp.kubernetes import toleration as k8s_toleration

    try:
        with open(pipeline_package_path, encoding="utf-8") as package:
            documents = [doc for doc in yaml.safe_load_all(package) if doc is not None]
    except (OSError, yaml.YAMLError) as err:
        raise RequestRejected(f"invalid pipeline package {pipeline_package_path!r}: {err}") from None
    if not documents or not isinstance(documents[0], dict):
        raise RequestRejected(f"invalid pipeline package {pipeline_package_path!r}: no pipeline spec document")
    original = yaml.safe_dump_all(documents, sort_keys=False)
    spec = documents[0]
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    containers = {label: executor["container"] for label, executor in executors.items() if executor.get("container")}
    for container in containers.values():
        if settings.image:
            container["image"] = settings.image
        resources = container.setdefault("resources", {})
        for value, new, old, convert in (
            (settings.cpu_request, "resourceCpuRequest", "cpuRequest", compiler_utils._cpu_to_float),
            (settings.cpu_limit, "resourceCpuLimit", "cpuLimit", compiler_utils._cpu_to_float),
            (settings.memory_request, "resourceMemoryRequest", "memoryRequest", compiler_utils._memory_to_float),
            (settings.memory_limit, "resourceMemoryLimit", "memoryLimit", compiler_utils._memory_to_float),
        ):
            if value is not None:
                resources[new], resources[old] = value, convert(value)
        if settings.gpus:
            resources["accelerator"] = {"resourceType": "nvidia.com/gpu", "resourceCount": str(settings.gpus),
                                        "type": "nvidia.com/gpu", "count": str(settings.gpus)}
        if not resources:
            del container["resources"]
    if settings.retries:
        dags = [spec.get("root", {}).get("dag")] + [c.get("dag") for c in (spec.get("components") or {}).values()]
        for dag in filter(None, dags):
            for task in (dag.get("tasks") or {}).values():
                task["retryPolicy"] = {"backoffDuration": "0s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s",
                                       "maxRetryCount": settings.retries}
    if settings.node_selector or settings.tolerations:
        if len(documents) == 1:
            documents.append({})
        platform = documents[1].setdefault("platforms", {}).setdefault("kubernetes", {})
        configs = platform.setdefault("deploymentSpec", {}).setdefault("executors", {})
        for label in containers:
            task = _PlatformConfigHolder({"kubernetes": configs.get(label, {})})
            for key, value in sorted(settings.node_selector.items()):
                k8s_node_selector.add_node_selector(task, key, value)
            for toleration in settings.tolerations:
                k8s_toleration.add_toleration(task, key=toleration.get("key"), operator=toleration.get("operator"),
                                              value=toleration.get("value"), effect=toleration.get("effect"),
                                              toleration_seconds=toleration.get("tolerationSeconds"))
            configs[label] = task.platform_config["kubernetes"]
    text = yaml.safe_dump_all(documents, sort_keys=False)
    if text == original:
        return pipeline_package_path
    return _write_package(text, pipeline_package_path, directory)


class _PlatformConfigHolder:
    """What kfp-kubernetes' functions read and write of a PipelineTask: its ``platform_config``."""

    def __init__(self, platform_config: dict[str, Any]) -> None:
        self.platform_config = platform_config


_PARAMETER_TYPES: dict[int, tuple[str, Callable[[Any], bool]]] = {
    pipeline_spec_pb2.ParameterType.STRING: ("a string", lambda v: isinstance(v, str)),
    pipeline_spec_pb2.ParameterType.NUMBER_INTEGER: (
        "an integer",
        lambda v: isinstance(v, int) and not isinstance(v, bool),
    ),
    pipeline_spec_pb2.ParameterType.NUMBER_DOUBLE: (
        "a number",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    ),
    pipeline_spec_pb2.ParameterType.BOOLEAN: ("a boolean", lambda v: isinstance(v, bool)),
    pipeline_spec_pb2.ParameterType.LIST: ("a list", lambda v: isinstance(v, list)),
    pipeline_spec_pb2.ParameterType.STRUCT: ("an object", lambda v: isinstance(v, dict)),
}


def check_pipeline_parameters(spec: pipeline_spec_pb2.PipelineSpec, params: Mapping[str, Any]) -> None:
    """Raises :class:`RequestRejected` unless ``params`` fit the pipeline's root inputs: no
    unknown names, every input without a default given, each value of the declared type."""
    declared = spec.root.input_definitions.parameters
    problems = [f"unknown parameter {name!r}" for name in params if name not in declared]
    for name, definition in declared.items():
        if name not in params:
            if not definition.HasField("default_value") and not definition.is_optional:
                problems.append(f"missing parameter {name!r}")
            continue
        expected = _PARAMETER_TYPES.get(definition.parameter_type)
        if expected is not None and not expected[1](params[name]):
            problems.append(f"parameter {name!r} must be {expected[0]}, got {type(params[name]).__name__}")
    if problems:
        raise RequestRejected(f"pipeline {spec.pipeline_info.name!r}: " + "; ".join(problems))


def _experiment_id(conn: KfpConnection, experiment: str) -> str:
    client = conn.client()
    # kfp's create_experiment is get-by-name first, create only if missing.
    found = conn._call(
        "get or create experiment", lambda: client.create_experiment(name=experiment, namespace=conn.namespace)
    )
    return found.experiment_id


def _find_run(conn: KfpConnection, experiment_id: str, run_name: str) -> kfp_server_api.V2beta1Run | None:
    client = conn.client()
    response = conn._call(
        "find run",
        lambda: client.list_runs(
            experiment_id=experiment_id,
            filter=display_name_filter(run_name),
            sort_by="created_at",
            page_size=10,
        ),
    )
    # The filter is exact, but a server that ignored it must not make us adopt another run.
    matches = [run for run in response.runs or [] if run.display_name == run_name]
    return matches[0] if matches else None


def _list_recurring_runs(
    conn: KfpConnection, name: str, experiment_id: str | None
) -> list[kfp_server_api.V2beta1RecurringRun]:
    client = conn.client()
    found: list[kfp_server_api.V2beta1RecurringRun] = []
    page_token = ""
    while True:
        response = conn._call(
            "list recurring runs",
            lambda: client.list_recurring_runs(
                page_token=page_token,
                page_size=50,
                sort_by="created_at",
                experiment_id=experiment_id,
                namespace=None if experiment_id else conn.namespace,
                filter=display_name_filter(name),
            ),
        )
        found += [job for job in response.recurring_runs or [] if job.display_name == name]
        page_token = response.next_page_token or ""
        if not page_token:
            return found


def _delete_recurring_run(conn: KfpConnection, job: kfp_server_api.V2beta1RecurringRun) -> None:
    client = conn.client()
    try:
        conn._call("delete recurring run", lambda: client.delete_recurring_run(job.recurring_run_id))
    except RequestRejected as err:
        if err.status != 404:
            raise
    logger.info("deleted KFP recurring run %s (%s)", job.display_name, job.recurring_run_id)


def _recurring_run_fingerprint(package: bytes, params: Mapping[str, Any], cron: str, *extra: Any) -> str:
    material = json.dumps(
        {"package": hashlib.sha256(package).hexdigest(), "params": params, "cron": cron, "extra": extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _to_kfp_run(run: kfp_server_api.V2beta1Run) -> KfpRun:
    kfp_state = str(run.state or "RUNTIME_STATE_UNSPECIFIED").upper()
    state = KFP_RUN_STATES.get(kfp_state, "Pending")
    tasks = tuple(_to_kfp_task(task) for task in (run.run_details.task_details or [])) if run.run_details else ()

    message = _status_message(run.error)
    if state == "Failed" and not message:
        message = next((task.error for task in tasks if task.error), None) or "the KFP run failed"
    elif state == "Canceled" and not message:
        message = "the KFP run was canceled"
    elif state not in ("Failed", "Canceled"):
        message = None

    started = next(
        (_timestamp(entry.update_time) for entry in run.state_history or [] if str(entry.state).upper() == "RUNNING"),
        None,
    )
    if started is None and state != "Pending":
        started = _timestamp(run.scheduled_at) or _timestamp(run.created_at)
    return KfpRun(
        run_id=run.run_id,
        name=run.display_name or "",
        experiment_id=run.experiment_id or None,
        state=state,
        kfp_state=kfp_state,
        message=message,
        created=_timestamp(run.created_at),
        scheduled=_timestamp(run.scheduled_at),
        started=started,
        finished=_timestamp(run.finished_at) if state in ("Succeeded", "Failed", "Canceled") else None,
        parameters=dict((run.runtime_config.parameters or {}) if run.runtime_config else {}),
        tasks=tasks,
        recurring_run_id=run.recurring_run_id or None,
    )


def _to_kfp_task(task: kfp_server_api.V2beta1PipelineTaskDetail) -> KfpTask:
    return KfpTask(
        name=task.display_name or task.task_id or "",
        kfp_state=str(task.state or "RUNTIME_STATE_UNSPECIFIED").upper(),
        error=_status_message(task.error),
        outputs={name: list(artifacts.artifact_ids or []) for name, artifacts in (task.outputs or {}).items()},
        started=_timestamp(task.start_time),
        finished=_timestamp(task.end_time),
    )


def _status_message(status: kfp_server_api.GoogleRpcStatus | None) -> str | None:
    return (status.message or None) if status is not None else None


def _timestamp(value: dt.datetime | None) -> dt.datetime | None:
    """KFP reports unset times as the Unix epoch; those become None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return None if value <= _EPOCH else value


def _server_message(err: kfp_server_api.ApiException) -> str:
    """The ``message`` of a gRPC-gateway error body, or a short excerpt of the body."""
    body = err.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return ""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(parsed, dict):
        return str(parsed.get("message") or parsed.get("error") or "")[:300]
    return ""


def _display_host(host: str) -> str:
    """The host without any user:password part."""
    parts = urllib.parse.urlsplit(host)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts)


def _write_package(text: str, pipeline_package_path: str, directory: str | os.PathLike[str]) -> str:
    """``text`` as ``<directory>/<stem>-<digest>.yaml`` (content-addressed: written once, atomically)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(pipeline_package_path))[0]
    target = os.path.join(directory, f"{stem}-{digest}.yaml")
    if not os.path.exists(target):
        os.makedirs(directory, exist_ok=True)
        partial = f"{target}.{os.getpid()}.tmp"
        with open(partial, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, target)  # readers never see half a file
    return target
