"""A fake-but-validating Kubeflow Pipelines v2beta1 REST API on 127.0.0.1, for contract tests.

It implements the subset of the API that ``kfp.Client`` uses for runs, recurring runs and
experiments, and it is strict where a wrong client call would otherwise pass silently:

* every request body is parsed field by field against the ``kfp_server_api`` models (the Python
  client generated from KFP's own OpenAPI spec): unknown fields, wrong JSON types, unknown enum
  values and output-only fields sent by the client are answered with 400;
* a submitted pipeline spec is parsed with kfp's protobuf types
  (``pipeline_spec_pb2.PipelineSpec`` via ``json_format.ParseDict``, unknown fields rejected) and
  checked for internal consistency; runtime parameters must match the pipeline's root inputs
  (names, required inputs, types), as the KFP driver requires;
* list filters must be valid ``v2beta1.Filter`` JSON, cron schedules KFP's six-field form,
  ``max_concurrency`` within KFP's 1..10, query parameters known to the endpoint;
* with ``token`` set, requests without ``Authorization: Bearer <token>`` get 401.

Semantics follow the KFP API server: experiments are unique by name per namespace, unset times
are the Unix epoch, errors are gRPC-gateway JSON (``{"error", "code", "message", "details"}``).
Tests drive run progress with :meth:`KfpApiServer.set_run_state` and read what was sent from
:attr:`KfpApiServer.requests` and :attr:`KfpApiServer.creates`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import http.server
import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import kfp_server_api
import kfp_server_api.models as models
from croniter import croniter
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

EPOCH = "1970-01-01T00:00:00Z"
_SERIALIZER = kfp_server_api.ApiClient()

# Fields the server sets; a client that sends them is confused about the API.
_OUTPUT_ONLY = {
    "V2beta1Experiment": {"experiment_id", "created_at", "storage_state", "last_run_created_at"},
    "V2beta1Run": {
        "run_id", "storage_state", "pipeline_version_id", "created_at", "scheduled_at", "finished_at",
        "state", "error", "run_details", "recurring_run_id", "state_history", "plugins_output",
    },
    "V2beta1RecurringRun": {"recurring_run_id", "created_at", "updated_at", "status", "error", "namespace"},
}
# int64 fields: protobuf JSON carries them as strings, and accepts numbers too.
_INT64_FIELDS = {
    ("V2beta1RecurringRun", "max_concurrency"),
    ("V2beta1PeriodicSchedule", "interval_second"),
    ("V2beta1Predicate", "long_value"),
}
_SORTABLE = {"", "created_at", "created_at desc", "display_name", "display_name desc"}
_FINAL_STATES = {"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"}
_CRON_DESCRIPTORS = re.compile(r"^@(yearly|annually|monthly|weekly|daily|midnight|hourly|every \S+)$")
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 412: 9, 500: 13, 503: 14}


class ContractViolation(Exception):
    """A request that the real KFP API would reject, or that kfp.Client should never send."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


