"""Notifications: one message per incident, grouped per object, rate-limited, retried with backoff,
in Slack, Alertmanager-webhook and CloudEvents formats, sent to a real HTTP receiver on loopback;
the webhook URL (with its token) never reaches the logs."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from aiohttp import web

from mlops_operator.backends.notifier import Notifier, Webhook
from mlops_operator.reconcile.notify import (
    Deduplicator,
    TokenBucket,
    alertmanager_payload,
    cloudevents_payload,
    notice_for_event,
    slack_payload,
)

AT = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
TOKEN = "T000/B000/XXXXsecretXXXX"


def notice(reason: str, message: str = "m", incident: str = "", name: str = "iris"):
    return notice_for_event("ModelDeployment", "team-a", name, reason, message, AT, incident)


def test_only_notified_reasons_make_notices_and_one_incident_is_one_message():
    assert notice("StepPassed") is None and notice("Promoted") is None
    dedup = Deduplicator()
    opened = notice("AnomalyOpened", "errorRate 0.3", incident="2/errorRate")
    assert dedup.admit(opened)
    assert not dedup.admit(notice("AnomalyOpened", "errorRate 0.31 (next check)", incident="2/errorRate"))
    assert dedup.admit(notice("AnomalyOpened", "latency", incident="2/latencyP99Ms"))
    assert dedup.admit(notice("AnomalyClosed", "back", incident="2/errorRate"))
    assert not dedup.admit(notice("AnomalyClosed", "back", incident="2/errorRate"))
    assert not dedup.admit(notice("AnomalyClosed", "never opened", incident="9/errorRate"))
    # Without a named incident, the message tells incidents apart: another version's abort is news.
    assert dedup.admit(notice("RolloutAborted", "Rollout of version 3 aborted"))
    assert not dedup.admit(notice("RolloutAborted", "Rollout of version 3 aborted"))
    assert dedup.admit(notice("RolloutAborted", "Rollout of version 4 aborted"))
    # The events that tell one rollback (the guard's decision, its completion, the rejection) are one incident.
    assert dedup.admit(notice("RolledBack", "Rolling back from version 5 automatically", incident="5"))
    assert not dedup.admit(notice("RolledBack", "Rolled back to version 4 (version 5 rejected).", incident="5"))
    assert not dedup.admit(notice("RolloutAborted", "Version 5 was rejected earlier", incident="5"))
    # Drift is an episode: firing once until it is resolved, whatever the scores say.
    assert dedup.admit(notice("DriftDetected", "psi 0.3"))
    assert not dedup.admit(notice("DriftDetected", "psi 0.4"))
    assert dedup.admit(notice("NoDrift", "ok")) and dedup.admit(notice("DriftDetected", "again"))


def test_the_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(burst=2, per_minute=6)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(10.0)
    assert bucket.take(10.0) == 0.0


def test_payload_formats():
    firing = [notice("AnomalyOpened", "version 2 errorRate 0.3 is above its band", incident="2/errorRate"),
              notice("RolledBack", "Rolled back to version 1")]
    slack = slack_payload(firing)
    assert slack["text"].startswith("ModelDeployment team-a/iris\n") and "*Anomaly* (firing" in slack["text"]
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "section"]
    am = alertmanager_payload(firing)
    assert am["version"] == "4" and am["status"] == "firing" and len(am["alerts"]) == 2
    alert = am["alerts"][0]
    assert alert["labels"] == {"namespace": "team-a", "name": "iris", "kind": "ModelDeployment",
                               "alertname": "MlopsAnomaly", "reason": "AnomalyOpened", "severity": "warning",
                               "incident": "2/errorRate"}
    assert alert["startsAt"] == "2026-11-29T10:00:00Z" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert len(alert["fingerprint"]) == 16
    resolved = alertmanager_payload([notice("AnomalyClosed", "back", incident="2/errorRate")])
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    events = cloudevents_payload(firing)
    assert events[0]["specversion"] == "1.0" and events[0]["type"] == "dev.mlops.anomaly.firing"
    assert events[0]["source"] == "/apis/mlops.dev/v1alpha1/namespaces/team-a/modeldeployments/iris"
    assert events[0]["subject"] == "2/errorRate" and events[0]["data"]["reason"] == "AnomalyOpened"
    assert len({e["id"] for e in events}) == 2


class Receiver:
    """A real HTTP webhook receiver on loopback that can fail its first answers."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.failures, self.status = failures, status
        self.bodies: list[tuple[str, object]] = []
        self.attempts = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        assert request.path == f"/services/{TOKEN}"
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=self.status)
        self.bodies.append((request.content_type, await request.json()))
        return web.Response(text="ok")


