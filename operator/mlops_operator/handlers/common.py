"""What the kind handlers share: settings, the per-object reconcile frame, spec parsing, status.

Every kind is reconciled by one function ``(live object) -> desired status`` that is called from
kopf's change handlers (create, update, resume) and from one operator-wide schedule that observes the
world (runs, model servers, rollouts, drift) only while something is in progress: after each
reconciliation the kind's ``requeue`` decision says when to look again (``None``: not until something
changes), and watch events wake an object with :func:`wake`: a request annotation set on it (approve,
retrain, ...), and what it depends on (its children, its model's ModelTraining). An idle object costs no
API request and no task. No per-object daemon: kopf would hold every object with a finalizer for it,
one more write per object; a finalizer is there only where deletion needs the operator's cleanup. The frame serialises everything done to one object
on a per-object lock, reconciles kopf's latest view of it (read afresh only when that view predates a
status written meanwhile: ``kube.current_object``), and writes only the status fields that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import kopf
import pydantic

from mlops_operator.api.annotations import REQUEST_ANNOTATIONS
from mlops_operator.api.common import GROUP, VERSION, StatusBase
from mlops_operator.api.errors import InvalidSpec
from mlops_operator.backends import kube, notifier, uri_policy
from mlops_operator.backends.kube import describe_api_error  # noqa: F401  (re-exported for the kinds)
from mlops_operator.metrics import reconcile_timer
from mlops_operator.reconcile.conditions import FALSE, initial_conditions, set_condition
from mlops_operator.reconcile.notify import NOTIFIED
from mlops_operator.settings import Settings

INVALID_SPEC = InvalidSpec.reason
# kopf's finalizer on the objects whose deletion waits for the operator's cleanup (handlers/operator.py).
FINALIZER = f"{GROUP}/finalizer"
ACCEPTED = "Accepted"
RECONCILE_ERROR = "ReconcileError"
# How long an object waits after the operator failed on it unexpectedly (doubling up to 4x).
ERROR_BACKOFF_SECONDS = 60.0

M = TypeVar("M", bound=pydantic.BaseModel)
Status = dict[str, Any]
Reconciler = Callable[[dict[str, Any]], Awaitable[Status | StatusBase]]
"""A kind's reconciliation: (live object) -> desired status, typed (a ``*Status`` model) or as a dict."""
Requeue = Callable[[Mapping[str, Any], Mapping[str, Any]], float | None]
"""A kind's decision after a reconciliation: (live object, the status just written) -> seconds until
the object must be observed again, or None while nothing is in progress (a change or :func:`wake`
brings it back)."""

log = logging.getLogger("mlops_operator")


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


_policy_of: tuple[Settings, uri_policy.UriPolicy] | None = None


def _uri_policy(settings: Settings) -> uri_policy.UriPolicy:
    """The URI policy of the process's settings, made once (resolving its roots reads the filesystem)."""
    global _policy_of
    if _policy_of is None or _policy_of[0] is not settings:
        _policy_of = (settings, uri_policy.UriPolicy.from_settings(settings))
    return _policy_of[1]


async def uri_policy_problems(status: Status | StatusBase, namespace: str,
                              *fields: tuple[str, str | None]) -> list[str]:
    """The URI policy's refusals of the (field, URI) pairs of a spec in ``namespace`` (the host lookups run
    in a thread). DNS failing for now is no refusal: Retry, keeping ``status``."""
    if not any(uri for _, uri in fields):
        return []
    policy = _uri_policy(get_settings())
    try:
        return await asyncio.to_thread(uri_policy.uri_problems, fields, policy, namespace=namespace)
    except uri_policy.HostLookupFailed as error:
        raise Retry(str(error), status) from None


class Retry(Exception):
    """Transient trouble (a dependency is down): record ``status``, then retry after ``delay`` seconds."""

    def __init__(self, message: str, status: Status | StatusBase, delay: float = 30):
        super().__init__(message)
        self.status = api_status(status)
        self.delay = delay