def parse_model(data: Any, type_name: str, path: str = "$") -> Any:
    """``data`` (decoded JSON) as an instance of the kfp_server_api type ``type_name``.

    Strict: unknown keys, wrong JSON types and values outside an enum raise ContractViolation.
    """
    if data is None:
        return None
    if type_name.startswith("list["):
        if not isinstance(data, list):
            raise ContractViolation(f"{path}: expected a list")
        return [parse_model(item, type_name[5:-1], f"{path}[{i}]") for i, item in enumerate(data)]
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            raise ContractViolation(f"{path}: expected an object")
        value_type = re.match(r"dict\(([^,]*), (.*)\)", type_name).group(2)
        return {key: parse_model(value, value_type, f"{path}.{key}") for key, value in data.items()}
    if type_name == "object":
        return data
    if type_name == "str":
        if not isinstance(data, str):
            raise ContractViolation(f"{path}: expected a string, got {type(data).__name__}")
        return data
    if type_name == "int":
        if isinstance(data, bool) or not isinstance(data, int):
            raise ContractViolation(f"{path}: expected an integer")
        return data
    if type_name == "bool":
        if not isinstance(data, bool):
            raise ContractViolation(f"{path}: expected a boolean")
        return data
    if type_name == "datetime":
        if not isinstance(data, str):
            raise ContractViolation(f"{path}: expected an RFC 3339 timestamp")
        try:
            return dt.datetime.fromisoformat(data)
        except ValueError:
            raise ContractViolation(f"{path}: invalid timestamp {data!r}") from None
    klass = getattr(models, type_name, None)
    if klass is None:
        raise AssertionError(f"unknown model type {type_name}")
    if not klass.openapi_types:  # an enum
        allowed = getattr(klass, "allowable_values", [])
        if data not in allowed:
            raise ContractViolation(f"{path}: {data!r} is not one of {allowed}")
        return data
    if not isinstance(data, dict):
        raise ContractViolation(f"{path}: expected a {type_name} object")
    json_to_attr = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    kwargs = {}
    for key, value in data.items():
        attr = json_to_attr.get(key)
        if attr is None:
            raise ContractViolation(f"{path}: unknown field {key!r} for {type_name}")
        field_type = klass.openapi_types[attr]
        if (type_name, attr) in _INT64_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
                raise ContractViolation(f"{path}.{key}: expected an int64")
            kwargs[attr] = str(value)
            continue
        kwargs[attr] = parse_model(value, field_type, f"{path}.{key}")
    return klass(**kwargs)


def reject_output_only(model: Any, type_name: str) -> None:
    """Output-only fields must not be set in create requests."""
    sent = sorted(attr for attr in _OUTPUT_ONLY[type_name] if getattr(model, attr) is not None)
    if sent:
        raise ContractViolation(f"output-only fields set in {type_name}: {sent}")


