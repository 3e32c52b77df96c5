"""Serving telemetry for anomaly detection: points from the local router's statistics or Prometheus
(the same two sources the rollout analysis reads), and one bounded detector per ModelDeployment.

Every ``interval`` seconds a point is read per served version (error rate of 5xx, latency p50/p99,
requests) and one for the whole deployment (request rate: per-version rates move with canary
weights, the deployment's does not). Model server restarts seen between points are kept for the
root-cause hints. State lives in this process only: after an operator restart the detector warms
up again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from mlops_operator.api.modeldeployment import ModelDeploymentStatus
from mlops_operator.backends import prometheus
from mlops_operator.reconcile.anomaly import Anomaly, Detector, DetectorSettings, Point, Update
from mlops_operator.reconcile import rootcause
from mlops_operator.reconcile.conditions import parse_rfc3339
from mlops_operator.reconcile.rightsizing import UsageSample
from mlops_operator.reconcile.rootcause import Errors, FeatureDrift, Restart

log = logging.getLogger("mlops_operator.telemetry")

MAX_RESTARTS = 20
MAX_CLOSED = 10
MAX_USAGE = 720  # six hours of points at the default 30 s
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Watch:
    """What is known about one deployment's serving telemetry."""

    detector: Detector
    last_point: float | None = None
    requests_per_second: float | None = None
    errors: Errors | None = None
    restarts: deque[Restart] = field(default_factory=lambda: deque(maxlen=MAX_RESTARTS))
    restart_counts: dict[str, int] = field(default_factory=dict)
    closed: deque[Anomaly] = field(default_factory=lambda: deque(maxlen=MAX_CLOSED))
    unreachable: dict[str, str] = field(default_factory=dict)
    usage: dict[str, deque[UsageSample]] = field(default_factory=dict)
    """version -> CPU and memory samples of its model server (backend local)."""
    cpu_ticks: dict[int, tuple[float, float]] = field(default_factory=dict)
    """pid -> (CPU ticks, when) at the previous sample."""


def _proc_usage(pid: int) -> tuple[float, float] | None:
    """(CPU ticks used so far, resident bytes) of a process, from /proc."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = float(fields[11]) + float(fields[12])  # utime, stime
        rss = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
        return ticks, float(rss)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def sample_usage(current: Watch, processes: Sequence[tuple[str, int | None]], now: float) -> None:
    """Sample CPU (cores, since the previous sample) and memory of local model servers ((version, pid) pairs)."""
    for version, pid in processes:
        found = _proc_usage(pid) if pid else None
        if found is None:
            continue
        ticks, rss = found
        previous = current.cpu_ticks.get(pid)
        current.cpu_ticks[pid] = (ticks, now)
        cores = (ticks - previous[0]) / CLOCK_TICKS / (now - previous[1]) if previous and now > previous[1] else None
        current.usage.setdefault(version, deque(maxlen=MAX_USAGE)).append(UsageSample(now, cores, rss))
    alive = {pid for _, pid in processes if pid}
    for pid in [p for p in current.cpu_ticks if p not in alive]:
        del current.cpu_ticks[pid]


@dataclass(frozen=True)
class Observed:
    """What one observation found."""

    opened: list[Anomaly]
    closed: list[Anomaly]
    polled: bool


_watches: dict[tuple[str, str], Watch] = {}


def watch(namespace: str, name: str, settings: DetectorSettings) -> Watch:
    """The deployment's watch (a new detector when its settings changed)."""
    found = _watches.get((namespace, name))
    if found is None or found.detector.settings != settings:
        found = _watches[(namespace, name)] = Watch(Detector(settings))
    return found


_drift: dict[tuple[str, str], deque[FeatureDrift]] = {}
MAX_DRIFT = 50


def note_drift(namespace: str, deployment: str, drifted: Sequence[FeatureDrift]) -> None:
    """Features a DriftMonitor found drifted on a deployment's inputs (facts for its root-cause hints)."""
    if drifted:
        _drift.setdefault((namespace, deployment), deque(maxlen=MAX_DRIFT)).extend(drifted)


def recent_drift(namespace: str, deployment: str) -> list[FeatureDrift]:
    return list(_drift.get((namespace, deployment), ()))


def facts(status: ModelDeploymentStatus, watch: Watch | None, drift: Sequence[FeatureDrift] = ()) -> rootcause.Facts:
    """What the operator knows around an incident of a deployment: version changes (from its status),
    drifted inputs, and the telemetry (traffic, errors, restarts, unreachable backends) when anomaly
    detection watches it."""
    changes = []
    record = status.last_rollout
    if record is not None and record.finished and record.result in ("promoted", "rolledback"):
        changes.append(rootcause.VersionChange(parse_rfc3339(record.finished).timestamp(),
                                               status.stable_version or record.version,
                                               status.previous_stable_version, record.result))
    rollout = status.rollout
    if rollout is not None and rollout.step_started and status.candidate_version:
        changes.append(rootcause.VersionChange(parse_rfc3339(rollout.step_started).timestamp(),
                                               status.candidate_version, status.stable_version,
                                               rollout.phase.lower()))
    if watch is None:
        return rootcause.Facts(version_changes=changes, drift=list(drift))
    traffic = None
    series = watch.detector.series.get((None, "requestRate"))
    band = series.band(time.time()) if series else None
    if band is not None and watch.requests_per_second is not None:
        traffic = rootcause.Traffic(band.expected, watch.requests_per_second)
    return rootcause.Facts(version_changes=changes, drift=list(drift), traffic=traffic, errors=watch.errors,
                           restarts=list(watch.restarts), unreachable=dict(watch.unreachable))


