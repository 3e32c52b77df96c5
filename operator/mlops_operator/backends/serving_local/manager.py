"""Facade the ModelDeployment handler calls to run the ``local`` serving backend.

All methods are ``async`` (they probe HTTP readiness and wait for processes to stop without
blocking kopf's event loop) and idempotent. State lives on disk under
``<data_dir>/serving/<namespace>/<deployment>/``, so a new manager (after an operator restart)
picks up where the old one left off: call :meth:`LocalServingManager.adopt_all` at start-up.

Use one manager per event loop (its per-process locks are asyncio locks).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Collection, Iterable, Mapping

import aiohttp

from .inference_log import inference_log_dir, local_path
from .mlserver import MLServerProcess, PredictorState, predictor_workdir
from .processes import pids_under, read_cmdline, stop_process
from .router_process import (
    RouterProcess,
    RouterState,
    RouterStats,
    get_router_stats,
    put_router_config,
    router_workdir,
)
from .supervisor import STATE_FILE, Phase, SupervisedProcess
from .traffic import PredictorRoute, RouterConfig
from .v2_protocol import declared_inputs

log = logging.getLogger(__name__)

ROUTER_MODULE = "mlops_operator.backends.serving_local.router"


@dataclass(frozen=True)
class AdoptedProcess:
    """One process found at start-up by :meth:`LocalServingManager.adopt_all`."""

    kind: str
    """``mlserver`` or ``router``."""
    namespace: str
    deployment: str
    name: str
    """Predictor name, or ``router``."""
    version: str | None
    phase: Phase
    pid: int | None
    orphan: bool
    """Its deployment is not among the existing ones: the caller should ``stop_deployment`` it."""
    workdir: Path


class LocalServingManager:
    """Runs MLServer processes and a router per deployment on 127.0.0.1.

    ``data_dir`` holds process state (``serving/``); ``artifact_root`` (default ``data_dir``; a
    local path or an fsspec URI such as ``s3://bucket/prefix``) is where the inference log goes
    (``<artifact_root>/inference/<namespace>/<deployment>/``).
    ``ready_timeout`` is how long calls wait for readiness when ``wait`` is not given.
    """

    def __init__(self, data_dir: str | Path, artifact_root: str | Path | None = None, *, ready_timeout: float = 60.0):
        self.data_dir = Path(data_dir).resolve()
        local = local_path(artifact_root) if artifact_root is not None else self.data_dir
        self.artifact_root: Path | str = local.resolve() if local is not None else str(artifact_root).rstrip("/")
        self.ready_timeout = ready_timeout
        self._locks: dict[Path, asyncio.Lock] = {}

    def _lock(self, workdir: Path) -> asyncio.Lock:
        return self._locks.setdefault(workdir, asyncio.Lock())

    def deployment_dir(self, namespace: str, deployment: str) -> Path:
        """Where a deployment's process state lives."""
        return self.data_dir / "serving" / namespace / deployment

    def _wait(self, wait: float | None) -> float:
        return self.ready_timeout if wait is None else wait

    # ------------------------------------------------------------ predictors

    async def ensure_predictor(
        self,
        namespace: str,
        deployment: str,
        predictor: str,
        model_dir: str | Path,
        version: str,
        *,
        wait: float | None = None,
    ) -> PredictorState:
        """Make sure an MLServer serves ``model_dir`` at ``version`` for ``predictor``; return its state.

        Reuses a live process for the same predictor, model dir and version; restarts a crashed
        one (with backoff: the state's phase is then ``CrashLoopBackOff`` and ``last_error`` says
        why). Waits up to ``wait`` seconds (default ``ready_timeout``; 0 = do not wait) for
        readiness. If the server had to move to another port, the router config is updated.
        """
        process = MLServerProcess.for_predictor(self.data_dir, namespace, deployment, predictor, Path(model_dir), version)
        async with self._lock(process.workdir):
            if process.spec_changed:
                log.info("predictor %s/%s/%s: model changed, restarting", namespace, deployment, predictor)
                await process.stop()
            previous_url = process.url if process.record.pid else None
            status = await process.ensure(wait=self._wait(wait))
            state = process.predictor_state(status)
        if previous_url and state.url != previous_url:
            await self._repoint_router(namespace, deployment, previous_url, state.url)
        return state

    async def predictor_states(self, namespace: str, deployment: str) -> list[PredictorState]:
        """Every MLServer recorded for a deployment, probed now but left alone (no restarts).

        Phase: ``Ready``/``Starting`` for a live process, ``Stopped`` when stopped on purpose,
        ``CrashLoopBackOff`` when it died and no ``ensure_predictor`` has restarted it yet.
        """
        states = []
        for process in self.predictors(namespace, deployment):
            if process.live_pid() is not None:
                phase = Phase.READY if await process.probe_ready() else Phase.STARTING
            else:
                phase = Phase.STOPPED if process.record.stopped else Phase.BACKOFF
            states.append(process.predictor_state(process.status(phase)))
        return states

    def predictors(self, namespace: str, deployment: str) -> list[MLServerProcess]:
        """MLServer processes recorded for a deployment (any phase), read from their state files.

        ``process.record.name`` is the predictor, ``process.desired_spec["version"]`` the version.
        """
        base = self.deployment_dir(namespace, deployment)
        found = []
        for state_path in sorted(base.glob(f"*/{STATE_FILE}")):
            process = MLServerProcess.from_workdir(state_path.parent)
            if process is not None:
                found.append(process)
        return found

    async def stop_predictor(
        self, namespace: str, deployment: str, predictor: str, version: str | None = None, *, remove: bool = True
    ) -> bool:
        """Stop a predictor's MLServer (one version, or every version when ``version`` is None).

        With ``remove`` its working dir (settings, state, log) is deleted once the process is gone.
        Returns True when no such process is left.
        """
        all_gone = True
        for process in self.predictors(namespace, deployment):
            if process.record.name != predictor:
                continue
            if version is not None and process.desired_spec.get("version") != version:
                continue
            async with self._lock(process.workdir):
                gone = await process.stop()
                all_gone = all_gone and gone
                if gone and remove:
                    shutil.rmtree(process.workdir, ignore_errors=True)
        return all_gone

    # ------------------------------------------------------------ router

    def _router(self, namespace: str, deployment: str) -> RouterProcess:
        log_dir = inference_log_dir(self.artifact_root, namespace, deployment)
        return RouterProcess.for_deployment(self.data_dir, namespace, deployment, log_dir)

    def resolve_config(
        self, namespace: str, deployment: str, model_name: str, predictors: Iterable[Mapping | PredictorRoute]
    ) -> RouterConfig:
        """A validated router config; a predictor given without ``url`` gets its MLServer's URL and
        model name from the process recorded for that predictor and ``version``.

        Raises ``ValueError`` (pydantic ``ValidationError``) for an invalid config and ``LookupError``
        when a predictor without ``url`` has no recorded process.
        """
        routes = []
        for entry in predictors:
            data = entry.model_dump(by_alias=True) if isinstance(entry, PredictorRoute) else dict(entry)
            if not data.get("url"):
                version = str(data.get("version", ""))
                workdir = predictor_workdir(self.data_dir, namespace, deployment, data["name"], version)
                process = MLServerProcess.from_workdir(workdir)
                if process is None or process.url is None:
                    raise LookupError(f"no model server for predictor {data['name']!r} version {version!r}")
                data["url"] = process.url
                data.setdefault("modelName", process.model_name)
                data.setdefault("inputs", declared_inputs(process.model_settings))
            routes.append(data)
        return RouterConfig.model_validate({"model": model_name, "predictors": routes})

    async def ensure_router(
        self,
        namespace: str,
        deployment: str,
        model_name: str | None = None,
        predictors: Iterable[Mapping | PredictorRoute] | None = None,
        *,
        wait: float | None = None,
    ) -> RouterState:
        """Make sure the deployment's router runs; with ``predictors`` also apply that config.

        Without ``predictors`` the router keeps (or starts with) its persisted config. Entries are
        ``{"name", "version", "weight", "shadow", "mirrorPercent", "url"?, "modelName"?}`` (see
        :meth:`resolve_config`). Waits up to ``wait`` seconds (default ``ready_timeout``).
        """
        router = self._router(namespace, deployment)
        config = None
        if predictors is not None:
            if model_name is None:
                raise ValueError("model_name is required with predictors")
            config = self.resolve_config(namespace, deployment, model_name, predictors)
        async with self._lock(router.workdir):
            router.workdir.mkdir(parents=True, exist_ok=True)
            if router.live_pid() is None and config is not None:
                router.write_config(config)  # a (re)started router loads it before listening
            elif router.persisted_config() is None and config is None:
                raise ValueError(f"router of {namespace}/{deployment} has no config yet: pass predictors")
            status = await router.ensure(wait=self._wait(wait))
            if config is not None and status.phase == Phase.READY and router.persisted_config() != config:
                await put_router_config(router.url, config)
            return router.router_state(router.status(status.phase))

    async def set_traffic(
        self,
        namespace: str,
        deployment: str,
        predictors: Iterable[Mapping | PredictorRoute],
        model_name: str | None = None,
    ) -> RouterConfig:
        """Set predictors and weights atomically (one config swap in the router); returns the config.

        ``model_name`` defaults to the router's current model. Starts the router if it is down.
        """
        router = self._router(namespace, deployment)
        if model_name is None:
            current = router.persisted_config()
            if current is None:
                raise ValueError(f"router of {namespace}/{deployment} has no config yet: pass model_name")
            model_name = current.model
        config = self.resolve_config(namespace, deployment, model_name, predictors)
        async with self._lock(router.workdir):
            if router.live_pid() is not None and await router.probe_ready():
                await put_router_config(router.url, config)
                return config
        await self.ensure_router(namespace, deployment, model_name, config.predictors)
        return config

    async def router_stats(
        self, namespace: str, deployment: str, since: float | datetime | None = None
    ) -> RouterStats:
        """Per-predictor requests, errors, error rate, p50/p99 since ``since`` (default: last traffic change).

        Raises ``aiohttp.ClientError`` when the router does not answer.
        """
        router = self._router(namespace, deployment)
        if router.url is None or router.live_pid() is None:
            raise aiohttp.ClientConnectionError(f"router of {namespace}/{deployment} is not running")
        if isinstance(since, datetime):
            since = since.timestamp()
        return await get_router_stats(router.url, since)

    async def _repoint_router(self, namespace: str, deployment: str, old_url: str, new_url: str | None) -> None:
        router = self._router(namespace, deployment)
        config = router.persisted_config()
        if config is None or new_url is None or all(p.url != old_url for p in config.predictors):
            return
        routes = [p.model_copy(update={"url": new_url}) if p.url == old_url else p for p in config.predictors]
        log.info("router %s/%s: predictor moved %s -> %s", namespace, deployment, old_url, new_url)
        await self.set_traffic(namespace, deployment, routes, config.model)

    # ------------------------------------------------------------ whole deployment

    async def stop_deployment(self, namespace: str, deployment: str, *, remove: bool = True) -> None:
        """Stop the router and every MLServer of a deployment, and check /proc that none is left.

        With ``remove`` the deployment's state dir is deleted (the inference log is kept).
        Raises ``RuntimeError`` naming the pids that survived.
        """
        base = self.deployment_dir(namespace, deployment)
        processes: list[SupervisedProcess] = []
        router = RouterProcess.from_workdir(router_workdir(self.data_dir, namespace, deployment))
        if router is not None:
            processes.append(router)  # first, so no request is routed to a stopped server
        processes.extend(self.predictors(namespace, deployment))
        for process in processes:
            async with self._lock(process.workdir):
                await process.stop()
        # Anything of ours still running with a workdir there (e.g. a lost state file).
        for pid in _our_pids_under(base):
            args = read_cmdline(pid) or []
            marker = next((a for a in args if a.startswith(str(base))), None)
            if marker:
                await stop_process(pid, marker)
        survivors = _our_pids_under(base)
        if survivors:
            raise RuntimeError(f"processes of {namespace}/{deployment} still running: {survivors}")
        if remove:
            shutil.rmtree(base, ignore_errors=True)
            for parent in (base.parent,):
                try:
                    parent.rmdir()  # the namespace dir, once empty
                except OSError:
                    pass

    async def adopt_all(self, existing: Collection[tuple[str, str]] | None = None) -> list[AdoptedProcess]:
        """Find every recorded process at start-up and re-attach to it.

        Processes of deployments in ``existing`` (``(namespace, name)`` pairs; None = all) are
        adopted: a live one is kept, a dead one restarted (without waiting). Others are reported
        as orphans, untouched, for the caller to :meth:`stop_deployment`. Deliberately stopped
        processes are reported, not restarted.
        """
        found: list[AdoptedProcess] = []
        for state_path in sorted((self.data_dir / "serving").glob(f"*/*/*/{STATE_FILE}")):
            workdir = state_path.parent
            process: SupervisedProcess | None = RouterProcess.from_workdir(workdir) or MLServerProcess.from_workdir(workdir)
            if process is None:
                continue
            r = process.record
            orphan = existing is not None and (r.namespace, r.deployment) not in existing
            if orphan or r.stopped:
                phase = Phase.STOPPED if process.live_pid() is None else (
                    Phase.READY if await process.probe_ready() else Phase.STARTING)
            else:
                async with self._lock(workdir):
                    phase = (await process.adopt(wait=0)).phase
            found.append(AdoptedProcess(
                kind=r.kind, namespace=r.namespace, deployment=r.deployment, name=r.name,
                version=r.spec.get("version"), phase=phase, pid=process.live_pid(), orphan=orphan,
                workdir=workdir))
        return found


def _our_pids_under(directory: Path) -> list[int]:
    """Our servers (MLServer or router) whose workdir is inside ``directory``."""
    ours = []
    for pid in pids_under(directory):
        args = read_cmdline(pid) or []
        is_router = ROUTER_MODULE in args
        is_mlserver = "start" in args and any(Path(a).name == "mlserver" or a == "mlserver.cli.main" for a in args)
        if is_router or is_mlserver:
            ours.append(pid)
    return ours
