"""A receiver of Seldon's request-logger CloudEvents that writes the inference log.

A SeldonDeployment's ``graph.logger`` (``mode: all``) makes the Seldon executor POST every request
and every response to a URL as CloudEvents (binary mode: the payload is the body and the attributes
are ``Ce-*`` headers; structured mode, ``application/cloudevents+json``, is accepted too):

- ``Ce-Type``: ``io.seldon.serving.inference.request`` or ``io.seldon.serving.inference.response``
- ``Ce-Requestid`` (else the V2 body's ``id``, else ``Ce-Id``): pairs a request with its response. The
  executor sets it to the request's ``Seldon-Puid`` (one it generates when the caller sent none), so
  the record's ``request_id`` is the V2 request body's ``id`` when the caller gave one, as the local
  router records it: ground-truth labels are joined on the caller's id, which the puid is not
- ``Ce-Modelid``: the graph node (model) name; ``Ce-Time``: when the executor saw the message
- ``Ce-Namespace``, ``Ce-Inferenceservicename`` (the SeldonDeployment), ``Ce-Endpoint`` (predictor)

This sink pairs each request with its response and appends one record per pair to the same
inference log the local router writes (``docs/inference-log.md``; the writer of
``serving_local.inference_log``), so a DriftMonitor reads both backends alike.

Which deployment a message belongs to is best told by the URL, since the operator builds each
predictor's logger URL with :func:`logger_url`::

    POST /v1/log/<namespace>/<ModelDeployment>/<predictor>?version=<model version>&shadow=true

Posts to ``/`` fall back to the headers: the namespace from ``Ce-Namespace``, the deployment from
``Ce-Inferenceservicename`` and the predictor from ``Ce-Endpoint``; the model version is then
unknown (empty).

Callers authenticate: each namespace has its own token, HMAC-SHA256 of the namespace under a key the
operator holds (``MLOPS_SELDON_LOGGER_TOKEN_KEY``, from a Secret in the chart; a random key per process
without it). The executor cannot send extra headers (its logger has only a URL: seldon-core v1.17.1
``executor/logger/worker.go`` posts with cloudevents sdk-go's HTTP transport to that URL), but Go's
``net/http`` client sends a URL's user info as ``Authorization: Basic``, so :func:`logger_url` puts
``<namespace>:<token>@`` in the URL; ``Authorization: Bearer <token>`` is accepted too. A post without
valid credentials for the message's namespace is answered 401 and nothing is written, so a tenant that
can read its own SeldonDeployments (and so its token) cannot write another namespace's inference log.
Tokens are never logged.

A request whose response has not arrived within ``pair_timeout`` seconds is written with status
504 (the executor logs a response for every answered request, so none means it failed); a
response without its request is dropped (it has no inputs). Both are counted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Mapping, Sequence
from urllib.parse import quote, urlencode

from aiohttp import web
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlops_operator.backends.serving_local.inference_log import (
    InferenceLogWriter,
    LogEntry,
    inference_log_dir,
    local_path,
)

if TYPE_CHECKING:
    from mlops_operator.reconcile.modeldeployment import PredictorPlan

REQUEST_TYPE = "io.seldon.serving.inference.request"
RESPONSE_TYPE = "io.seldon.serving.inference.response"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
EXPIRED_STATUS = 504
# Namespaces and object names become path segments of the log: DNS subdomain names only.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

log = logging.getLogger("mlops_operator.seldon_logger_sink")


class SinkSettings(BaseSettings):
    """Settings of the sink, from ``MLOPS_SELDON_LOGGER_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_SELDON_LOGGER_", use_attribute_docstrings=True,
                                      extra="ignore")

    mode: Literal["auto", "always", "never"] = "auto"
    """auto: start when the seldon serving backend first serves a ModelDeployment; always: at operator
    start; never: not at all."""
    host: str = "127.0.0.1"
    """Address the sink binds (0.0.0.0 in a pod, so the Seldon executors can reach it)."""
    port: int = Field(9180, ge=0, le=65535)
    """Port the sink binds (0: any free port)."""
    pair_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    """How long a request waits for its response before it is written as failed."""
    flush_interval_seconds: float | None = Field(None, gt=0, le=3600)
    """How often the sink writes what it has received (besides every 256 records, and before a DriftMonitor
    asks for a retrain); default 5 s to an object store (one object per batch), 1 s to a directory."""
    advertised_url: str | None = None
    """Base URL the executors post to (e.g. the operator Service's URL); default http://host:port."""
    token_key: SecretStr | None = None
    """Key of the per-namespace tokens callers must present (keep it in a Secret); default: a random key
    per process, so the logger URLs (and the SeldonDeployments) change when the operator restarts."""