def peek(namespace: str, name: str) -> Watch | None:
    """The deployment's watch if its telemetry is watched (None: anomaly detection never ran for it)."""
    return _watches.get((namespace, name))


def forget(namespace: str, name: str) -> None:
    """Drop a deleted deployment's state."""
    _watches.pop((namespace, name), None)
    _drift.pop((namespace, name), None)


def note_restarts(current: Watch, servers: Mapping[str, tuple[int, str | None]], now: float) -> None:
    """Record restarts of model servers (version -> (restart count, last error)) since the last look."""
    for version, (restarts, last_error) in servers.items():
        before = current.restart_counts.get(version)
        if before is not None and restarts > before:
            current.restarts.append(Restart(now, version, last_error or "exited"))
        current.restart_counts[version] = restarts


async def _router_points(manager, namespace: str, name: str, versions: Mapping[str, str], since: float, now: float
                         ) -> tuple[list[Point], Errors]:
    stats = await manager.router_stats(namespace, name, since)
    elapsed = max(now - since, 1e-3)
    points, total, client, server = [], 0, 0, 0
    for predictor, window in stats.predictors.items():
        version = versions.get(predictor)
        if version is None:
            continue
        total, client, server = total + window.requests, client + window.client_errors, server + window.errors
        judged = window.requests - window.client_errors
        values = {"errorRate": window.error_rate if judged else None, "latencyP50Ms": window.p50_ms,
                  "latencyP99Ms": window.p99_ms}
        if predictor != "shadow":
            points.append(Point(now, version, values, samples=judged))
    points.append(Point(now, None, {"requestRate": total / elapsed}, samples=total))
    return points, Errors(total, client, server)


Queries = Callable[[str, str, str, float], dict[str, str]]
"""(namespace, deployment, predictor, window seconds) -> the serving backend's PromQL (ServingBackend.prometheus_queries)."""


async def _prometheus_points(url: str, queries: Queries, namespace: str, name: str, versions: Mapping[str, str],
                             since: float, now: float) -> tuple[list[Point], Errors]:
    elapsed = max(now - since, 1.0)
    points, total, server = [], 0, 0
    for predictor, version in versions.items():
        stats = await prometheus.candidate_stats(url, queries(namespace, name, predictor, elapsed))
        total, server = total + stats.requests, server + stats.errors
        if predictor != "shadow":
            points.append(Point(now, version, {"errorRate": stats.error_rate, "latencyP99Ms": stats.p99_ms},
                                samples=stats.requests))
    points.append(Point(now, None, {"requestRate": total / elapsed}, samples=total))
    return points, Errors(total, 0, server)


async def observe(current: Watch, *, interval: float, traffic: Sequence[Mapping], namespace: str, name: str,
                  queries: Queries, manager=None, prometheus_url: str | None = None, now: float | None = None
                  ) -> Observed:
    """Read a point when ``interval`` has passed since the last one, and judge it."""
    now = time.time() if now is None else now
    if current.last_point is None:
        current.last_point = now  # the first window starts now
        return Observed([], [], False)
    if now - current.last_point < interval:
        return Observed([], [], False)
    versions = {t["predictor"]: t["version"] for t in traffic}
    since = current.last_point
    try:
        if prometheus_url:
            points, errors = await _prometheus_points(prometheus_url, queries, namespace, name, versions, since, now)
            current.unreachable.pop("Prometheus", None)
        elif manager is not None:
            points, errors = await _router_points(manager, namespace, name, versions, since, now)
        else:
            return Observed([], [], False)
    except prometheus.PrometheusUnavailable as error:
        current.unreachable["Prometheus"] = str(error)[:300]
        return Observed([], [], False)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        log.info("%s/%s: no telemetry this time (the router does not answer: %s)", namespace, name, error)
        return Observed([], [], False)
    current.last_point = now
    if manager is not None:
        sample_usage(current, [(p.desired_spec.get("version"), p.record.pid) for p in manager.predictors(namespace, name)],
                     now)
    current.errors = errors
    current.requests_per_second = points[-1].values["requestRate"]
    updates: list[Update] = []
    for point in points:
        updates += current.detector.observe(point)
    closed = [u.closed for u in updates if u.closed]
    closed += current.detector.forget_versions(set(versions.values()) | {None}, now)
    for version in [v for v in current.usage if v not in versions.values()]:
        del current.usage[version]
    current.closed.extend(closed)
    return Observed([u.opened for u in updates if u.opened], closed, True)