def api_status(status: Status | StatusBase) -> Status:
    """A status as it is written: a typed ``*Status`` model serialised once, here (a dict as it is)."""
    return status.to_status() if isinstance(status, StatusBase) else status


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """A pydantic error as one readable line per problem, with the API field path."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"])
        lines.append(f"spec.{path}: {problem['msg']}")
    return "; ".join(lines)


def parse_spec(model: type[M], spec: Mapping[str, Any]) -> M:
    """Parse a spec into its model; raise InvalidSpec with a readable message."""
    try:
        return model.model_validate(dict(spec))
    except pydantic.ValidationError as error:
        raise InvalidSpec(describe_validation_error(error)) from None


def with_conditions(status: Mapping[str, Any], types: tuple[str, ...], generation: int) -> Status:
    """A copy of status with every condition type present (Unknown/Reconciling on a first visit)."""
    result = dict(status)
    result["conditions"] = initial_conditions(status.get("conditions"), types, generation=generation)
    result["observedGeneration"] = generation
    return result


def changed_fields(current: Mapping[str, Any], desired: Mapping[str, Any]) -> Status:
    """A JSON merge patch (RFC 7386) from the live status to the desired one, for the fields the desired
    status names: unchanged fields are left out, and inside a changed object every key the desired value
    no longer has is set to None. A merge patch would otherwise keep it: a new ``latestRun`` would carry
    the previous run's metrics and model, a new analysis the previous one's message."""
    return {key: _merge_patch(current.get(key), value) for key, value in desired.items() if current.get(key) != value}


def _merge_patch(current: Any, desired: Any) -> Any:
    if not isinstance(current, Mapping) or not isinstance(desired, Mapping):
        return desired  # a scalar or a list is replaced whole
    patch: dict[str, Any] = {key: None for key in current if key not in desired}
    patch.update({key: _merge_patch(current.get(key), value) for key, value in desired.items()
                  if current.get(key) != value})
    return patch


def post_event(obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False,
               incident: str = "") -> None:
    """Post a Kubernetes event about the object, and notify its webhook when the reason is notified.

    Posted by ``kube.post_event`` (in the background, in order per object; dropped quietly when the
    namespace is being deleted), not by kopf, whose settings.posting.level the operator keeps at
    WARNING so kopf's own per-handler log lines do not become events. ``incident`` names what the
    event is about within the object (e.g. ``3/errorRate``), so that notifications of one incident are
    one message.
    """
    acceptance = _acceptance.get()
    if acceptance is not None:
        if warning:
            acceptance.post()  # first, as it would have been
        else:
            acceptance.posted = True  # this event says the object is taken up, and more
    kube.post_event(obj, "Warning" if warning else "Normal", reason, message[:1024])
    if reason in NOTIFIED:
        try:
            task = asyncio.get_running_loop().create_task(
                notifier.notify_event(obj, reason, message, warning=warning, incident=incident))
        except RuntimeError:  # no event loop (a synchronous caller): no notification
            return
        _notifications.add(task)
        task.add_done_callback(_notifications.discard)


_notifications: set[asyncio.Task] = set()


class _Acceptance:
    """The Accepted event of an object's first reconciliation ("accepted; reconciling"), posted only when
    that reconciliation has no plain news of its own (``Deploying: Serving version 1 ...``, ``RunStarted``):
    such an event says as much and more, so a new object costs one event, not two. A warning comes after
    the Accepted event, as it did."""

    def __init__(self, obj: Mapping[str, Any], kind: str) -> None:
        self.obj, self.kind = obj, kind
        self.posted = False

    def post(self) -> None:
        if not self.posted:
            self.posted = True
            kube.post_event(self.obj, "Normal", ACCEPTED, f"{self.kind} accepted; reconciling.")


_acceptance: contextvars.ContextVar[_Acceptance | None] = contextvars.ContextVar("acceptance", default=None)


@contextlib.contextmanager
def _accepting(obj: Mapping[str, Any], kind: str, *, first: bool) -> Iterator[None]:
    """On an object's first reconciliation, post the Accepted event unless a plain event of its own came."""
    if not first:
        yield
        return
    acceptance = _Acceptance(obj, kind)
    token = _acceptance.set(acceptance)
    try:
        yield
    finally:
        _acceptance.reset(token)
        acceptance.post()


_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
# Objects in backoff after transient trouble: key -> (monotonic time of the next attempt, delay).
_backoff: dict[tuple[str, str, str], tuple[float, float]] = {}


def _lock(plural: str, namespace: str, name: str) -> asyncio.Lock:
    return _locks.setdefault((plural, namespace, name), asyncio.Lock())


# Each kind's reconciliations in progress (settings.max_concurrent_reconciles at a time; FIFO), for the
# event loop that made them.
_slots: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}


def _slot(plural: str) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    held = _slots.get(plural)
    if held is None or held[0] is not loop:
        held = _slots[plural] = (loop, asyncio.Semaphore(get_settings().max_concurrent_reconciles))
    return held[1]


def object_lock(plural: str, namespace: str, name: str) -> asyncio.Lock:
    """The lock that serialises everything done to one object."""
    return _lock(plural, namespace, name)