def namespace_token(key: str, namespace: str) -> str:
    """The token that lets a caller post messages of ``namespace``: HMAC-SHA256 of it under ``key``."""
    return hmac.new(key.encode(), namespace.encode(), hashlib.sha256).hexdigest()


def presented_token(authorization: str | None) -> tuple[str | None, str | None]:
    """``(user, token)`` from an Authorization header: Bearer (no user) or Basic ``<namespace>:<token>``."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return None, value.strip()
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, None
        return user, password or None
    return None, None


def logger_url(base_url: str, namespace: str, deployment: str, predictor: str, model_version: str | None = None,
               shadow: bool = False, token: str | None = None) -> str:
    """The ``graph.logger.url`` of one predictor of a ModelDeployment served by Seldon; with ``token`` the
    URL carries ``<namespace>:<token>@`` (sent by Go's HTTP client as basic authentication)."""
    query = {key: value for key, value in (("version", model_version), ("shadow", "true" if shadow else None))
             if value}
    path = "/".join(quote(part, safe="") for part in (namespace, deployment, predictor))
    base = base_url.rstrip("/")
    if token:
        scheme, _, rest = base.partition("://")
        base = f"{scheme}://{quote(namespace, safe='')}:{quote(token, safe='')}@{rest}"
    return f"{base}/v1/log/{path}" + (f"?{urlencode(query)}" if query else "")


@dataclass
class LoggedMessage:
    """One request or response message, as received."""

    type: Literal["request", "response"]
    request_id: str
    namespace: str
    deployment: str
    predictor: str
    model_version: str
    shadow: bool
    model: str
    time: datetime
    """The executor's Ce-Time, else the arrival time."""
    body: bytes
    arrived: float
    """Monotonic arrival time (for the pairing timeout)."""


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Go writes nanoseconds; Python parses at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _body_id(body: bytes) -> str:
    """The V2 payload's ``id`` (requests and responses both carry the request's id), or ''."""
    try:
        payload = json.loads(body)
    except ValueError:
        return ""
    value = payload.get("id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else ""


def parse_message(headers: Mapping[str, str], body: bytes, route: Mapping[str, str], query: Mapping[str, str],
                  arrived: float, now: datetime) -> LoggedMessage:
    """A CloudEvent (binary or structured mode) as a :class:`LoggedMessage`; ValueError if unusable.

    ``route`` holds the URL's namespace, deployment and predictor when posted to ``/v1/log/...``.
    """
    attributes = {key.lower()[3:]: value for key, value in headers.items() if key.lower().startswith("ce-")}
    if headers.get("Content-Type", "").split(";")[0].strip().lower() == STRUCTURED_CONTENT_TYPE:
        try:
            envelope = json.loads(body)
        except ValueError:
            raise ValueError("structured CloudEvent is not JSON") from None
        if not isinstance(envelope, dict):
            raise ValueError("structured CloudEvent is not a JSON object")
        attributes = {str(k).lower(): str(v) for k, v in envelope.items() if k not in ("data", "data_base64")}
        if "data_base64" in envelope:
            body = base64.b64decode(envelope["data_base64"])
        else:
            data = envelope.get("data")
            body = data.encode() if isinstance(data, str) else json.dumps(data).encode()
    event_type = attributes.get("type", "")
    if event_type == REQUEST_TYPE:
        kind: Literal["request", "response"] = "request"
    elif event_type == RESPONSE_TYPE:
        kind = "response"
    else:
        raise ValueError(f"unsupported CloudEvent type {event_type!r}")
    request_id = attributes.get("requestid") or _body_id(body) or attributes.get("id", "")
    if not request_id:
        raise ValueError("no request id (Ce-Requestid, the body's id, or Ce-Id)")
    namespace = route.get("namespace") or attributes.get("namespace", "")
    deployment = route.get("deployment") or attributes.get("inferenceservicename", "")
    for what, value in (("namespace", namespace), ("deployment", deployment)):
        if not _OBJECT_NAME.match(value or ""):
            raise ValueError(f"invalid or missing {what} {value!r}")
    return LoggedMessage(
        type=kind,
        request_id=request_id,
        namespace=namespace,
        deployment=deployment,
        predictor=route.get("predictor") or attributes.get("endpoint") or attributes.get("predictor") or "",
        model_version=query.get("version", ""),
        shadow=query.get("shadow", "").lower() in ("1", "true", "yes"),
        model=attributes.get("modelid", ""),
        time=_parse_time(attributes.get("time")) or now,
        body=body,
        arrived=arrived,
    )


def log_entry(request: LoggedMessage, response: LoggedMessage | None, pair_timeout: float) -> LogEntry:
    """The inference-log entry of a request and its response (None: it never came)."""
    try:
        payload = json.loads(request.body)
    except ValueError:
        payload = None
    # The caller's id (the V2 body's), which labels are keyed on; else the id the pair was matched by.
    body_id = payload.get("id") if isinstance(payload, dict) else None
    request_id = body_id[:256] if isinstance(body_id, str) and body_id else request.request_id
    if response is None:
        return LogEntry(request_id=request_id, ts=request.time, model=request.model,
                        predictor=request.predictor, model_version=request.model_version, shadow=request.shadow,
                        status=EXPIRED_STATUS, latency_ms=pair_timeout * 1000.0,
                        request=payload if isinstance(payload, dict) else None,
                        error=f"no response logged within {pair_timeout:g}s")
    status = 200
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error") and not answer.get("outputs"):
        status = 500
    latency = max((response.time - request.time).total_seconds(), 0.0) * 1000.0
    return LogEntry(request_id=request_id, ts=request.time, model=request.model or response.model,
                    predictor=request.predictor or response.predictor,
                    model_version=request.model_version or response.model_version,
                    shadow=request.shadow or response.shadow, status=status, latency_ms=latency,
                    request=payload if isinstance(payload, dict) else None, response_body=response.body)


class SeldonLoggerSink:
    """The sink as an aiohttp server: ``await start()``, ``url``, ``await close()``.

    Counters: ``received`` messages, ``written`` records, ``expired`` requests without a response,
    ``orphaned`` responses without a request, ``rejected`` messages that were not usable.
    """

    def __init__(self, artifact_root: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 pair_timeout: float = 30.0, flush_interval: float | None = None, advertised_url: str | None = None,
                 token_key: str | None = None):
        # A local directory or an fsspec URI (s3://...): the writer appends files or puts objects.
        local = local_path(artifact_root)
        self.root: Path | str = local if local is not None else str(artifact_root).rstrip("/")
        self.host = host
        self.port = port
        self.pair_timeout = pair_timeout
        self.flush_interval = flush_interval
        self.advertised_url = advertised_url
        self._token_key = token_key or secrets.token_hex(32)
        self.received = self.written = self.expired = self.orphaned = self.rejected = self.unauthorized = 0
        self._pending: dict[tuple[str, str, str], LoggedMessage] = {}
        self._writers: dict[tuple[str, str], InferenceLogWriter] = {}
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task | None = None

    @property
    def url(self) -> str:
        """Base URL to give :func:`logger_url`."""
        return self.advertised_url or f"http://{self.host}:{self.port}"

    def logger_url(self, namespace: str, deployment: str, predictor: str, model_version: str | None = None,
                   shadow: bool = False) -> str:
        """:func:`logger_url` against this sink, with the namespace's token."""
        return logger_url(self.url, namespace, deployment, predictor, model_version, shadow, self.token(namespace))

    def token(self, namespace: str) -> str:
        """The token callers present to post messages of ``namespace``."""
        return namespace_token(self._token_key, namespace)

    def authorized(self, authorization: str | None, namespace: str) -> bool:
        """Whether the Authorization header carries ``namespace``'s token (and, for Basic, names it)."""
        user, token = presented_token(authorization)
        if token is None or (user is not None and user != namespace):
            return False
        return hmac.compare_digest(token, self.token(namespace))

    async def start(self) -> None:
        """Bind and serve; with port 0 ``port`` becomes the bound port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", self.receive)
        app.router.add_post("/v1/log/{namespace}/{deployment}/{predictor}", self.receive)
        app.router.add_get("/healthz", self.health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        """Write the requests still waiting (as expired), flush every writer, stop serving."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.sweep(expire_all=True)
        for writer in self._writers.values():
            await writer.close()
        self._writers.clear()

    async def flush(self) -> None:
        """Write every record paired so far (tests and shutdown)."""
        for writer in list(self._writers.values()):
            await writer.flush()

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"received": self.received, "written": self.written, "expired": self.expired,
                                  "orphaned": self.orphaned, "rejected": self.rejected,
                                  "unauthorized": self.unauthorized,
                                  "pending": len(self._pending)})

    async def receive(self, request: web.Request) -> web.Response:
        """One CloudEvent: 202 when accepted, 401 without the namespace's token, 400 when unusable."""
        unauthorized = web.json_response({"error": "needs the namespace's token (Authorization: Basic "
                                                   "<namespace>:<token> or Bearer <token>)"},
                                         status=401, headers={"WWW-Authenticate": 'Basic realm="seldon-logger"'})
        if not presented_token(request.headers.get("Authorization"))[1]:
            self.unauthorized += 1
            return unauthorized
        body = await request.read()
        try:
            message = parse_message(request.headers, body, request.match_info, request.query, time.monotonic(),
                                    datetime.now(timezone.utc))
        except ValueError as error:
            self.rejected += 1
            return web.json_response({"error": str(error)}, status=400)
        if not self.authorized(request.headers.get("Authorization"), message.namespace):
            self.unauthorized += 1
            return unauthorized
        self.received += 1
        self.accept(message)
        return web.Response(status=202)

    def accept(self, message: LoggedMessage) -> None:
        """Pair a message with its counterpart; write the pair when complete."""
        key = (message.namespace, message.deployment, message.request_id)
        other = self._pending.get(key)
        if other is None or other.type == message.type:
            # A repeated message of the same type replaces the earlier one (a retried delivery).
            self._pending[key] = message
            return
        del self._pending[key]
        request, response = (message, other) if message.type == "request" else (other, message)
        self._write(request, response)

    def sweep(self, now: float | None = None, expire_all: bool = False) -> None:
        """Write requests that waited longer than ``pair_timeout``; drop such responses."""
        now = time.monotonic() if now is None else now
        for key, message in list(self._pending.items()):
            if expire_all or now - message.arrived >= self.pair_timeout:
                del self._pending[key]
                if message.type == "request":
                    self.expired += 1
                    self._write(message, None)
                else:
                    self.orphaned += 1

    def _write(self, request: LoggedMessage, response: LoggedMessage | None) -> None:
        key = (request.namespace, request.deployment)
        writer = self._writers.get(key)
        if writer is None:
            writer = InferenceLogWriter(inference_log_dir(self.root, *key), flush_interval=self.flush_interval)
            try:
                writer.start()
            except RuntimeError:  # no running loop (close() after the loop stopped): write synchronously
                writer.write_batch([log_entry(request, response, self.pair_timeout)])
                self.written += 1
                return
            self._writers[key] = writer
        writer.append(log_entry(request, response, self.pair_timeout))
        self.written += 1

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(self.pair_timeout / 4, 0.05))
            self.sweep()


