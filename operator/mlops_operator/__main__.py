"""``python -m mlops_operator`` / ``mlops-operator``: run the operator against the current kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mlops_operator import __version__

T = TypeVar("T")

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)
        if k8s:
            entry["object"] = {key: k8s.get(key) for key in ("kind", "namespace", "name")}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


# kopf's handlers that only watch (keep a view, wake an object): their "Handler '...' succeeded." comes
# with every watch event of every object, so it is a debug line here.
WATCH_ONLY_HANDLERS = ("requests", "seldon_deployment_changed", "training_changed")
_WATCH_ONLY_SUCCESS = re.compile(rf"Handler '({'|'.join(WATCH_ONLY_HANDLERS)})' succeeded\.")


class ObjectFilter(logging.Filter):
    """Names the object a line is about (kopf's per-object lines carry it as ``k8s_ref``) in
    ``record.object`` for the text format, and turns the success lines of watch-only handlers into debug
    lines (dropped unless the level is DEBUG)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        k8s = getattr(record, "k8s_ref", None)
        record.object = f"{k8s.get('kind')} {k8s.get('namespace')}/{k8s.get('name')}: " if k8s else ""
        if record.levelno == logging.INFO and k8s and _WATCH_ONLY_SUCCESS.fullmatch(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.level


def configure_logging(log_format: str, level: str) -> None:
    """Root logging for the process; kopf's own loggers propagate to it. Every line about an object names
    it (text: ``<Kind> <namespace>/<name>:`` before the message; json: ``object``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ObjectFilter(logging.getLevelName(level)))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(object)s%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "aiohttp.access", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlops-operator",
        description="Run the mlops-operator (ModelTraining, ModelDeployment, DriftMonitor) against the "
        "current kubeconfig. Settings come from MLOPS_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)

    from mlops_operator import handlers  # noqa: F401  (registers the handlers)
    from mlops_operator.handlers.common import get_settings

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.leader_election:
        code = asyncio.run(_with_io_threads(settings, _run_elected(settings)))
    else:
        asyncio.run(_with_io_threads(settings, _run_kopf(settings)))
        code = 0
    _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Exit once the operator has stopped cleanly (kopf's cleanup ran, the Lease was released, the loop and
    its executor are closed) without the interpreter's teardown of every loaded module: that takes 0.5-2 s
    of a pod's termination grace (and of every test's operator) and has nothing left to release. Logs and
    standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _with_io_threads(settings: Any, run: Coroutine[Any, Any, T]) -> T:
    """``run`` with settings.io_threads threads for the loop's blocking calls (asyncio.to_thread), instead of
    Python's default of CPUs + 4 (6 on 2 cores: a burst of reconciliations then waits on the API server six
    calls at a time)."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=settings.io_threads, thread_name_prefix="io"))
    return await run


async def _run_kopf(settings: Any, ready: asyncio.Event | None = None) -> None:
    """kopf, standalone: with leader election only the Lease holder gets here, so no peering is needed.
    ``ready`` is set once its start-up activities (the Seldon logger sink among them) have run."""
    import kopf

    liveness = f"http://{settings.metrics_host}:{settings.health_port}/healthz" if settings.health_port else None
    await kopf.operator(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
        ready_flag=ready,
    )


def _own_namespace() -> str:
    """The pod's namespace (from its service account), else ``default``."""
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
    except OSError:
        return "default"


async def _standby_health(settings: Any) -> Any:
    """A standby's health endpoint: alive and ready (a rolling update waits for the new pod to be ready
    before it stops the old one, which then hands the Lease over). Traffic meant for the leader (the
    Seldon request-logger sink) reaches it through the leader label, not through readiness."""
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="standby: another replica leads")

    app = web.Application()
    app.add_routes([web.get("/healthz", health)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.health_port, reuse_address=True).start()
    return runner


async def _run_elected(settings: Any) -> int:
    """Wait on standby for the Lease, run kopf while holding it, release it at a clean stop.

    A leader that cannot renew exits at once (status 1) instead of finishing its handlers: by then a
    standby may lead, and two replicas must never act on the same object. Its pod restarts on standby.
    """
    from mlops_operator import metrics
    from mlops_operator.backends import kube, leader

    kube.load_config(connections=settings.io_threads)
    namespace = settings.leader_election_namespace or _own_namespace()
    identity = f"{socket.gethostname()}-{os.getpid()}"
    elector = leader.LeaseElector(namespace, settings.leader_election_lease_name, identity, leader.ElectionTiming(
        lease_duration=settings.leader_election_lease_seconds,
        renew_deadline=settings.leader_election_renew_deadline_seconds,
        retry_period=settings.leader_election_retry_seconds))
    metrics.serve(settings.metrics_host, settings.metrics_port)
    metrics.LEADER.set(0)
    loop = asyncio.get_running_loop()
    acquiring = asyncio.current_task()
    assert acquiring is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, acquiring.cancel)
    pod = leader.OwnPod(namespace, settings.pod_name)
    await pod.mark_leader(False)  # a restarted leader's pod keeps its labels: it is a standby now
    standby = await _standby_health(settings) if settings.health_port else None
    try:
        await elector.acquire()
    except asyncio.CancelledError:
        logging.getLogger("mlops_operator").info("stopped on standby")
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if standby is not None:
            await standby.cleanup()
    metrics.LEADER.set(1)
    started = asyncio.Event()
    operator = asyncio.create_task(_run_kopf(settings, started), name="kopf")
    keeper = asyncio.create_task(elector.keep(), name="lease keeper")
    ready = asyncio.create_task(started.wait(), name="kopf ready")
    await asyncio.wait({operator, keeper, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        await pod.mark_leader(True)  # only now does the leader's traffic (the Seldon logger sink) come here
    else:
        ready.cancel()
    await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)
    if keeper.done():
        error = keeper.exception()
        logging.getLogger("mlops_operator").error("stopping at once: %s", error)
        logging.shutdown()
        os._exit(1)
    keeper.cancel()
    await pod.mark_leader(False)
    await elector.release()
    metrics.LEADER.set(0)
    operator.result()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
