"""Two operator replicas against the real API server: one leads through a Lease, the other waits.

Short election timings keep the tests quick (lease 6 s, renew deadline 4 s, retry 1 s); the chart
uses client-go's defaults (15 / 10 / 2 s). Both replicas share one data dir, as processes on one host
do (on a cluster the local backends' state is per pod: use backends kfp and seldon with replicas).
"""

from __future__ import annotations

import signal
import socket
import time
import uuid

import pytest
from kubernetes import client

from kube_support import OperatorProcess, load_example, wait_until

pytestmark = pytest.mark.cluster

LEASE_SECONDS, RENEW_SECONDS, RETRY_SECONDS = 6, 4, 1


@pytest.fixture
def replicas(kubeconfig, namespace, crds, objects, tmp_path):
    lease = f"mlops-operator-{uuid.uuid4().hex[:8]}"
    env = {
        "MLOPS_LEADER_ELECTION": "true",
        "MLOPS_LEADER_ELECTION_NAMESPACE": namespace,
        "MLOPS_LEADER_ELECTION_LEASE_NAME": lease,
        "MLOPS_LEADER_ELECTION_LEASE_SECONDS": str(LEASE_SECONDS),
        "MLOPS_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": str(RENEW_SECONDS),
        "MLOPS_LEADER_ELECTION_RETRY_SECONDS": str(RETRY_SECONDS),
    }
    started: list[OperatorProcess] = []

    def replica(name: str) -> OperatorProcess:
        process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator", env=env)
        process.log_path = tmp_path / f"replica-{name}.log"
        started.append(process)
        return process

    replica.lease = lease  # type: ignore[attr-defined]
    try:
        yield replica
        leaders = [p for p in started if p.process is not None and p.process.poll() is None]
        if leaders:  # delete the test's objects while a leader still releases their finalizers
            remaining = objects.delete_all()
            wait_until(lambda: not objects.list_all(), timeout=180, what=f"deletion of {remaining}")
    finally:
        for process in started:
            process.stop()


def holder(kube_api, namespace: str, lease: str) -> str | None:
    try:
        return client.CoordinationV1Api(kube_api).read_namespaced_lease(lease, namespace).spec.holder_identity
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise


def identity(process: OperatorProcess) -> str:
    return f"{socket.gethostname()}-{process.process.pid}"


def test_a_standby_takes_over_after_the_leader_is_killed_and_nothing_runs_twice(
        replicas, objects, kube_api, namespace):
    first = replicas("a").start()
    second = replicas("b").start(standby=True)
    assert holder(kube_api, namespace, replicas.lease) == identity(first)
    assert second.healthy()  # ready too (a rolling update proceeds); the leader's traffic follows its label
    assert first.metric("mlops_leader") == 1 and second.metric("mlops_leader") == 0

    objects.create(load_example("training.yaml"))
    objects.wait("ModelTraining", "iris", lambda o: o.get("status", {}).get("phase") == "Running", what="run started")
    standby_lines = second.logs().splitlines()
    assert standby_lines and all("mlops_operator.leader: standby:" in line for line in standby_lines)  # nothing else

    killed = time.monotonic()
    first.kill()
    wait_until(lambda: second.metric("mlops_leader") == 1, timeout=LEASE_SECONDS + 20, what="the standby leading")
    handover = time.monotonic() - killed
    assert holder(kube_api, namespace, replicas.lease) == identity(second)
    # Not before the lease could have expired (the killed leader renewed at most one retry before it died).
    assert handover >= LEASE_SECONDS - RETRY_SECONDS - 0.5, handover
    print(f"handover after SIGKILL of the leader: {handover:.1f}s (lease {LEASE_SECONDS}s, retry {RETRY_SECONDS}s)")

    trained = objects.wait("ModelTraining", "iris", lambda o: o.get("status", {}).get("phase") == "Succeeded",
                           timeout=240, what="run succeeded under the new leader")
    runs = list((second.data_dir / "runs" / namespace).iterdir())
    assert [r.name for r in runs] == [trained["status"]["latestRun"]["name"]]
    assert len(trained["status"]["history"]) == 1
    assert trained["status"]["latestValidatedModel"]["version"] == 1
    assert len([e for e in objects.events("iris") if e.reason == "RunStarted"]) == 1


def test_a_clean_stop_releases_the_lease_and_the_standby_leads_at_once(replicas, kube_api, namespace):
    first = replicas("a").start()
    second = replicas("b").start(standby=True)
    stopped = time.monotonic()
    first.kill(signal.SIGTERM)
    assert first.process.returncode == 0
    wait_until(lambda: second.metric("mlops_leader") == 1, timeout=LEASE_SECONDS + 20, what="the standby leading")
    handover = time.monotonic() - stopped
    assert holder(kube_api, namespace, replicas.lease) == identity(second)
    assert handover < LEASE_SECONDS, f"{handover:.1f}s: the lease was not released, it expired"
    print(f"handover after a clean stop of the leader: {handover:.1f}s")

    # A standby stops cleanly too, and never held the lease.
    third = replicas("c").start(standby=True)
    third.kill(signal.SIGTERM)
    assert third.process.returncode == 0 and "stopped on standby" in third.logs()


def test_a_leader_that_finds_the_lease_taken_stops_at_once(replicas, kube_api, namespace):
    """Two leaders must never act together: a leader that finds another holder exits instead of
    finishing its work (its pod restarts on standby)."""
    leader = replicas("a").start()
    api = client.CoordinationV1Api(kube_api)
    lease = api.read_namespaced_lease(replicas.lease, namespace)
    lease.spec.holder_identity = "another-replica"
    api.replace_namespaced_lease(replicas.lease, namespace, lease)
    wait_until(lambda: leader.process.poll() is not None, timeout=RENEW_SECONDS + 10, what="the old leader exiting")
    assert leader.process.returncode == 1
    assert "held by another-replica" in leader.logs()