# ---------------------------------------------------------------- the operator's one sink

_running: SeldonLoggerSink | None = None
_running_lock = asyncio.Lock()


async def ensure_running(artifact_root: str, settings: SinkSettings | None = None) -> SeldonLoggerSink:
    """The operator's sink, started on first use with ``settings`` (default: from the environment).

    The seldon serving backend calls this (through :func:`predictor_logger_urls`) and puts
    ``sink.logger_url(namespace, name, predictor, version, shadow)`` into each predictor's
    ``graph.logger.url`` (``mode: all``). Raises OSError when the port cannot be bound.
    """
    global _running
    async with _running_lock:
        if _running is None:
            config = settings or SinkSettings()
            sink = SeldonLoggerSink(artifact_root, host=config.host, port=config.port,
                                    pair_timeout=config.pair_timeout_seconds,
                                    flush_interval=config.flush_interval_seconds, advertised_url=config.advertised_url,
                                    token_key=config.token_key.get_secret_value() if config.token_key else None)
            await sink.start()
            log.info("Seldon request-logger sink listening on %s:%s (logger URLs under %s)", sink.host, sink.port,
                     sink.url)
            if config.token_key is None:
                log.warning("MLOPS_SELDON_LOGGER_TOKEN_KEY is not set: the request-logger tokens change when the "
                            "operator restarts (and with them every SeldonDeployment's logger URL)")
            _running = sink
        return _running


