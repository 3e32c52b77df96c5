"""Leader election on a ``coordination.k8s.io/v1`` Lease, for running several operator replicas.

One replica leads (runs kopf); the others wait on standby and take over when the leader releases the
Lease (a clean stop) or stops renewing it (a crash, a lost node). The decision is
:mod:`mlops_operator.reconcile.leadership`; this module reads and writes the Lease. Every write sends
the resourceVersion it read, so two candidates can never both win a takeover.

The kubernetes client is synchronous: every call runs in a thread. Times are written in the
MicroTime format the API server requires (``2026-01-02T03:04:05.000000Z``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlops_operator.backends import kube
from mlops_operator.reconcile.leadership import Action, LeaseRecord, Observation, decide, observe

T = TypeVar("T")

log = logging.getLogger("mlops_operator.leader")


def _why(error: BaseException) -> Any:
    """An API error's reason (never its response body and headers), else the error itself."""
    return getattr(error, "reason", None) or error


class LeadershipLost(Exception):
    """The Lease could not be renewed before the renew deadline: another replica may lead now."""


@dataclass(frozen=True)
class ElectionTiming:
    """client-go's defaults: a 15 s lease, renewed every 2 s, given up after 10 s without a renewal."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    renew = spec.renew_time
    return LeaseRecord(
        holder=spec.holder_identity or None,
        renew_time=_micro_time(renew) if isinstance(renew, datetime) else renew,
        lease_duration_seconds=spec.lease_duration_seconds,
        transitions=spec.lease_transitions or 0,
    )


class LeaseElector:
    """Acquire, keep and release one Lease as ``identity``."""

    def __init__(self, namespace: str, name: str, identity: str, timing: ElectionTiming = ElectionTiming()):
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._observed: Observation | None = None
        self._acquired_at: str | None = None
        self._last_renewal = 0.0
        # Its own thread: a renewal never queues behind the reconcilers' blocking calls in the default
        # executor (a few threads on a small node), which once cost a busy leader its Lease.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _api(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(kube.api_client())

    def _read(self) -> Any | None:
        try:
            return self._api().read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _body(self, spec: dict[str, Any], resource_version: str | None = None) -> dict[str, Any]:
        """The Lease object; with ``resource_version`` a write that fails (409) if anyone wrote since that read."""
        metadata = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _spec(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": _micro_time(datetime.now(UTC)),
            "leaseTransitions": transitions,
        }

    def _try_once(self) -> bool:
        """One look and at most one write; True when we hold the Lease afterwards."""
        lease = self._read()
        now = time.monotonic()
        record = _record(lease) if lease is not None else None
        if record is not None:
            self._observed = observe(self._observed, record, now)
        action = decide(record, self._observed, self.identity, now, self.timing.lease_duration)
        if action is Action.WAIT:
            return False
        stamp = _micro_time(datetime.now(UTC))
        try:
            if action is Action.CREATE:
                self._api().create_namespaced_lease(self.namespace, self._body(self._spec(stamp, 0)))
            else:
                assert record is not None and lease is not None
                if action is Action.RENEW:
                    acquire = self._acquired_at or _micro_time(lease.spec.acquire_time or datetime.now(UTC))
                    transitions = record.transitions
                else:
                    acquire, transitions = stamp, record.transitions + 1
                body = self._body(self._spec(acquire, transitions), lease.metadata.resource_version)
                self._api().replace_namespaced_lease(self.name, self.namespace, body)
                if action is Action.TAKE:
                    log.info("lease %s/%s taken over from %s (transition %d)", self.namespace, self.name,
                             record.holder or "<released>", transitions)
                stamp = acquire
        except ApiException as error:
            if error.status in (409, 422):  # another candidate wrote first (conflict / already exists)
                return False
            raise
        self._acquired_at = stamp
        self._last_renewal = time.monotonic()
        return True

    async def acquire(self) -> None:
        """Wait on standby until this replica holds the Lease (logs the holder when it changes)."""
        holder: str | None = ""
        while True:
            try:
                if await self._call(self._try_once):
                    log.info("leading: lease %s/%s held by %s", self.namespace, self.name, self.identity)
                    return
                current = self._observed.record.holder if self._observed else None
                if current != holder:
                    holder = current
                    log.info("standby: lease %s/%s held by %s", self.namespace, self.name, holder)
            except (ApiException, OSError) as error:  # the API server is down: keep trying, quietly
                log.warning("standby: cannot read lease %s/%s: %s", self.namespace, self.name,
                            _why(error))
            await asyncio.sleep(self.timing.retry_period)

    async def keep(self) -> None:
        """Renew every retry period; raise :class:`LeadershipLost` after the renew deadline without one."""
        while True:
            await asyncio.sleep(self.timing.retry_period)
            try:
                renewed = await self._call(self._try_once)
            except (ApiException, OSError) as error:
                log.warning("cannot renew lease %s/%s: %s", self.namespace, self.name,
                            _why(error))
                renewed = False
            if renewed:
                continue
            holder = self._observed.record.holder if self._observed else None
            if holder and holder != self.identity:
                raise LeadershipLost(f"lease {self.namespace}/{self.name} is held by {holder} now")
            if time.monotonic() - self._last_renewal > self.timing.renew_deadline:
                raise LeadershipLost(f"lease {self.namespace}/{self.name} not renewed for "
                                     f"{self.timing.renew_deadline:.0f}s")

    async def release(self) -> None:
        """Give the Lease up at a clean stop so a standby takes over at once (not after the lease expires)."""
        def call() -> None:
            lease = self._read()
            if lease is None or lease.spec.holder_identity != self.identity:
                return
            spec = {"holderIdentity": None, "leaseDurationSeconds": 1, "acquireTime": None,
                    "renewTime": _micro_time(datetime.now(UTC)), "leaseTransitions": lease.spec.lease_transitions or 0}
            self._api().replace_namespaced_lease(self.name, self.namespace,
                                                 self._body(spec, lease.metadata.resource_version))

        try:
            await self._call(call)
            log.info("lease %s/%s released", self.namespace, self.name)
        except (ApiException, OSError) as error:
            log.warning("cannot release lease %s/%s (it expires by itself): %s", self.namespace, self.name,
                        _why(error))


LEADER_LABEL = "mlops.dev/leader"
"""On the leader's own Pod ("true"): the Services for the leader's traffic (the Seldon request-logger
sink) select it, so a standby, ready as it is, gets none of that traffic."""

@dataclass(frozen=True)
class OwnPod:
    """The Pod this replica runs in (the setting ``pod_name``, from the downward API), or none outside a cluster."""

    namespace: str
    name: str | None

    async def mark_leader(self, leading: bool) -> None:
        """Set or remove the leader label on this Pod; a failure is logged (the sink then waits for it)."""
        if not self.name:
            return
        body = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None}}}
        try:
            await asyncio.to_thread(client.CoreV1Api(kube.api_client()).patch_namespaced_pod, self.name,
                                    self.namespace, body)
        except (ApiException, OSError) as error:
            log.warning("cannot %s the label %s on pod %s/%s: %s", "set" if leading else "remove", LEADER_LABEL,
                        self.namespace, self.name, _why(error))
