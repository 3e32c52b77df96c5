"""The per-ModelDeployment router: one loopback V2 endpoint in front of a deployment's MLServers.

Run as ``python -m mlops_operator.backends.serving_local.router --workdir DIR --port P
--inference-log-dir DIR`` (the manager does this, detached). It

* splits ``POST /v2/models/<model>/infer`` across predictors by weight (smooth weighted
  round-robin, see :class:`~.traffic.SmoothWeightedRoundRobin`), rewriting the model name to the
  backend's, and answers with ``x-mlops-predictor`` / ``x-mlops-model-version`` headers;
* mirrors requests to shadow predictors in the background (their answers are logged, never returned);
* serves ``/v2/health/live|ready``, ``GET /v2/models/<model>[/ready]`` (from the primary predictor),
  ``GET /v2/models/<model>/versions/<version>[/ready]`` (from the predictor serving that version),
  Prometheus ``/metrics``, and the admin API ``PUT|GET /_mlops/config``, ``GET /_mlops/stats``;
* answers a client's mistake (a body that breaks the V2 protocol or the model's declared inputs,
  see :mod:`.v2_protocol`; a wrong method, an oversized body) with its 4xx and ``{"error": ...}``;
  such requests are counted as client errors, never as predictor errors;
* appends every request and response to the inference log.

The config is persisted to ``<workdir>/config.json`` so a restarted router keeps its split.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from pydantic import ValidationError

from .inference_log import InferenceLogWriter, LogEntry
from .processes import LOOPBACK, read_json, write_json_atomic
from .traffic import MirrorSampler, PredictorRoute, RouterConfig, SlidingWindow, SmoothWeightedRoundRobin
from .v2_protocol import (
    BINARY_HEADER,
    ClientError,
    check_signature,
    decode_binary_extension,
    in_declared_order,
    parse_request,
)

log = logging.getLogger("mlops_operator.router")

CONFIG_FILE = "config.json"
PREDICTOR_HEADER = "x-mlops-predictor"
VERSION_HEADER = "x-mlops-model-version"
REQUEST_ID_HEADER = "x-request-id"
JSON = "application/json"
MAX_BODY_BYTES = 64 * 1024 * 1024
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def parse_since(value: str | None, default: float) -> float:
    """``since`` query value as unix seconds: a number, or an RFC3339 timestamp."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()


@dataclass(frozen=True)
class _Routing:
    """Everything derived from one config, swapped as a whole so a request sees one config."""

    config: RouterConfig
    balancer: SmoothWeightedRoundRobin
    by_name: dict[str, PredictorRoute]
    shadows: tuple[tuple[PredictorRoute, MirrorSampler], ...]
    generation: int
    configured_at: float

    @classmethod
    def build(cls, config: RouterConfig, generation: int, configured_at: float) -> "_Routing":
        served = [(p.name, p.weight) for p in config.predictors if not p.shadow]
        return cls(
            config=config,
            balancer=SmoothWeightedRoundRobin(served),
            by_name={p.name: p for p in config.predictors},
            shadows=tuple((p, MirrorSampler(p.mirror_percent)) for p in config.predictors if p.shadow),
            generation=generation,
            configured_at=configured_at,
        )


