"""Every object of the malformed corpus (tests/integration/corpus.py) is refused at admission or
marked InvalidSpec by the real operator; afterwards the operator is watched: no crash, no retry loop
(reconcile error and InvalidSpec counters flat over many poll intervals, and no kopf retry scheduled),
and valid objects beside them unaffected. Deleting everything at the end (the fixture) must complete,
the 200 KB specs included.

The watch is positive signals, not a long wait: the operator re-observes what is due every poll interval
(1 s under test), so WATCH_SECONDS is many of those; kopf's own retries come only after its 60 s backoff,
but kopf logs each one when it schedules it ("failed temporarily", "will try again"), so the log shows a
pending one without waiting it out.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from integration.corpus import corpus
from kube_support import condition, load_example, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SUMMARY = {"ModelTraining": "Succeeded", "ModelDeployment": "Ready", "DriftMonitor": "Ready"}
WATCH_SECONDS = 15  # poll intervals of the test operator (MLOPS_POLL_INTERVAL_SECONDS=1, tests/kube_support.py)
# What kopf logs when it schedules a retry of a handler or daemon (kopf/_core/actions/execution.py).
KOPF_RETRY_LOGS = ("failed temporarily", "will try again")


def valid_objects() -> list[dict[str, Any]]:
    """A small training that really runs, and a deployment and monitor that wait for it."""
    training = load_example("training.yaml")
    training["metadata"] = {"name": "valid-mt"}
    training["spec"]["model"] = "valid-mt"
    training["spec"]["training"]["parameters"] = {"n_estimators": 5, "max_depth": 3}
    deployment = load_example("deployment.yaml")
    deployment["metadata"] = {"name": "valid-md"}
    deployment["spec"]["model"] = {"fromTraining": "not-trained-yet"}
    monitor = load_example("driftmonitor.yaml")
    monitor["metadata"] = {"name": "valid-dm"}
    monitor["spec"]["deploymentRef"] = {"name": "valid-md"}
    monitor["spec"]["onDrift"]["retrain"]["trainingRef"] = {"name": "valid-mt"}
    return [training, deployment, monitor]


def is_invalid(kind: str):
    def check(obj: dict[str, Any]) -> bool:
        summary = condition(obj, SUMMARY[kind]) or {}
        return (obj.get("status") or {}).get("phase") == "Invalid" and summary.get("reason") == "InvalidSpec"
    return check


def test_malformed_corpus_is_refused_or_invalid_and_the_operator_stays_well(objects, operator) -> None:
    entries = corpus()
    assert len(entries) >= 150
    for body in valid_objects():
        objects.create(body)

    refused: dict[str, str] = {}
    accepted: list[tuple[str, str, str]] = []
    for name, kind, body, _ in entries:
        try:
            objects.create(body)
            accepted.append((body["metadata"]["name"], kind, name))
        except ApiException as error:
            assert error.status == 422, (name, error.status, error.reason)
            refused[name] = json.loads(error.body)["message"]

    invalid: dict[str, str] = {}
    silent: list[str] = []
    deadline = time.monotonic() + 120
    for object_name, kind, name in accepted:
        try:
            obj = objects.wait(kind, object_name, is_invalid(kind), timeout=max(1.0, deadline - time.monotonic()),
                               what=f"{kind}/{object_name} InvalidSpec")
            invalid[name] = condition(obj, SUMMARY[kind])["message"]
        except AssertionError:
            live = objects.get(kind, object_name) or {}
            silent.append(f"{name} ({kind}): status {json.dumps(live.get('status'))[:300]}")

    expected = {name: where for name, _, _, where in entries}
    misplaced = [f"{name}: expected {expected[name]}" for name in refused if expected[name] != "admission"]
    misplaced += [f"{name}: expected {expected[name]}" for name in invalid if expected[name] != "invalid"]
    counts = {"refused at admission": len(refused), "InvalidSpec": len(invalid),
              "accepted silently": len(silent), "crashes": 0}

    print(f"\ncorpus of {len(entries)} malformed objects: refused at admission {len(refused)}, "
          f"InvalidSpec {len(invalid)}, accepted silently {len(silent)}")
    assert not silent, silent
    assert not misplaced, misplaced

    # Messages a person can use: they name a field, and carry no HTTP dump.
    for name, message in invalid.items():
        assert message.startswith("spec.") and "HTTP response headers" not in message, (name, message)
    for name, message in refused.items():
        assert "spec" in message or "metadata.name" in message, (name, message)

    # The watch: counters flat, the operator alive, valid objects going their normal way.
    errors_before = sum(operator.metric("mlops_reconcile_errors_total", kind=k) for k in SUMMARY)
    invalid_before = sum(operator.metric("mlops_invalid_spec_total", kind=k) for k in SUMMARY)
    started = time.monotonic()
    training = objects.wait("ModelTraining", "valid-mt",
                            lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Invalid"),
                            timeout=480, what="the valid ModelTraining's run")  # 2 shared cores: a run can take minutes
    assert training["status"]["phase"] == "Succeeded", training["status"]
    wait_until(lambda: time.monotonic() - started >= WATCH_SECONDS, timeout=WATCH_SECONDS + 5, interval=1,
               what=f"the {WATCH_SECONDS} s watch")
    crashed = operator.process.poll() is not None
    logs = operator.logs()
    counts["crashes"] = int(crashed) + logs.count("Traceback")
    retries = [line for line in logs.splitlines() if any(text in line for text in KOPF_RETRY_LOGS)]
    errors_after = sum(operator.metric("mlops_reconcile_errors_total", kind=k) for k in SUMMARY)
    invalid_after = sum(operator.metric("mlops_invalid_spec_total", kind=k) for k in SUMMARY)
    print(f"corpus of {len(entries)} malformed objects: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert counts["crashes"] == 0, operator.logs()[-4000:]
    assert errors_before == errors_after == 0, operator.logs()[-4000:]
    assert invalid_after == invalid_before, "an invalid object was retried during the watch"
    assert not retries, retries  # nothing left for kopf to retry after the watch either
    assert operator.metric("mlops_invalid_spec_total", kind="ModelTraining") >= 1
    assert training["status"]["latestValidatedModel"]["version"] >= 1
    deployment = objects.get("ModelDeployment", "valid-md")
    assert condition(deployment, "Ready")["reason"] == "WaitingForModel"
    monitor = objects.get("DriftMonitor", "valid-dm")
    assert condition(monitor, "Ready")["reason"] in ("NoServedModel", "DeploymentNotFound")
    assert monitor["status"]["phase"] != "Invalid"
    # kopf's diff base stays a digest, even for the 200 KB specs.
    for name, kind, body, where in entries:
        if name in invalid and len(json.dumps(body)) > 100_000:
            annotations = objects.get(kind, body["metadata"]["name"])["metadata"]["annotations"]
            assert len(annotations["mlops.dev/last-handled-configuration"]) < 200, name
