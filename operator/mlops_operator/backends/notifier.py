"""Notifications to webhooks: configuration from Secrets, grouping, rate limit, retries with backoff.

Where notices go: the Secret named by the object's annotation ``mlops.dev/notifications-secret``,
else the namespace's Secret ``mlops-notifications``; key ``url`` (the webhook, often with a token
in it) and optional ``format`` (slack, alertmanager, cloudevents; default slack). The URL is never
logged, written to status or put in an event: logs name the Secret instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from mlops_operator.api.annotations import NOTIFICATIONS_SECRET_ANNOTATION
from mlops_operator.backends import kube
from mlops_operator.reconcile import notify
from mlops_operator.reconcile.notify import Deduplicator, Notice, TokenBucket

log = logging.getLogger("mlops_operator.notifications")

SECRET_ANNOTATION = NOTIFICATIONS_SECRET_ANNOTATION
NAMESPACE_SECRET = "mlops-notifications"
SECRET_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Webhook:
    """Where to send, in which format; ``origin`` names the Secret (what logs may show)."""

    url: str = field(repr=False)
    format: notify.Format
    origin: str


@dataclass
class _Target:
    webhook: Webhook
    bucket: TokenBucket
    pending: list[Notice] = field(default_factory=list)
    task: asyncio.Task | None = None


class Notifier:
    """Sends notices: deduplicated per incident, grouped per object, rate-limited and retried per webhook."""

    def __init__(self, *, group_wait: float = 1.0, attempts: int = 5, backoff: float = 0.5, max_backoff: float = 30.0,
                 timeout: float = 10.0, burst: float = 5, per_minute: float = 10) -> None:
        self.group_wait, self.attempts, self.backoff, self.max_backoff = group_wait, attempts, backoff, max_backoff
        self.timeout, self.burst, self.per_minute = timeout, burst, per_minute
        self.dedup = Deduplicator()
        self.targets: dict[str, _Target] = {}
        self.delivered = 0
        self.failed = 0

    def submit(self, webhook: Webhook, notice: Notice) -> bool:
        """Queue ``notice`` for ``webhook``; False when it says nothing new. Needs a running event loop."""
        key = f"{webhook.origin}|{webhook.format}|{hash(webhook.url)}"
        if not self.dedup.admit(replace(notice, incident=f"{key}|{notice.incident}")):
            return False
        target = self.targets.get(key)
        if target is None or target.webhook != webhook:
            target = self.targets[key] = _Target(webhook, TokenBucket(self.burst, self.per_minute))
        target.pending.append(notice)
        if target.task is None or target.task.done():
            target.task = asyncio.get_running_loop().create_task(self._flush(target))
        return True

    async def drain(self) -> None:
        """Wait until everything queued was sent or given up on."""
        while tasks := [t.task for t in self.targets.values() if t.task is not None and not t.task.done()]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _flush(self, target: _Target) -> None:
        await asyncio.sleep(self.group_wait)  # let notices of the same moment join one message
        while target.pending:
            wait = target.bucket.take(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)  # notices arriving meanwhile join the next message
                continue
            batch, target.pending = target.pending, []
            groups = notify.group(batch)
            first, rest = groups[0], groups[1:]
            target.pending = [n for g in rest for n in g] + target.pending
            await self._post(target.webhook, first)

    async def _post(self, webhook: Webhook, notices: list[Notice]) -> None:
        body = notify.payload(webhook.format, notices)
        headers = {"Content-Type": notify.CONTENT_TYPES[webhook.format]}
        what = f"{len(notices)} notice(s) about {notices[0].namespace}/{notices[0].name} via {webhook.origin}"
        delay = self.backoff
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        for attempt in range(1, self.attempts + 1):
            problem = None
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.post(webhook.url, json=body, headers=headers) as response:
                        if 200 <= response.status < 300:
                            self.delivered += 1
                            log.info("sent %s (%s)", what, webhook.format)
                            return
                        problem = f"HTTP {response.status}"
                        if 400 <= response.status < 500 and response.status not in (408, 429):
                            break  # the receiver refuses this message; sending it again will not help
                        retry_after = response.headers.get("Retry-After", "")
                        if retry_after.isdigit():
                            delay = max(delay, float(retry_after))
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                # Never the URL: aiohttp's message may contain it.
                problem = type(error).__name__
            if attempt < self.attempts:
                log.warning("sending %s failed (%s, attempt %d of %d); retrying in %.1fs", what, problem, attempt,
                            self.attempts, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        self.failed += 1
        log.error("giving up sending %s: %s", what, problem)


_secret_cache: dict[tuple[str, str], tuple[float, Webhook | None]] = {}


async def webhook_for(obj: Mapping[str, Any]) -> Webhook | None:
    """The webhook configured for ``obj`` (annotation, else namespace Secret), or None."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    named = (meta.get("annotations") or {}).get(SECRET_ANNOTATION)
    for secret in ([named] if named else []) + [NAMESPACE_SECRET]:
        found = await _read_webhook(namespace, secret, required=secret == named)
        if found is not None:
            return found
    return None


async def _read_webhook(namespace: str, secret: str, *, required: bool) -> Webhook | None:
    cached = _secret_cache.get((namespace, secret))
    if cached and time.monotonic() - cached[0] < SECRET_CACHE_SECONDS:
        return cached[1]
    webhook = None
    origin = f"Secret {namespace}/{secret}"
    try:
        url = (await kube.read_secret_key(namespace, secret, "url")).strip()
        try:
            format_ = (await kube.read_secret_key(namespace, secret, "format")).strip() or "slack"
        except (KeyError, LookupError, ValueError):
            format_ = "slack"
        if format_ not in notify.FORMATS:
            log.warning("%s: format %r is not one of %s; no notifications", origin, format_, ", ".join(notify.FORMATS))
        elif not url.startswith(("http://", "https://")):
            log.warning("%s: key url is not an http(s) URL; no notifications", origin)
        else:
            webhook = Webhook(url, format_, origin)  # type: ignore[arg-type]
    except Exception as error:  # missing Secret or key, no permission: say so without the value
        if required:
            log.warning("%s: cannot read the webhook (%s); no notifications", origin, type(error).__name__)
    _secret_cache[(namespace, secret)] = (time.monotonic(), webhook)
    return webhook


_notifier: Notifier | None = None


def notifier() -> Notifier:
    """The operator's notifier (one per process)."""
    global _notifier
    if _notifier is None:
        _notifier = Notifier()
    return _notifier


async def notify_event(obj: Mapping[str, Any], reason: str, message: str, *, warning: bool, incident: str = "") -> None:
    """Turn an event into a notice and queue it, when the event is notified and a webhook is configured."""
    if reason not in notify.NOTIFIED:
        return
    meta = obj.get("metadata") or {}
    notice = notify.notice_for_event(str(obj.get("kind") or ""), meta.get("namespace") or "", meta.get("name") or "",
                                     reason, message, datetime.now(UTC), incident, warning)
    webhook = await webhook_for(obj)
    if notice is not None and webhook is not None:
        notifier().submit(webhook, notice)