class Router:
    """State of a running router: routing table, HTTP client, metrics, stats windows, log writer."""

    def __init__(
        self,
        workdir: Path,
        inference_log_dir: Path | str | None,
        *,
        upstream_timeout: float = 30.0,
        max_shadow_in_flight: int = 64,
        stats_retention: float = 3600.0,
    ):
        self.workdir = Path(workdir)
        self.upstream_timeout = upstream_timeout
        self.max_shadow_in_flight = max_shadow_in_flight
        self.stats_retention = stats_retention
        self.routing: _Routing | None = None
        self.session: aiohttp.ClientSession | None = None
        self.windows: dict[str, SlidingWindow] = {}
        self.log_writer = InferenceLogWriter(inference_log_dir) if inference_log_dir else None
        self._shadow_tasks: set[asyncio.Task] = set()
        self.registry = CollectorRegistry()
        self.requests_total = Counter(
            "mlops_router_requests_total", "Requests answered per predictor and HTTP code (shadow included).",
            ["predictor", "code"], registry=self.registry)
        self.errors_total = Counter(
            "mlops_router_request_errors_total", "Requests that failed (5xx or unreachable backend) per predictor.",
            ["predictor"], registry=self.registry)
        self.client_errors_total = Counter(
            "mlops_router_request_client_errors_total",
            "Requests refused as the client's mistake (4xx: not V2, not the model's inputs) per predictor; "
            "never part of a predictor's error rate.",
            ["predictor"], registry=self.registry)
        self.duration = Histogram(
            "mlops_router_request_duration_seconds",
            "Round-trip time seen by the router per predictor (requests refused as client errors excluded).",
            ["predictor"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shadow_dropped = Counter(
            "mlops_router_shadow_dropped_total", "Mirrored requests dropped because too many were in flight.",
            ["predictor"], registry=self.registry)
        self._load_persisted_config()

    # ------------------------------------------------------------ config

    @property
    def config_path(self) -> Path:
        return self.workdir / CONFIG_FILE

    def _load_persisted_config(self) -> None:
        saved = read_json(self.config_path)
        if not saved:
            return
        try:
            config = RouterConfig.model_validate(saved["config"])
        except (KeyError, ValidationError) as exc:
            log.error("ignoring unreadable %s: %s", self.config_path, exc)
            return
        self.routing = _Routing.build(config, int(saved.get("generation", 1)), float(saved.get("configuredAt", time.time())))

    def set_config(self, config: RouterConfig) -> _Routing:
        """Swap in a new config and persist it (the swap is one assignment: requests see old or new)."""
        generation = (self.routing.generation + 1) if self.routing else 1
        routing = _Routing.build(config, generation, time.time())
        write_persisted_config(self.workdir, config, generation, routing.configured_at)
        self.routing = routing
        return routing

    # ------------------------------------------------------------ lifecycle

    async def startup(self, _app: web.Application | None = None) -> None:
        # One keep-alive pool for all backends. MLServer (uvicorn) drops idle connections after
        # 5 s, so ours are dropped first (4 s) and a request never lands on a closing socket.
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=4.0)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.upstream_timeout),
            # No Accept-Encoding: compressing on the loopback only costs CPU on both ends.
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        if self.log_writer:
            self.log_writer.start()

    async def cleanup(self, _app: web.Application | None = None) -> None:
        if self._shadow_tasks:
            await asyncio.wait(list(self._shadow_tasks), timeout=5.0)
        if self.log_writer:
            await self.log_writer.close()
        if self.session:
            await self.session.close()

    # ------------------------------------------------------------ bookkeeping

    def _observe(self, predictor: str, status: int, seconds: float, finished_at: float) -> None:
        self.requests_total.labels(predictor, str(status)).inc()
        if status >= 500:
            self.errors_total.labels(predictor).inc()
        elif status >= 400:
            self.client_errors_total.labels(predictor).inc()
        if not 400 <= status < 500:
            self.duration.labels(predictor).observe(seconds)
        window = self.windows.get(predictor)
        if window is None:
            window = self.windows[predictor] = SlidingWindow(retention_seconds=self.stats_retention)
        window.add(finished_at, seconds, status)

    async def _call(self, route: PredictorRoute, path: str, body: bytes) -> tuple[int, bytes, str | None]:
        """POST to a backend: ``(status, body, error)``; unreachable → 502, timeout → 504."""
        assert self.session is not None
        for attempt in (1, 2):
            try:
                async with self.session.post(route.url + path, data=body, headers={"Content-Type": JSON}) as resp:
                    return resp.status, await resp.read(), None
            except asyncio.TimeoutError:
                return 504, b"", f"predictor {route.name} timed out after {self.upstream_timeout:.0f}s"
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled keep-alive connection the server had already closed (MLServer does so
                # after answering 500): nothing was processed, so one retry on a fresh connection.
                if attempt == 2:
                    return 502, b"", f"predictor {route.name} unreachable: {exc.__class__.__name__}: {exc}"
            except aiohttp.ClientError as exc:
                return 502, b"", f"predictor {route.name} unreachable: {exc.__class__.__name__}: {exc}"
        raise AssertionError("unreachable")

    def _log(self, routing: _Routing, route: PredictorRoute, request_id: str, arrived: datetime,
             status: int, seconds: float, payload: dict | None, response_body: bytes, error: str | None) -> None:
        if self.log_writer is None:
            return
        self.log_writer.append(LogEntry(
            request_id=request_id, ts=arrived, model=routing.config.model, predictor=route.name,
            model_version=route.version, shadow=route.shadow, status=status, latency_ms=seconds * 1000.0,
            request=payload, response_body=response_body, error=error,
        ))

    # ------------------------------------------------------------ data plane

    def _routing_for(self, request: web.Request) -> _Routing | web.Response:
        """The routing of the request's model, or the answer when there is none (503: no config yet,
        404: another model)."""
        routing = self.routing
        if routing is None:
            return _error(503, "router has no config yet")
        if request.match_info["model"] != routing.config.model:
            return _error(404, f"Model {request.match_info['model']} not found")
        return routing

    async def infer(self, request: web.Request) -> web.StreamResponse:
        routing = self._routing_for(request)
        if isinstance(routing, web.Response):
            return routing
        pinned = request.match_info.get("version")
        if pinned is not None:
            routes = [p for p in routing.config.predictors if not p.shadow and p.version == pinned]
            if not routes:
                return _error(404, f"Model {routing.config.model} version {pinned} not found")
            route = routes[0]
        else:
            route = routing.by_name[routing.balancer.pick()]

        started = time.perf_counter()
        body = await request.read()
        arrived = datetime.now(timezone.utc)
        try:
            if request.headers.get(BINARY_HEADER) is not None:
                body = decode_binary_extension(body, request.headers[BINARY_HEADER])
            payload = parse_request(body)
            # The clients' contract is the primary's signature: a request that fits it but not a
            # candidate's is the candidate's fault and goes through (and fails there).
            check_signature(payload, routing.config.primary.inputs)
        except ClientError as problem:
            return self._refuse(routing, route, problem, body, started, arrived)
        if in_declared_order(payload, routing.config.primary.inputs):
            body = json.dumps(payload, separators=(",", ":")).encode()
        if isinstance(payload.get("id"), str) and payload["id"]:
            request_id = payload["id"]
        else:
            # Stamp an id so the client's answer, the shadow's and the log agree on it.
            request_id = str(uuid.uuid4())
            payload["id"] = request_id
            body = json.dumps(payload, separators=(",", ":")).encode()
        status, response_body, error = await self._call(
            route, f"/v2/models/{routing.config.backend_model_name(route)}/infer", body)
        seconds = time.perf_counter() - started
        self._observe(route.name, status, seconds, time.time())
        self._log(routing, route, request_id, arrived, status, seconds, payload, response_body, error)

        for shadow, sampler in routing.shadows:
            if sampler.take():
                self._mirror(routing, shadow, body, payload, request_id, arrived)

        headers = {PREDICTOR_HEADER: route.name, VERSION_HEADER: route.version, REQUEST_ID_HEADER: request_id}
        if error is not None:
            return _error(status, error, headers)
        if status >= 400:
            # MLServer answers some failures with plain text or FastAPI's {"detail": ...}; clients get
            # V2's {"error": ...}.
            message = _backend_error_message(response_body)
            if message is not None:
                return _error(status, message or f"HTTP {status}", headers)
        return web.Response(status=status, body=response_body, content_type=JSON, headers=headers)

    def _refuse(self, routing: _Routing, route: PredictorRoute, problem: ClientError, body: bytes,
                started: float, arrived: datetime) -> web.Response:
        """Answer a client's mistake without calling a model server: counted and logged as a client error."""
        seconds = time.perf_counter() - started
        self._observe(route.name, problem.status, seconds, time.time())
        request_id = str(uuid.uuid4())
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("id"), str) and payload["id"]:
            request_id = payload["id"][:256]
        message = str(problem)
        self._log(routing, route, request_id, arrived, problem.status, seconds,
                  payload if isinstance(payload, dict) else None, b"", message)
        headers = {PREDICTOR_HEADER: route.name, VERSION_HEADER: route.version, REQUEST_ID_HEADER: request_id}
        return _error(problem.status, message, headers)

    def _mirror(self, routing: _Routing, shadow: PredictorRoute, body: bytes, payload: dict | None,
                request_id: str, arrived: datetime) -> None:
        if len(self._shadow_tasks) >= self.max_shadow_in_flight:
            self.shadow_dropped.labels(shadow.name).inc()
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow_call(routing, shadow, body, payload, request_id, arrived))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_call(self, routing: _Routing, shadow: PredictorRoute, body: bytes, payload: dict | None,
                           request_id: str, arrived: datetime) -> None:
        started = time.perf_counter()
        status, response_body, error = await self._call(
            shadow, f"/v2/models/{routing.config.backend_model_name(shadow)}/infer", body)
        seconds = time.perf_counter() - started
        self._observe(shadow.name, status, seconds, time.time())
        self._log(routing, shadow, request_id, arrived, status, seconds, payload, response_body, error)

    async def model_metadata(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/models/<model>[/versions/<version>][/ready]``: answered by the primary predictor,
        or by the predictor serving that version."""
        routing = self._routing_for(request)
        if isinstance(routing, web.Response):
            return routing
        pinned = request.match_info.get("version")
        if pinned is None:
            route = routing.config.primary
        else:
            routes = [p for p in routing.config.predictors if not p.shadow and p.version == pinned]
            if not routes:
                return _error(404, f"Model {routing.config.model} version {pinned} not found")
            route = routes[0]
        suffix = "/ready" if request.path.endswith("/ready") else ""
        url = f"{route.url}/v2/models/{routing.config.backend_model_name(route)}{suffix}"
        assert self.session is not None
        try:
            async with self.session.get(url) as resp:
                status, body = resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return _error(502, f"predictor {route.name} unreachable: {exc.__class__.__name__}")
        if status == 200 and not suffix:
            try:
                metadata = json.loads(body)
                metadata["name"] = routing.config.model  # the client's name, not the backend's
                # The versions a client can pin (/versions/<v>/infer), not only the backend's own.
                metadata["versions"] = sorted({p.version for p in routing.config.predictors
                                               if not p.shadow and p.version}, key=_version_key)
                body = json.dumps(metadata).encode()
            except (ValueError, TypeError):
                pass
        elif status >= 400:
            message = _backend_error_message(body)
            if message is not None:
                return _error(status, message or f"HTTP {status}", {PREDICTOR_HEADER: route.name})
        headers = {PREDICTOR_HEADER: route.name, VERSION_HEADER: route.version}
        return web.Response(status=status, body=body, content_type=JSON, headers=headers)

    async def live(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({"live": True})

    async def ready(self, _request: web.Request) -> web.StreamResponse:
        """Ready when configured and every predictor that takes client traffic is ready."""
        routing = self.routing
        if routing is None:
            return web.json_response({"ready": False, "reason": "no config"}, status=503)
        assert self.session is not None
        routes = [p for p in routing.config.predictors if not p.shadow and p.weight > 0]

        async def backend_ready(route: PredictorRoute) -> bool:
            try:
                async with self.session.get(f"{route.url}/v2/health/ready",
                                            timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        results = await asyncio.gather(*(backend_ready(r) for r in routes))
        not_ready = [r.name for r, ok in zip(routes, results) if not ok]
        if not_ready:
            return web.json_response({"ready": False, "notReady": not_ready}, status=503)
        return web.json_response({"ready": True})

    async def metrics(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------ admin

    async def put_config(self, request: web.Request) -> web.StreamResponse:
        try:
            config = RouterConfig.model_validate(await request.json())
        except ValueError as exc:  # ValidationError and JSONDecodeError are both ValueErrors
            return web.json_response({"error": "invalid config", "detail": str(exc)}, status=400)
        routing = self.set_config(config)
        log.info("config generation %d: %s", routing.generation,
                 ", ".join(f"{p.name}={'shadow' if p.shadow else p.weight}" for p in config.predictors))
        return web.json_response(_config_view(routing))

    async def get_config(self, _request: web.Request) -> web.StreamResponse:
        if self.routing is None:
            return _error(404, "no config")
        return web.json_response(_config_view(self.routing))

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """Per-predictor requests, errors, error rate, p50/p99 since ``?since=`` (default: last config change)."""
        now = time.time()
        default_since = self.routing.configured_at if self.routing else now - 60.0
        try:
            since = parse_since(request.query.get("since"), default_since)
        except ValueError:
            return _error(400, "since must be unix seconds or an RFC3339 timestamp")
        names = list(self.routing.by_name) if self.routing else []
        names += [n for n in self.windows if n not in names]
        predictors = {}
        complete = True
        for name in names:
            window = self.windows.get(name)
            stats = window.stats(since, now) if window else SlidingWindow().stats(since, now)
            predictors[name] = stats.to_json_dict()
            complete = complete and (window is None or window.covers(since))
        return web.json_response({
            "since": since,
            "until": now,
            "complete": complete,
            "generation": self.routing.generation if self.routing else 0,
            "configuredAt": self.routing.configured_at if self.routing else None,
            "predictors": predictors,
        })

    def app(self) -> web.Application:
        """The aiohttp application (also used in-process by tests)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_v2_errors])
        app.on_startup.append(self.startup)
        app.on_cleanup.append(self.cleanup)
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        app.router.add_post("/v2/models/{model}/versions/{version}/infer", self.infer)
        app.router.add_get("/v2/models/{model}", self.model_metadata)
        app.router.add_get("/v2/models/{model}/ready", self.model_metadata)
        app.router.add_get("/v2/models/{model}/versions/{version}", self.model_metadata)
        app.router.add_get("/v2/models/{model}/versions/{version}/ready", self.model_metadata)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_put("/_mlops/config", self.put_config)
        app.router.add_get("/_mlops/config", self.get_config)
        app.router.add_get("/_mlops/stats", self.stats)
        return app


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    """A V2-style error body."""
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _v2_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413, ...) as V2 ``{"error": ...}`` bodies instead of plain text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            message = f"request body larger than the router's limit of {MAX_BODY_BYTES} bytes"
        elif exc.status == 405:
            allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
            message = f"method {request.method} is not allowed on {request.path}" + (f"; use {allowed}" if allowed else "")
        elif exc.status == 404:
            message = f"no V2 endpoint {request.method} {request.path}"
        else:
            message = exc.text or exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error(exc.status, message, headers)


