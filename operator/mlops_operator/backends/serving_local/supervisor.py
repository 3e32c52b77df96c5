"""Keep one detached loopback server alive: start, adopt after an operator restart, restart with backoff.

A supervised process owns a working directory holding ``state.json`` (pid, ports, restart
bookkeeping), ``pid`` and its log. Nothing runs in the background: callers poll
:meth:`SupervisedProcess.ensure`, which looks at the process and acts once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import aiohttp

from .processes import (
    exit_status,
    free_port,
    last_error_line,
    log_tail,
    port_is_free,
    read_json,
    spawn_detached,
    stop_process,
    verified_pid,
    write_json_atomic,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
PID_FILE = "pid"


class Phase(str, enum.Enum):
    """What a supervised process is doing, as a condition reason would say it."""

    STARTING = "Starting"
    READY = "Ready"
    BACKOFF = "CrashLoopBackOff"
    STOPPED = "Stopped"


@dataclass
class Backoff:
    """Restart delays after consecutive failures: ``base * 2**(n-1)`` capped, reset after a healthy run."""

    base: float = 1.0
    cap: float = 60.0
    reset_after: float = 60.0
    """A process ready this long before it failed starts its count again."""

    def delay(self, consecutive_failures: int) -> float:
        """Seconds to wait before the next start after ``consecutive_failures`` failures."""
        if consecutive_failures <= 0:
            return 0.0
        return min(self.base * 2 ** (consecutive_failures - 1), self.cap)


@dataclass
class ProcessRecord:
    """What ``state.json`` holds; enough to find, check and restart the process."""

    kind: str
    namespace: str
    deployment: str
    name: str
    workdir: str
    pid: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    started_at: float | None = None
    ready_since: float | None = None
    restarts: int = 0
    consecutive_failures: int = 0
    next_start_at: float = 0.0
    last_error: str | None = None
    log_offset: int = 0
    stopped: bool = False
    spec: dict = field(default_factory=dict)
    """Kind-specific inputs (model dir, version, …); a change means restart."""

    @classmethod
    def from_json(cls, data: dict) -> "ProcessRecord":
        """Inverse of ``asdict``; unknown keys (from newer versions) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ProcessStatus:
    """A snapshot for callers: phase, pid, ports and the restart history a condition reports."""

    phase: Phase
    pid: int | None
    ports: dict[str, int]
    restarts: int
    last_error: str | None
    next_start_at: float | None
    workdir: Path