async def predictor_logger_urls(artifact_root: str, namespace: str, deployment: str,
                                predictors: Sequence[PredictorPlan]) -> dict[str, str] | None:
    """Each predictor's request-logger URL at the operator's sink (started on first use), which
    writes the inference log; None when request logging is off or the sink cannot start. The settings are
    read only while no sink runs (a running one is not "never"): not on every reconciliation."""
    sink = running()
    if sink is None:
        if SinkSettings().mode == "never":
            return None
        try:
            sink = await ensure_running(artifact_root)
        except OSError as error:  # port taken
            log.warning("%s/%s: no request logging (the Seldon request-logger sink cannot start: %s)", namespace,
                        deployment, error)
            return None
    return {p.name: sink.logger_url(namespace, deployment, p.name, p.model.version, p.shadow) for p in predictors}


class OperatorSink:
    """The operator's sink as the seldon serving backend uses it: started at operator start-up with
    MLOPS_SELDON_LOGGER_MODE=always, else with the first deployment the backend serves (auto), never
    with never; flushed and stopped at shutdown."""

    def __init__(self, artifact_root: str) -> None:
        self.artifact_root = artifact_root

    async def logger_urls(self, namespace: str, deployment: str, predictors: Sequence[PredictorPlan]
                          ) -> dict[str, str] | None:
        """Each predictor's request-logger URL (see :func:`predictor_logger_urls`)."""
        return await predictor_logger_urls(self.artifact_root, namespace, deployment, predictors)

    async def start(self) -> None:
        """Operator start-up: start the sink now with mode always."""
        if SinkSettings().mode != "always":
            return
        try:
            await ensure_running(self.artifact_root)
        except (OSError, ValueError) as error:  # port taken, or a remote artifact root
            log.error("cannot start the Seldon request-logger sink: %s", error)

    async def stop(self) -> None:
        """Operator shutdown: flush and stop the sink."""
        await stop_running()


def running() -> SeldonLoggerSink | None:
    """The operator's sink if it has been started."""
    return _running


async def stop_running() -> None:
    """Flush and stop the operator's sink (operator shutdown)."""
    global _running
    async with _running_lock:
        if _running is not None:
            await _running.close()
            _running = None