def parse_pipeline_spec(document: Any) -> pipeline_spec_pb2.PipelineSpec:
    """A run's ``pipeline_spec`` (the IR, or ``{pipeline_spec, platform_spec}``) parsed with
    kfp's protobuf types and checked for consistency."""
    if not isinstance(document, dict):
        raise ContractViolation("pipeline_spec must be an object")
    platform: dict[str, Any] = {}
    if set(document) <= {"pipeline_spec", "platform_spec"} and "pipeline_spec" in document:
        spec_dict = document["pipeline_spec"]
        platform = document.get("platform_spec") or {}
        try:
            json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
        except json_format.ParseError as err:
            raise ContractViolation(f"platform_spec: {err}") from None
    else:
        spec_dict = document
    try:
        spec = json_format.ParseDict(spec_dict, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as err:
        raise ContractViolation(f"pipeline_spec: {err}") from None
    if not spec.pipeline_info.name:
        raise ContractViolation("pipeline_spec: pipelineInfo.name is empty")
    if not spec.schema_version:
        raise ContractViolation("pipeline_spec: schemaVersion is empty")
    if not spec.root.dag.tasks:
        raise ContractViolation("pipeline_spec: root DAG has no tasks")
    executors = (json_format.MessageToDict(spec.deployment_spec) or {}).get("executors", {})
    for task_name, task in spec.root.dag.tasks.items():
        component = spec.components.get(task.component_ref.name)
        if component is None:
            raise ContractViolation(
                f"pipeline_spec: task {task_name} refers to unknown component {task.component_ref.name}"
            )
        if component.executor_label and component.executor_label not in executors:
            raise ContractViolation(f"pipeline_spec: executor {component.executor_label} missing from deploymentSpec")
    # The Kubernetes platform config of each executor, as KFP's driver reads it (kfp-kubernetes' proto).
    kubernetes = ((platform.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec") or {}
    for label, config in (kubernetes.get("executors") or {}).items():
        if label not in executors:
            raise ContractViolation(f"platform_spec: executor {label} is not in the pipeline's deploymentSpec")
        try:
            json_format.ParseDict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
        except json_format.ParseError as err:
            raise ContractViolation(f"platform_spec: executor {label}: {err}") from None
    return spec


_PARAMETER_CHECKS: dict[int, Callable[[Any], bool]] = {
    pipeline_spec_pb2.ParameterType.STRING: lambda v: isinstance(v, str),
    pipeline_spec_pb2.ParameterType.NUMBER_INTEGER: lambda v: isinstance(v, int) and not isinstance(v, bool),
    pipeline_spec_pb2.ParameterType.NUMBER_DOUBLE: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    pipeline_spec_pb2.ParameterType.BOOLEAN: lambda v: isinstance(v, bool),
    pipeline_spec_pb2.ParameterType.LIST: lambda v: isinstance(v, list),
    pipeline_spec_pb2.ParameterType.STRUCT: lambda v: isinstance(v, dict),
}


def check_runtime_parameters(spec: pipeline_spec_pb2.PipelineSpec, parameters: dict[str, Any]) -> None:
    """Runtime parameters against the root inputs: known names, required ones present, JSON types."""
    declared = spec.root.input_definitions.parameters
    for name, value in parameters.items():
        if name not in declared:
            raise ContractViolation(f"runtime_config.parameters: {name!r} is not an input of the pipeline")
        check = _PARAMETER_CHECKS.get(declared[name].parameter_type)
        if check is None or not check(value):
            type_name = pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(declared[name].parameter_type)
            raise ContractViolation(f"runtime_config.parameters: {name!r}={value!r} is not {type_name}")
    for name, definition in declared.items():
        if name not in parameters and not definition.HasField("default_value") and not definition.is_optional:
            raise ContractViolation(f"runtime_config.parameters: required input {name!r} missing")


_PREDICATE_KEYS = {
    "operation": "operation", "key": "key",
    "int_value": "int_value", "intValue": "int_value",
    "long_value": "long_value", "longValue": "long_value",
    "string_value": "string_value", "stringValue": "string_value",
    "timestamp_value": "timestamp_value", "timestampValue": "timestamp_value",
    "int_values": "int_values", "intValues": "int_values",
    "long_values": "long_values", "longValues": "long_values",
    "string_values": "string_values", "stringValues": "string_values",
}
_OPERATIONS = {
    0: "OPERATION_UNSPECIFIED", 1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS",
    6: "LESS_THAN", 7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING",
}


def parse_filter(text: str) -> list[dict[str, Any]]:
    """A ``v2beta1.Filter`` in protobuf JSON (either field spelling, enum by name or number)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ContractViolation(f"filter is not JSON: {text!r}") from None
    if not isinstance(data, dict) or set(data) - {"predicates"}:
        raise ContractViolation(f"filter must be {{'predicates': [...]}}, got {text!r}")
    predicates = []
    for raw in data.get("predicates", []):
        if not isinstance(raw, dict):
            raise ContractViolation("filter predicate must be an object")
        unknown = set(raw) - set(_PREDICATE_KEYS)
        if unknown:
            raise ContractViolation(f"filter predicate has unknown fields {sorted(unknown)}")
        predicate = {_PREDICATE_KEYS[key]: value for key, value in raw.items()}
        operation = predicate.get("operation")
        if isinstance(operation, int) and not isinstance(operation, bool):
            operation = _OPERATIONS.get(operation)
        if operation not in set(_OPERATIONS.values()) - {"OPERATION_UNSPECIFIED"}:
            raise ContractViolation(f"filter predicate has invalid operation {predicate.get('operation')!r}")
        values = [key for key in predicate if key not in ("operation", "key")]
        if not isinstance(predicate.get("key"), str) or len(values) != 1:
            raise ContractViolation("filter predicate needs a key and exactly one value")
        predicates.append({"operation": operation, "key": predicate["key"], "value": predicate[values[0]]})
    return predicates


# Filter keys of the v2beta1 API (backend/src/apiserver/model/*.go, APIToModelFieldMap) that this
# fake evaluates; any other key is answered 400 as an unknown field would be.
_FILTER_KEYS = {
    "V2beta1Run": {"run_id", "display_name", "experiment_id", "recurring_run_id", "state", "storage_state"},
    "V2beta1RecurringRun": {"recurring_run_id", "display_name", "experiment_id", "status"},
    "V2beta1Experiment": {"experiment_id", "display_name", "storage_state"},
}


def matches_filter(resource: Any, predicates: list[dict[str, Any]]) -> bool:
    """Whether a resource passes the filter (string fields; EQUALS, NOT_EQUALS, IS_SUBSTRING, IN)."""
    for predicate in predicates:
        if predicate["key"] not in _FILTER_KEYS[type(resource).__name__]:
            raise ContractViolation(f"cannot filter {type(resource).__name__} on {predicate['key']!r}")
        actual, wanted = getattr(resource, predicate["key"]) or "", predicate["value"]
        if predicate["operation"] == "IN":
            if not isinstance(wanted, dict) or not isinstance(wanted.get("values"), list):
                raise ContractViolation("an IN predicate takes string_values: {values: [...]}")
            if actual not in wanted["values"]:
                return False
            continue
        if predicate["operation"] == "EQUALS":
            ok = actual == wanted
        elif predicate["operation"] == "NOT_EQUALS":
            ok = actual != wanted
        elif predicate["operation"] == "IS_SUBSTRING":
            ok = wanted in actual
        else:
            raise ContractViolation(f"unsupported operation {predicate['operation']} on display_name")
        if not ok:
            return False
    return True


def check_kfp_cron(cron: str) -> None:
    """KFP's schedule: six fields with seconds first, or a robfig/cron descriptor."""
    if _CRON_DESCRIPTORS.match(cron):
        return
    if len(cron.split()) != 6 or not croniter.is_valid(cron, second_at_beginning=True):
        raise ContractViolation(f"cron {cron!r} is not a six-field (seconds first) cron expression")


def _fnv32a(text: str) -> int:
    """FNV-1a, 32 bits (Go's hash/fnv New32a), as the ScheduledWorkflow controller hashes run names."""
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


class KfpApiServer:
    """The fake KFP API. Use as a context manager; ``url`` is its base URL."""

    def __init__(self, token: str | None = None, multi_user: bool = False) -> None:
        self.token = token
        self.multi_user = multi_user
        self.experiments: dict[str, models.V2beta1Experiment] = {}
        self.runs: dict[str, models.V2beta1Run] = {}
        self.recurring_runs: dict[str, models.V2beta1RecurringRun] = {}
        self.creates: collections.Counter[str] = collections.Counter()
        self.deletes: collections.Counter[str] = collections.Counter()
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        self.fail_with: int | None = None
        """When set, every request is answered with this HTTP status ..."""
        self.fail_message = "injected failure"
        """... and this error message (a test may make it echo a secret)."""
        self.stall_seconds = 0.0
        """When set, every answer is held back this long (or until the server stops)."""
        self.fired_parameters: dict[str, dict[str, Any]] = {}
        """Run id of a fire -> its parameters with the recurring run's macros replaced: what the
        pipeline's steps receive (the API itself reports the recurring run's runtime config)."""
        self._swf_names: dict[str, str] = {}
        self._swf_index: dict[str, int] = {}
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-kfp-api", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KfpApiServer:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ---- test controls -------------------------------------------------------------------

    def set_run_state(
        self,
        run_id: str,
        state: str,
        error: str | None = None,
        task_details: list[dict[str, Any]] | None = None,
    ) -> None:
        """Moves a run to ``state`` as KFP's persistence agent would, with optional error and task
        details (given as API JSON, parsed strictly like everything else)."""
        with self._lock:
            run = self.runs[run_id]
            now = _now()
            run.state = state
            run.state_history = (run.state_history or []) + [models.V2beta1RuntimeStatus(update_time=now, state=state)]
            if state in _FINAL_STATES:
                run.finished_at = now
            if error is not None:
                run.error = models.GoogleRpcStatus(code=2, message=error)
            if task_details is not None:
                run.run_details = parse_model({"task_details": task_details}, "V2beta1RunDetails")

    def fire(self, recurring_run_id: str, scheduled_at: dt.datetime) -> str | None:
        """One fire of a recurring run, as KFP 2.17's ScheduledWorkflow controller and persistence
        agent make it appear in the run API; returns the new run's id, or None when the recurring
        run is disabled or already has ``max_concurrency`` active runs (the controller then starts
        nothing).

        The run (scheduledworkflow/controller.go, resource_manager.go ReportWorkflowResource): display
        name ``<swf name>-<index>-<fnv32a of "<swf name>-<index>">`` (``NextResourceName``),
        ``recurring_run_id`` set, the recurring run's experiment, pipeline spec, service account and
        runtime config (as stored with the recurring run: macros not replaced), ``scheduled_at`` the
        schedule time it fired for. The parameters the steps receive have the macros replaced
        (parameter_formatter.go: ``[[ScheduledTime]]`` as 20060102150405 UTC, ``[[RunUUID]]``,
        ``[[Index]]``, ``[[CurrentTime]]``): :attr:`fired_parameters`.
        """
        with self._lock:
            job = self._recurring_run(recurring_run_id)
            if job.status != "ENABLED":
                return None
            active = [r for r in self.runs.values()
                      if r.recurring_run_id == recurring_run_id and r.state not in _FINAL_STATES]
            if len(active) >= int(job.max_concurrency or 1):
                return None
            self._swf_index[recurring_run_id] += 1
            index = self._swf_index[recurring_run_id]
            resource_id = f"{self._swf_names[recurring_run_id]}-{index}"
            now = _now()
            run_id = str(uuid.uuid4())
            scheduled = scheduled_at.astimezone(dt.timezone.utc).replace(microsecond=0)
            run = models.V2beta1Run(
                run_id=run_id,
                display_name=f"{resource_id}-{_fnv32a(resource_id)}",
                experiment_id=job.experiment_id,
                recurring_run_id=recurring_run_id,
                pipeline_spec=job.pipeline_spec,
                runtime_config=job.runtime_config,
                service_account=job.service_account or "pipeline-runner",
                created_at=now,
                scheduled_at=scheduled,
                finished_at=dt.datetime.fromisoformat(EPOCH),
                state="PENDING",
                state_history=[models.V2beta1RuntimeStatus(update_time=now, state="PENDING")],
                storage_state="AVAILABLE",
            )
            self.runs[run_id] = run
            macros = {"[[ScheduledTime]]": scheduled.strftime("%Y%m%d%H%M%S"), "[[RunUUID]]": run_id,
                      "[[Index]]": str(index), "[[CurrentTime]]": now.strftime("%Y%m%d%H%M%S")}
            parameters = dict((job.runtime_config.parameters or {}) if job.runtime_config else {})
            for name, value in parameters.items():
                if isinstance(value, str):
                    for macro, replacement in macros.items():
                        value = value.replace(macro, replacement)
                    parameters[name] = value
            self.fired_parameters[run_id] = parameters
            return run_id

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with this method and path."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # ---- HTTP plumbing -------------------------------------------------------------------

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._serve(self, "GET")

            def do_POST(self) -> None:
                server._serve(self, "POST")

            def do_DELETE(self) -> None:
                server._serve(self, "DELETE")

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def _serve(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        status, payload = 500, {}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        with self._lock:
            self.requests.append(RecordedRequest(method, parts.path, query, dict(handler.headers.items()), body))
        try:
            if self.fail_with is not None:
                raise ContractViolation(self.fail_message, status=self.fail_with)
            if self.token is not None and handler.headers.get("Authorization") != f"Bearer {self.token}":
                raise ContractViolation("missing or wrong bearer token", status=401)
            if isinstance(body, bytes):
                raise ContractViolation("request body is not JSON")
            with self._lock:
                status, payload = self._route(method, parts.path, query, body)
        except ContractViolation as err:
            if err.status == 400:
                self.violations.append(f"{method} {parts.path}: {err}")
            status = err.status
            payload = {"error": str(err), "code": _GRPC_CODES.get(status, 2), "message": str(err), "details": []}
        data = json.dumps(payload).encode()
        if self.stall_seconds:
            self._stopping.wait(self.stall_seconds)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (timeout tests)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        routes: list[tuple[str, str, Callable[..., Any], set[str]]] = [
            ("GET", r"/apis/v2beta1/healthz", self._healthz, set()),
            ("POST", r"/apis/v2beta1/experiments", self._create_experiment, set()),
            ("GET", r"/apis/v2beta1/experiments", self._list_experiments,
             {"page_token", "page_size", "sort_by", "filter", "namespace"}),
            ("GET", r"/apis/v2beta1/experiments/(?P<id>[^/:]+)", self._get_experiment, set()),
            ("POST", r"/apis/v2beta1/runs", self._create_run, {"experiment_id"}),
            ("GET", r"/apis/v2beta1/runs", self._list_runs,
             {"namespace", "experiment_id", "page_token", "page_size", "sort_by", "filter"}),
            ("GET", r"/apis/v2beta1/runs/(?P<id>[^/:]+)", self._get_run, {"experiment_id"}),
            ("POST", r"/apis/v2beta1/runs/(?P<id>[^/:]+):terminate", self._terminate_run, {"experiment_id"}),
            ("POST", r"/apis/v2beta1/recurringruns", self._create_recurring_run, set()),
            ("GET", r"/apis/v2beta1/recurringruns", self._list_recurring_runs,
             {"page_token", "page_size", "sort_by", "namespace", "filter", "experiment_id"}),
            ("GET", r"/apis/v2beta1/recurringruns/(?P<id>[^/:]+)", self._get_recurring_run, set()),
            ("DELETE", r"/apis/v2beta1/recurringruns/(?P<id>[^/:]+)", self._delete_recurring_run,
             {"propagation_policy"}),
            ("POST", r"/apis/v2beta1/recurringruns/(?P<id>[^/:]+):enable", self._enable_recurring_run, set()),
            ("POST", r"/apis/v2beta1/recurringruns/(?P<id>[^/:]+):disable", self._disable_recurring_run, set()),
        ]
        for route_method, pattern, action, allowed_query in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                unknown = set(query) - allowed_query
                if unknown:
                    raise ContractViolation(f"unknown query parameters {sorted(unknown)}")
                params = {key: values[-1] for key, values in query.items()}
                return 200, action(body=body, params=params, **match.groupdict())
        raise ContractViolation(f"no such endpoint: {method} {path}", status=404)

    # ---- endpoints -----------------------------------------------------------------------

    def _healthz(self, body: Any, params: dict[str, str]) -> Any:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    def _namespace(self, namespace: str | None, what: str) -> str:
        if not self.multi_user:
            return ""
        if not namespace:
            raise ContractViolation(f"{what}: a namespace is required in multi-user mode")
        return namespace

    def _create_experiment(self, body: Any, params: dict[str, str]) -> Any:
        experiment = parse_model(body, "V2beta1Experiment")
        if experiment is None:
            raise ContractViolation("experiment body missing")
        reject_output_only(experiment, "V2beta1Experiment")
        if not experiment.display_name:
            raise ContractViolation("experiment display_name is required")
        namespace = self._namespace(experiment.namespace, "create experiment")
        if any(e.display_name == experiment.display_name and (e.namespace or "") == namespace
               for e in self.experiments.values()):
            raise ContractViolation(f"experiment {experiment.display_name!r} already exists", status=409)
        experiment.experiment_id = str(uuid.uuid4())
        experiment.namespace = namespace or None
        experiment.created_at = _now()
        experiment.storage_state = "AVAILABLE"
        self.experiments[experiment.experiment_id] = experiment
        self.creates["experiments"] += 1
        return _SERIALIZER.sanitize_for_serialization(experiment)

    def _list_experiments(self, body: Any, params: dict[str, str]) -> Any:
        namespace = self._namespace(params.get("namespace"), "list experiments")
        found = [e for e in self.experiments.values() if (e.namespace or "") == namespace]
        page, token = self._page(found, params)
        return {"experiments": _SERIALIZER.sanitize_for_serialization(page), "total_size": len(found),
                "next_page_token": token}

    def _get_experiment(self, body: Any, params: dict[str, str], id: str) -> Any:
        if id not in self.experiments:
            raise ContractViolation(f"experiment {id} not found", status=404)
        return _SERIALIZER.sanitize_for_serialization(self.experiments[id])

    def _create_run(self, body: Any, params: dict[str, str]) -> Any:
        run = parse_model(body, "V2beta1Run")
        if run is None:
            raise ContractViolation("run body missing")
        reject_output_only(run, "V2beta1Run")
        if not run.display_name:
            raise ContractViolation("run display_name is required")
        self._check_pipeline_source(run)
        if not run.experiment_id or run.experiment_id not in self.experiments:
            raise ContractViolation(f"experiment {run.experiment_id!r} not found", status=404)
        now = _now()
        run.run_id = str(uuid.uuid4())
        run.created_at = run.scheduled_at = now
        run.finished_at = dt.datetime.fromisoformat(EPOCH)
        run.state = "PENDING"
        run.state_history = [models.V2beta1RuntimeStatus(update_time=now, state="PENDING")]
        run.storage_state = "AVAILABLE"
        run.service_account = run.service_account or "pipeline-runner"
        self.runs[run.run_id] = run
        self.creates["runs"] += 1
        return _SERIALIZER.sanitize_for_serialization(run)

    def _check_pipeline_source(self, resource: Any) -> None:
        if (resource.pipeline_spec is None) == (resource.pipeline_version_reference is None):
            raise ContractViolation("exactly one of pipeline_spec and pipeline_version_reference is required")
        if resource.pipeline_spec is not None:
            spec = parse_pipeline_spec(resource.pipeline_spec)
            parameters = (resource.runtime_config.parameters or {}) if resource.runtime_config else {}
            check_runtime_parameters(spec, parameters)

    def _list_runs(self, body: Any, params: dict[str, str]) -> Any:
        experiment_id = params.get("experiment_id")
        if experiment_id:
            if experiment_id not in self.experiments:
                raise ContractViolation(f"experiment {experiment_id} not found", status=404)
            found = [r for r in self.runs.values() if r.experiment_id == experiment_id]
        else:
            namespace = self._namespace(params.get("namespace"), "list runs")
            found = [r for r in self.runs.values()
                     if (self.experiments[r.experiment_id].namespace or "") == namespace]
        page, token = self._page(found, params)
        return {"runs": _SERIALIZER.sanitize_for_serialization(page), "total_size": len(found),
                "next_page_token": token}

    def _get_run(self, body: Any, params: dict[str, str], id: str) -> Any:
        if id not in self.runs:
            raise ContractViolation(f"run {id} not found", status=404)
        return _SERIALIZER.sanitize_for_serialization(self.runs[id])

    def _terminate_run(self, body: Any, params: dict[str, str], id: str) -> Any:
        if id not in self.runs:
            raise ContractViolation(f"run {id} not found", status=404)
        run = self.runs[id]
        if run.state in _FINAL_STATES:
            raise ContractViolation(f"run {id} already finished ({run.state})", status=412)
        self.set_run_state(id, "CANCELING")
        return {}

    def _create_recurring_run(self, body: Any, params: dict[str, str]) -> Any:
        job = parse_model(body, "V2beta1RecurringRun")
        if job is None:
            raise ContractViolation("recurring run body missing")
        reject_output_only(job, "V2beta1RecurringRun")
        if not job.display_name:
            raise ContractViolation("recurring run display_name is required")
        if job.mode not in ("ENABLE", "DISABLE"):
            raise ContractViolation("recurring run mode must be ENABLE or DISABLE")
        trigger = job.trigger
        if trigger is None or (trigger.cron_schedule is None) == (trigger.periodic_schedule is None):
            raise ContractViolation("recurring run needs exactly one of cron_schedule and periodic_schedule")
        if trigger.cron_schedule is not None:
            check_kfp_cron(trigger.cron_schedule.cron or "")
        if not 1 <= int(job.max_concurrency or 0) <= 10:
            raise ContractViolation("max_concurrency must be between 1 and 10")
        self._check_pipeline_source(job)
        if not job.experiment_id or job.experiment_id not in self.experiments:
            raise ContractViolation(f"experiment {job.experiment_id!r} not found", status=404)
        now = _now()
        job.recurring_run_id = str(uuid.uuid4())
        job.created_at = job.updated_at = now
        # The API server names the ScheduledWorkflow from the display name (lower case, [a-z0-9-]
        # only, at most 25 characters) with a generated suffix of 5 (template.go, GenerateName).
        base = re.sub(r"[^a-z0-9-]+", "", job.display_name.lower())[:25] or "job-"
        self._swf_names[job.recurring_run_id] = base + uuid.uuid4().hex[:5]
        self._swf_index[job.recurring_run_id] = 0
        job.status = "ENABLED" if job.mode == "ENABLE" else "DISABLED"
        job.namespace = self.experiments[job.experiment_id].namespace
        self.recurring_runs[job.recurring_run_id] = job
        self.creates["recurring_runs"] += 1
        return _SERIALIZER.sanitize_for_serialization(job)

    def _list_recurring_runs(self, body: Any, params: dict[str, str]) -> Any:
        experiment_id = params.get("experiment_id")
        if experiment_id:
            found = [j for j in self.recurring_runs.values() if j.experiment_id == experiment_id]
        else:
            namespace = self._namespace(params.get("namespace"), "list recurring runs")
            found = [j for j in self.recurring_runs.values() if (j.namespace or "") == namespace]
        page, token = self._page(found, params)
        response = models.V2beta1ListRecurringRunsResponse(
            recurring_runs=page, total_size=len(found), next_page_token=token
        )
        return _SERIALIZER.sanitize_for_serialization(response)

    def _recurring_run(self, id: str) -> models.V2beta1RecurringRun:
        if id not in self.recurring_runs:
            raise ContractViolation(f"recurring run {id} not found", status=404)
        return self.recurring_runs[id]

    def _get_recurring_run(self, body: Any, params: dict[str, str], id: str) -> Any:
        return _SERIALIZER.sanitize_for_serialization(self._recurring_run(id))

    def _delete_recurring_run(self, body: Any, params: dict[str, str], id: str) -> Any:
        self._recurring_run(id)
        del self.recurring_runs[id]
        self.deletes["recurring_runs"] += 1
        return {}

    def _enable_recurring_run(self, body: Any, params: dict[str, str], id: str) -> Any:
        job = self._recurring_run(id)
        job.status, job.mode, job.updated_at = "ENABLED", "ENABLE", _now()
        return {}

    def _disable_recurring_run(self, body: Any, params: dict[str, str], id: str) -> Any:
        job = self._recurring_run(id)
        job.status, job.mode, job.updated_at = "DISABLED", "DISABLE", _now()
        return {}

    def _page(self, resources: list[Any], params: dict[str, str]) -> tuple[list[Any], str]:
        """Filters, sorts and pages a list as the KFP list endpoints do."""
        if params.get("filter"):
            predicates = parse_filter(params["filter"])
            resources = [r for r in resources if matches_filter(r, predicates)]
        sort_by = params.get("sort_by", "")
        if sort_by not in _SORTABLE:
            raise ContractViolation(f"cannot sort by {sort_by!r}")
        if sort_by:
            field, _, order = sort_by.partition(" ")
            resources = sorted(resources, key=lambda r: getattr(r, field) or "", reverse=order == "desc")
        try:
            size = int(params.get("page_size") or 20)
            start = int(params.get("page_token") or 0)
        except ValueError:
            raise ContractViolation("page_size and page_token must be integers here") from None
        if size <= 0:
            raise ContractViolation("page_size must be positive")
        end = start + size
        return resources[start:end], (str(end) if end < len(resources) else "")