@pytest_asyncio.fixture
async def receiver():
    made = []

    async def start(**kwargs) -> tuple[Receiver, str]:
        rec = Receiver(**kwargs)
        app = web.Application()
        app.router.add_post("/services/{token:.*}", rec.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        made.append(runner)
        port = site._server.sockets[0].getsockname()[1]
        return rec, f"http://127.0.0.1:{port}/services/{TOKEN}"

    yield start
    for runner in made:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_notices_of_one_moment_go_as_one_message_and_repeats_send_nothing(receiver):
    rec, url = await receiver()
    notifier = Notifier(group_wait=0.2)
    hook = Webhook(url, "alertmanager", "Secret team-a/mlops-notifications")
    assert notifier.submit(hook, notice("AnomalyOpened", "errorRate", incident="2/errorRate"))
    assert notifier.submit(hook, notice("RolledBack", "Rolled back to version 1"))
    assert not notifier.submit(hook, notice("AnomalyOpened", "errorRate again", incident="2/errorRate"))
    assert notifier.submit(hook, notice("RolloutAborted", "other object", name="wine"))
    await notifier.drain()
    assert [len(body["alerts"]) for _, body in rec.bodies] == [2, 1]
    assert rec.bodies[1][1]["commonLabels"]["name"] == "wine"
    notifier.submit(hook, notice("AnomalyClosed", "back", incident="2/errorRate"))
    await notifier.drain()
    assert rec.bodies[2][1]["status"] == "resolved" and notifier.delivered == 3


@pytest.mark.asyncio
async def test_failures_are_retried_with_backoff_and_the_url_is_never_logged(receiver, caplog):
    caplog.set_level(logging.INFO, logger="mlops_operator.notifications")
    rec, url = await receiver(failures=2)
    notifier = Notifier(group_wait=0, backoff=0.05)
    started = asyncio.get_running_loop().time()
    notifier.submit(Webhook(url, "slack", "Secret team-a/hook"), notice("RolloutAborted", "aborted"))
    await notifier.drain()
    assert rec.attempts == 3 and len(rec.bodies) == 1 and rec.bodies[0][0] == "application/json"
    assert asyncio.get_running_loop().time() - started >= 0.05 + 0.1  # 0.05 s, then 0.1 s
    assert "retrying in 0.1s" in caplog.text and "Secret team-a/hook" in caplog.text
    assert TOKEN not in caplog.text and "127.0.0.1" not in caplog.text

    # A receiver that refuses the message (4xx) is not asked again; one that is down is given up on.
    refusing, refusing_url = await receiver(failures=10, status=400)
    notifier.submit(Webhook(refusing_url, "cloudevents", "Secret team-a/hook"), notice("RunFailed", "run 7 failed"))
    await notifier.drain()
    assert refusing.attempts == 1 and notifier.failed == 1
    down = Notifier(group_wait=0, attempts=2, backoff=0.01)
    down.submit(Webhook(f"http://127.0.0.1:1/services/{TOKEN}", "slack", "Secret team-a/hook"),
                notice("RunFailed", "run 8 failed"))
    await down.drain()
    assert down.failed == 1 and "giving up" in caplog.text and TOKEN not in caplog.text


@pytest.mark.asyncio
async def test_the_rate_limit_holds_messages_back_and_merges_them(receiver):
    rec, url = await receiver()
    notifier = Notifier(group_wait=0, burst=1, per_minute=120)  # one at once, then one every 0.5 s
    hook = Webhook(url, "cloudevents", "Secret team-a/hook")
    started = asyncio.get_running_loop().time()
    notifier.submit(hook, notice("RolloutAborted", "first"))
    await asyncio.sleep(0.05)
    notifier.submit(hook, notice("RolloutAborted", "second"))
    notifier.submit(hook, notice("RolledBack", "third"))
    await notifier.drain()
    assert [len(body) for _, body in rec.bodies] == [1, 2]
    assert rec.bodies[0][0] == "application/cloudevents-batch+json"
    assert asyncio.get_running_loop().time() - started >= 0.45