class SeenParts:
    """What watch events last showed of one part of each object, to tell a change of that part from any
    other event. The listing at start-up and an object's first event only record it; deletion forgets it."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], str] = {}

    def changed(self, key: tuple[str, ...], event_type: str | None, part: Any) -> bool:
        """Whether ``part`` differs from what the last event of ``key`` showed."""
        if event_type == "DELETED":
            self._seen.pop(key, None)
            return False
        seen = json.dumps(part, sort_keys=True, default=str)
        before = self._seen.get(key)
        self._seen[key] = seen
        return event_type is not None and before is not None and before != seen

    def forget(self, key: tuple[str, ...]) -> None:
        self._seen.pop(key, None)


# When each object is to be observed next (monotonic seconds; None: when something changes), the same
# as a heap for the schedule (entries superseded since are skipped), and the event that wakes it.
_due: dict[tuple[str, str, str], float | None] = {}
_schedule: list[tuple[float, tuple[str, str, str]]] = []
_schedule_changed: asyncio.Event | None = None
# kopf's latest view of each object (from its watch), what the schedule reconciles; each kind's run.
_bodies: dict[tuple[str, str, str], Mapping[str, Any]] = {}
_runs: dict[str, Callable[[str, str, Mapping[str, Any]], Awaitable[None]]] = {}
# The objects being observed now, and those woken meanwhile (observed again when that ends).
_running: set[tuple[str, str, str]] = set()
_woken_while_running: set[tuple[str, str, str]] = set()
_observations: set[asyncio.Task] = set()
# The request annotations of each object (register_kind's on_request).
_requests_seen = SeenParts()


def _changed() -> asyncio.Event:
    global _schedule_changed
    if _schedule_changed is None:
        _schedule_changed = asyncio.Event()
    return _schedule_changed


def _observe_at(key: tuple[str, str, str], due: float | None) -> None:
    _due[key] = due
    if due is not None:
        heapq.heappush(_schedule, (due, key))
        _changed().set()


def wake(plural: str, namespace: str, name: str) -> None:
    """Have the object observed now: something it depends on changed (a child's status, its model)."""
    key = (plural, namespace, name)
    if key in _running:
        _woken_while_running.add(key)  # what it read may predate the change: once more when it ends
    _observe_at(key, time.monotonic())


def _observe(key: tuple[str, str, str]) -> None:
    """Start one observation of the object (reconciling kopf's latest view of it) in its own task."""
    plural, namespace, name = key
    body, run = _bodies.get(key), _runs.get(plural)
    if body is None or run is None:  # deleted meanwhile (or a kind not registered)
        _due.pop(key, None)
        return
    # A fallback if the reconciliation ends without scheduling (kopf's own errors).
    _observe_at(key, time.monotonic() + get_settings().poll_interval_seconds)
    _running.add(key)
    log.debug("%s/%s (%s): observing", namespace, name, plural)
    task = asyncio.get_running_loop().create_task(run(namespace, name, body))
    _observations.add(task)
    task.add_done_callback(functools.partial(_observed, key))


def _observed(key: tuple[str, str, str], task: asyncio.Task) -> None:
    _observations.discard(task)
    _running.discard(key)
    if not task.cancelled() and task.exception() is not None:
        plural, namespace, name = key
        log.error("%s/%s (%s): observation failed", namespace, name, plural, exc_info=task.exception())
    if key in _woken_while_running:
        _woken_while_running.discard(key)
        if key in _bodies:
            _observe_at(key, time.monotonic())


async def run_schedule() -> None:
    """The operator-wide schedule: observe each object when it is due (one task per observation, never
    two at once for one object: one that comes due meanwhile schedules itself when it ends)."""
    changed = _changed()
    while True:
        now = time.monotonic()
        while _schedule and _schedule[0][0] <= now:
            due, key = heapq.heappop(_schedule)
            if _due.get(key) == due and key not in _running:
                _observe(key)
        changed.clear()
        timeout = _schedule[0][0] - now if _schedule else None
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            pass


_scheduler: asyncio.Task | None = None


@kopf.on.startup()
async def start_schedule(**_: Any) -> None:
    """Start the schedule that observes the objects."""
    global _scheduler
    _scheduler = asyncio.get_running_loop().create_task(run_schedule())


@kopf.on.cleanup()
async def stop_schedule(**_: Any) -> None:
    """Stop the schedule and the observations in flight (operator shutdown)."""
    tasks = [t for t in (_scheduler, *_observations) if t is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def forget(plural: str, namespace: str, name: str) -> None:
    """Drop the per-object lock, backoff and observation schedule of a deleted object."""
    key = (plural, namespace, name)
    _locks.pop(key, None)
    _backoff.pop(key, None)
    _due.pop(key, None)
    _bodies.pop(key, None)
    _woken_while_running.discard(key)
    _requests_seen.forget(key)
    kube.forget_object(plural, namespace, name)


async def reconcile_object(
    kind: str,
    plural: str,
    namespace: str,
    name: str,
    reconciler: Reconciler,
    *,
    body: Mapping[str, Any] | None = None,
    conditions: tuple[str, ...],
    summary_condition: str,
    from_change: bool,
    requeue: Requeue | None = None,
) -> None:
    """Run one reconciliation of the object (``body``, kopf's view of it, unless that predates a status
    written meanwhile), write the status it returns, and schedule the next observation (``requeue``;
    without it, every poll interval).

    ``from_change`` is true in kopf change handlers: an invalid spec then raises PermanentError
    (kopf stops retrying until the spec changes). Transient trouble (``Retry``) records its status
    and backs the object off: timers skip it until the delay has passed, and each further failure
    doubles the delay (up to four times the first). A change handler always reconciles at once.
    """
    key = (plural, namespace, name)
    if not from_change and time.monotonic() < _backoff.get(key, (0.0, 0.0))[0]:
        _observe_at(key, _backoff[key][0])
        return
    invalid = None
    # A slot of the kind first, then the object's lock (never the other way round: a reconciliation holding
    # the lock always has its slot).
    async with _slot(plural), _lock(plural, namespace, name):
        with reconcile_timer(kind) as outcome:
            obj = await kube.current_object(plural, namespace, name, body)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                _observe_at(key, None)
                return
            generation = obj["metadata"].get("generation") or 0
            live = obj.get("status") or {}
            base = with_conditions(live, conditions, generation)
            obj = {**obj, "status": base}
            # The first visit says so in one event: Accepted, or the reconciliation's own news.
            with _accepting(obj, kind, first=not live.get("conditions")):
                try:
                    desired = api_status(await reconciler(obj))
                except InvalidSpec as error:
                    message = error.message
                    desired = dict(base)
                    desired["conditions"] = set_condition(
                        base["conditions"], summary_condition, FALSE, INVALID_SPEC, message, generation=generation
                    )
                    desired["phase"] = "Invalid"
                    changes = changed_fields(live, desired)
                    if changes:
                        await kube.patch_status(plural, namespace, name, changes)
                        post_event(obj, INVALID_SPEC, message, warning=True)
                    # The user's to fix: counted apart from the operator's errors, never retried on a
                    # observation (scheduled for a change only), and no exception for kopf to retry.
                    outcome["result"] = "invalid"
                    invalid = message
                    _observe_at(key, None)  # the user's to fix: a spec change brings it back
                except Retry as retry:
                    changes = changed_fields(live, retry.status)
                    if changes:
                        await kube.patch_status(plural, namespace, name, changes)
                    previous = _backoff.get(key, (0.0, 0.0))[1]
                    delay = min(previous * 2, retry.delay * 4) if previous else retry.delay
                    _backoff[key] = (time.monotonic() + delay, delay)
                    _observe_at(key, _backoff[key][0])
                    outcome["result"] = "requeue"
                    log.info("%s %s/%s: %s (retrying in %.0fs)", kind, namespace, name, retry, delay)
                    return
                except (kopf.PermanentError, kopf.TemporaryError, asyncio.CancelledError):
                    raise
                except Exception as error:
                    if kube.is_namespace_terminating(error):
                        # The namespace goes, and the object with it (a child it depended on went first):
                        # nothing to re-create, nothing to report.
                        log.info("%s %s/%s: its namespace is being deleted; nothing more to do", kind, namespace, name)
                        _observe_at(key, None)
                        return
                    # A fault of the operator (or a case nobody foresaw): the object still gets a
                    # condition that says so, and is retried with a backoff instead of kopf's tight loop.
                    log.exception("%s %s/%s: reconciliation failed", kind, namespace, name)
                    message = f"The operator failed on this object: {type(error).__name__}: {error}"[:1024]
                    desired = dict(base)
                    desired["conditions"] = set_condition(
                        base["conditions"], summary_condition, FALSE, RECONCILE_ERROR, message, generation=generation)
                    changes = changed_fields(live, desired)
                    if changes:
                        await kube.patch_status(plural, namespace, name, changes)
                    previous = _backoff.get(key, (0.0, 0.0))[1]
                    delay = min(previous * 2, ERROR_BACKOFF_SECONDS * 4) if previous else ERROR_BACKOFF_SECONDS
                    _backoff[key] = (time.monotonic() + delay, delay)
                    _observe_at(key, _backoff[key][0])
                    outcome["result"] = "error"
                    return
                if invalid is None:
                    _backoff.pop(key, None)
                    changes = changed_fields(live, desired)
                    if changes:
                        await kube.patch_status(plural, namespace, name, changes)
                    after = requeue(obj, desired) if requeue else get_settings().poll_interval_seconds
                    _observe_at(key, None if after is None else time.monotonic() + after)
    if invalid is not None and from_change:
        # kopf records the change as handled and does not retry it; outside the timing frame, so it is
        # not counted as an operator error.
        raise kopf.PermanentError(f"{INVALID_SPEC}: {invalid}")


Cleanup = Callable[[str, str, Mapping[str, Any], Mapping[str, Any]], Awaitable[None]]
"""A kind's work when an object is deleted: ``(namespace, name, status, spec)``."""


def register_kind(kind: str, plural: str, reconciler: Reconciler, *, status: type[StatusBase],
                  cleanup: Cleanup, requeue: Requeue | None = None,
                  cleanup_needed: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None,
                  on_event: Callable[[str | None, Mapping[str, Any]], None] | None = None) -> None:
    """Register one kind with kopf: change handlers (create, update, resume) and the schedule both run
    :func:`reconcile_object` with ``reconciler`` and the conditions ``status`` (the kind's ``*Status``
    model) declares; the schedule observes an object again when ``requeue`` says (or :func:`wake` is
    called, or the spec changes); deletion runs ``cleanup`` and then drops the object's lock, backoff and
    schedule. Handler ids stay ``on_change``/``on_delete``.

    ``cleanup_needed(spec, status)`` says whether deleting an object needs the operator's cleanup before it
    goes (something its owner references do not remove): only then does kopf hold it with the finalizer
    and call ``cleanup`` first. kopf asks at every event, so the finalizer comes and goes with the need
    (an active run, say). ``on_event(type, body)`` sees every watch event of the kind first (the listing at
    start-up included, with type None). Without it (None: always needed), ``cleanup`` runs when the deletion is seen
    (in-memory state only: the object is gone by then), and an older finalizer is released."""

    async def run(namespace: str, name: str, body: Mapping[str, Any], from_change: bool = False) -> None:
        await reconcile_object(kind, plural, namespace, name, reconciler, body=body, conditions=status.condition_types,
                               summary_condition=status.summary_condition, from_change=from_change,
                               requeue=requeue)

    _runs[plural] = run

    @kopf.on.resume(GROUP, VERSION, plural, id="on_change")
    @kopf.on.create(GROUP, VERSION, plural, id="on_change")
    @kopf.on.update(GROUP, VERSION, plural, id="on_change")
    async def on_change(namespace: str, name: str, body: kopf.Body, **_: Any) -> None:
        """A new object, a changed spec or annotation, or an operator restart."""
        await run(namespace, name, body, from_change=True)

    @kopf.on.event(GROUP, VERSION, plural, id="requests")
    async def on_request(type: str | None, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        """Keep kopf's latest view of the object for the schedule. A request annotation (approve, rollback,
        retrain, report, ...) set or changed: observe it now (kopf calls no change handler for them: they
        share the prefix of kopf's own annotations). Deleted without the finalizer: forget it."""
        key = (plural, namespace, name)
        if on_event is not None:
            on_event(type, body)
        annotations = (body.get("metadata") or {}).get("annotations") or {}  # the raw dict: kopf's view costs more
        if _requests_seen.changed(key, type, {k: annotations[k] for k in REQUEST_ANNOTATIONS if k in annotations}):
            wake(plural, namespace, name)
        if type != "DELETED":
            _bodies[key] = kube.without_managed_fields(body)
            return
        if FINALIZER not in (body.metadata.get("finalizers") or []):  # else on_delete has cleaned up
            await cleanup(namespace, name, body.get("status") or {}, body.get("spec") or {})
        forget(plural, namespace, name)

    def needs_finalizer(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
        return cleanup_needed is None or cleanup_needed(spec, status)

    @kopf.on.delete(GROUP, VERSION, plural, id="on_delete", when=needs_finalizer)
    async def on_delete(namespace: str, name: str, status: kopf.Status, spec: kopf.Spec, **_: Any) -> None:
        """The kind's cleanup, then forget the object."""
        await cleanup(namespace, name, status, spec)
        forget(plural, namespace, name)