def _backend_error_message(body: bytes) -> str | None:
    """The message of a backend's error body in V2 form, or None when it is already ``{"error": ...}``."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:1000]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return None
    if isinstance(parsed, dict) and "detail" in parsed:
        detail = parsed["detail"]
        if isinstance(detail, list):  # FastAPI's validation errors
            return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}"
                             if isinstance(d, dict) else str(d) for d in detail)[:1000]
        return str(detail)[:1000]
    return json.dumps(parsed)[:1000]


def _version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _config_view(routing: _Routing) -> dict:
    return {"generation": routing.generation, "configuredAt": routing.configured_at,
            "config": routing.config.to_json_dict()}


def write_persisted_config(workdir: Path, config: RouterConfig, generation: int, configured_at: float) -> None:
    """Write ``config.json`` as the router reads it at start."""
    write_json_atomic(Path(workdir) / CONFIG_FILE, {
        "generation": generation, "configuredAt": configured_at, "config": config.to_json_dict()})


def main(argv: list[str] | None = None) -> None:
    """Entry point of the router process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--inference-log-dir", default=None, help="a directory or an fsspec URI (s3://...)")
    parser.add_argument("--namespace", default="")
    parser.add_argument("--deployment", default="")
    args = parser.parse_args(argv)
    disable_created_metrics()  # *_created series only add noise to every scrape
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = Router(args.workdir, args.inference_log_dir)
    log.info("router %s/%s on %s:%d", args.namespace, args.deployment, LOOPBACK, args.port)
    web.run_app(router.app(), host=LOOPBACK, port=args.port, access_log=None, print=None,
                shutdown_timeout=10.0, loop=_new_event_loop())


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (MLServer brings it), for less per-request overhead; else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
