"""Supervision of a deployment's router process and the client side of its admin API."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .processes import LOOPBACK, read_json
from .router import CONFIG_FILE, write_persisted_config
from .supervisor import Phase, ProcessRecord, ProcessStatus, SupervisedProcess
from .traffic import RouterConfig, WindowStats


def router_workdir(data_dir: Path, namespace: str, deployment: str) -> Path:
    """Working dir of a deployment's router (``config.json``, ``state.json``, ``pid``, ``router.log``)."""
    return Path(data_dir) / "serving" / namespace / deployment / "router"


@dataclass(frozen=True)
class RouterState:
    """A deployment's router as the caller sees it."""

    namespace: str
    deployment: str
    phase: Phase
    endpoint_url: str | None
    """Base URL clients call: ``<endpoint_url>/v2/models/<model>/infer``."""
    pid: int | None
    port: int | None
    restarts: int
    last_error: str | None
    config: RouterConfig | None
    workdir: Path

    @property
    def ready(self) -> bool:
        return self.phase == Phase.READY


@dataclass(frozen=True)
class RouterStats:
    """``GET /_mlops/stats``: per-predictor window stats since ``since`` (unix seconds)."""

    since: float
    until: float
    complete: bool
    """False when the router's bounded window had already dropped samples after ``since``."""
    generation: int
    configured_at: float | None
    predictors: dict[str, WindowStats]


class RouterProcess(SupervisedProcess):
    """Supervises ``python -m mlops_operator.backends.serving_local.router`` for one deployment."""

    kind = "router"
    port_names = ("http",)
    startup_timeout = 30.0
    log_name = "router.log"

    @classmethod
    def for_deployment(cls, data_dir: Path, namespace: str, deployment: str, inference_log_dir: str) -> "RouterProcess":
        """The router object of a deployment, loading its saved record if any."""
        workdir = router_workdir(data_dir, namespace, deployment)
        record = cls.load_record(workdir) or ProcessRecord(
            kind=cls.kind, namespace=namespace, deployment=deployment, name="router", workdir=str(workdir))
        record.spec = {"inferenceLogDir": str(inference_log_dir)}
        return cls(workdir, record)

    @classmethod
    def from_workdir(cls, workdir: Path) -> "RouterProcess | None":
        """The router saved in ``workdir`` (for adoption)."""
        record = cls.load_record(workdir)
        if record is None or record.kind != cls.kind:
            return None
        return cls(workdir, record)

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "mlops_operator.backends.serving_local.router",
                "--workdir", str(self.workdir), "--port", str(self.record.ports["http"]),
                "--namespace", self.record.namespace, "--deployment", self.record.deployment]
        if self.record.spec.get("inferenceLogDir"):
            args += ["--inference-log-dir", self.record.spec["inferenceLogDir"]]
        return args

    @property
    def url(self) -> str | None:
        port = self.record.ports.get("http")
        return f"http://{LOOPBACK}:{port}" if port else None

    def readiness_urls(self) -> list[str]:
        # Process readiness only; whether the backends are ready is /v2/health/ready's business.
        return [f"{self.url}/v2/health/live"]

    def persisted_config(self) -> RouterConfig | None:
        """The config the router starts with (``config.json``)."""
        saved = read_json(self.workdir / CONFIG_FILE)
        if not saved or "config" not in saved:
            return None
        return RouterConfig.model_validate(saved["config"])

    def write_config(self, config: RouterConfig) -> None:
        """Set the config a (re)started router will load."""
        saved = read_json(self.workdir / CONFIG_FILE) or {}
        write_persisted_config(self.workdir, config, int(saved.get("generation", 0)) + 1, time.time())

    def router_state(self, status: ProcessStatus) -> RouterState:
        """Caller-facing view of a status snapshot."""
        return RouterState(
            namespace=self.record.namespace,
            deployment=self.record.deployment,
            phase=status.phase,
            endpoint_url=self.url,
            pid=status.pid,
            port=self.record.ports.get("http"),
            restarts=status.restarts,
            last_error=status.last_error,
            config=self.persisted_config(),
            workdir=self.workdir,
        )


async def put_router_config(url: str, config: RouterConfig, timeout: float = 5.0) -> dict:
    """``PUT /_mlops/config``; raises ``aiohttp.ClientResponseError`` when the router refuses it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.put(f"{url}/_mlops/config", json=config.to_json_dict()) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                  message=str(body))
            return body


async def get_router_stats(url: str, since: float | None = None, timeout: float = 5.0) -> RouterStats:
    """``GET /_mlops/stats?since=``."""
    params = {"since": repr(float(since))} if since is not None else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(f"{url}/_mlops/stats", params=params) as resp:
            resp.raise_for_status()
            data = await resp.json()
    return RouterStats(
        since=data["since"],
        until=data["until"],
        complete=data["complete"],
        generation=data["generation"],
        configured_at=data.get("configuredAt"),
        predictors={name: WindowStats.from_json_dict(s) for name, s in data["predictors"].items()},
    )