class SupervisedProcess:
    """Base class: subclasses say how to prepare the workdir, what to run and how to probe readiness."""

    kind = "process"
    port_names: Sequence[str] = ("http",)
    startup_timeout = 120.0
    stop_grace = 10.0
    backoff = Backoff()
    log_name = "server.log"

    def __init__(self, workdir: Path, record: ProcessRecord):
        self.workdir = workdir
        self.record = record

    # ------------------------------------------------------------ subclass hooks

    def prepare(self) -> None:
        """Write whatever the process reads at start (settings, config) for ``self.record.ports``."""

    def command(self) -> list[str]:
        """Argument vector; must contain ``str(self.workdir)`` verbatim (it identifies the process)."""
        raise NotImplementedError

    def env(self) -> dict | None:
        """Environment of the process (None: inherit)."""
        return None

    def readiness_urls(self) -> list[str]:
        """URLs that must all answer 200 for the process to be ready."""
        raise NotImplementedError

    # ------------------------------------------------------------ state

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.workdir / self.log_name

    @classmethod
    def load_record(cls, workdir: Path) -> ProcessRecord | None:
        """The record saved in ``workdir``, if any."""
        data = read_json(workdir / STATE_FILE)
        return ProcessRecord.from_json(data) if data else None

    def save(self) -> None:
        """Persist the record (atomically) and the pid file."""
        write_json_atomic(self.state_path, asdict(self.record))
        pid_path = self.workdir / PID_FILE
        if self.record.pid:
            pid_path.write_text(f"{self.record.pid}\n")
        elif pid_path.exists():
            pid_path.unlink()

    def live_pid(self) -> int | None:
        """The recorded pid if that process is alive and is ours (checked via /proc cmdline)."""
        return verified_pid(self.record.pid, str(self.workdir))

    def status(self, phase: Phase) -> ProcessStatus:
        """Snapshot of the record with ``phase``."""
        r = self.record
        return ProcessStatus(
            phase=phase,
            pid=self.live_pid(),
            ports=dict(r.ports),
            restarts=r.restarts,
            last_error=r.last_error,
            next_start_at=r.next_start_at if phase == Phase.BACKOFF else None,
            workdir=self.workdir,
        )

    # ------------------------------------------------------------ probing

    async def probe_ready(self, timeout: float = 2.0) -> bool:
        """True when every readiness URL answers 200 now."""
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            async with aiohttp.ClientSession(timeout=client_timeout) as session:
                for url in self.readiness_urls():
                    async with session.get(url) as response:
                        if response.status != 200:
                            return False
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
        return True

    # ------------------------------------------------------------ actions

    def _this_run_log(self) -> str:
        text = log_tail(self.log_path, max_bytes=64_000)
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Only what this run wrote (the log is appended across restarts).
        keep = max(0, size - self.record.log_offset)
        return text[-keep:] if keep else ""

    def _choose_ports(self, fresh: bool) -> None:
        ports: dict[str, int] = {}
        for name in self.port_names:
            previous = self.record.ports.get(name)
            # Keep the previous port when it is free so URLs held by the router or status stay valid.
            if not fresh and previous and previous not in ports.values() and port_is_free(previous):
                ports[name] = previous
            else:
                ports[name] = free_port(exclude=set(ports.values()))
        self.record.ports = ports

    def _spawn(self, fresh_ports: bool) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._choose_ports(fresh_ports)
        self.prepare()
        self.record.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.record.pid = spawn_detached(self.command(), cwd=self.workdir, log_path=self.log_path, env=self.env())
        self.record.started_at = time.time()
        self.record.ready_since = None
        self.record.stopped = False
        self.save()
        log.info("%s %s/%s/%s started: pid %s ports %s", self.kind, self.record.namespace,
                 self.record.deployment, self.record.name, self.record.pid, self.record.ports)

    def _record_failure(self, reason: str | None) -> bool:
        """Book a crash; returns True when it was a port clash (retry at once on new ports)."""
        r = self.record
        text = self._this_run_log()
        code = exit_status(r.pid) if r.pid else None
        port_clash = "address already in use" in text.lower()
        detail = reason or last_error_line(text) or "exited"
        if code is not None:
            detail = f"exit code {code}: {detail}"
        r.last_error = detail[-500:]
        r.pid = None
        if port_clash:
            return True
        healthy_for = (time.time() - r.ready_since) if r.ready_since else 0.0
        if healthy_for >= self.backoff.reset_after:
            r.consecutive_failures = 0
        r.consecutive_failures += 1
        r.next_start_at = time.time() + self.backoff.delay(r.consecutive_failures)
        return False

    async def ensure(self, wait: float = 0.0) -> ProcessStatus:
        """Look once and act: adopt if alive, (re)start if dead and not backing off.

        With ``wait`` > 0 also wait up to that many seconds for readiness, sitting out a short
        backoff and retrying port clashes. Never raises for a crashing server: the phase and
        ``last_error`` say what is wrong.
        """
        deadline = time.monotonic() + wait
        port_clashes = 0
        while True:
            r = self.record
            now = time.time()
            if self.live_pid() is not None:
                if await self.probe_ready():
                    if r.ready_since is None:
                        r.ready_since = now  # last_error stays: it tells why the last restart happened
                        self.save()
                    return self.status(Phase.READY)
                if r.started_at and now - r.started_at > self.startup_timeout:
                    await stop_process(r.pid, str(self.workdir), grace=self.stop_grace)
                    self._record_failure(f"not ready {self.startup_timeout:.0f}s after start")
                    self.save()
                    continue
                if time.monotonic() >= deadline:
                    return self.status(Phase.STARTING)
                await asyncio.sleep(0.1)
                continue

            fresh_ports = False
            if r.pid is not None and not r.stopped:
                # It was running and is gone: a crash (or someone killed it).
                fresh_ports = self._record_failure(None)
                if fresh_ports:
                    port_clashes += 1
                    if port_clashes > 5:
                        fresh_ports = False
                self.save()
            if not fresh_ports and now < r.next_start_at:
                wait_left = deadline - time.monotonic()
                if wait_left <= 0 or r.next_start_at - now > wait_left:
                    return self.status(Phase.BACKOFF)
                await asyncio.sleep(r.next_start_at - now)
            # A start that lost its port to another process never served: not a restart (restarts
            # feed the crash-loop limit and the anomaly root causes).
            if r.started_at is not None and not r.stopped and not fresh_ports:
                r.restarts += 1
            self._spawn(fresh_ports)
            if time.monotonic() >= deadline:
                return self.status(Phase.STARTING)

    async def adopt(self, wait: float = 0.0) -> ProcessStatus:
        """After an operator restart: keep the live process, restart a dead one (same as ensure)."""
        return await self.ensure(wait=wait)

    async def stop(self) -> bool:
        """Stop the process (SIGTERM, then SIGKILL) and mark it stopped; True once it is gone."""
        gone = await stop_process(self.record.pid, str(self.workdir), grace=self.stop_grace)
        if gone:
            self.record.pid = None
            self.record.stopped = True
            self.record.ready_since = None
            self.save()
        return gone
