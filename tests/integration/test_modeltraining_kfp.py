"""ModelTraining with backend kfp: the operator as a real process against the KFP v2beta1 API contract
server (tests/contract/kfp_api_server.py), on the local control plane.

Pods of a pipeline do not run here (KFP's driver needs ML Metadata), so what the pipeline's export
step does is done by the test through the same registry calls (claim a version under the run name
the step receives, publish it), and run states are moved as KFP's persistence agent would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterator

import pytest

from contract.kfp_api_server import KfpApiServer
import pipeline_support
from kube_support import OperatorProcess, condition, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
NAME = "churn"


@pytest.fixture
def kfp_server() -> Iterator[KfpApiServer]:
    with KfpApiServer() as server:
        yield server
    assert server.violations == [], "requests the KFP API would reject"


@pytest.fixture
def artifact_root(tmp_path: Path) -> str:
    return (tmp_path / "artifacts").as_uri()


@pytest.fixture
def kfp_operator(kubeconfig, namespace, crds, objects, tmp_path: Path, kfp_server: KfpApiServer,
                 artifact_root: str) -> Iterator[OperatorProcess]:
    """The operator with MLOPS_KFP_HOST on the contract server (which outlives it: deletion talks to KFP)."""
    env = {"MLOPS_KFP_HOST": kfp_server.url, "MLOPS_URI_ALLOWED_NETWORKS": "127.0.0.0/8",
           "MLOPS_ARTIFACT_ROOT": artifact_root}
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator", env=env).start()
    yield process
    if process.process is not None and process.process.poll() is None:
        objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=120, what="deletion")
    process.stop()


def body(schedule: str | None = "*/5 * * * *") -> dict:
    spec = {"model": NAME, "backend": "kfp", "dataset": {"uri": "s3://data/churn.csv", "target": "churned"},
            "validation": {"thresholds": [{"metric": "accuracy", "min": 0.5}]}}
    if schedule:
        spec["schedule"] = schedule
    return {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": NAME}, "spec": spec}


def export(root: str, namespace: str, run_name: str, accuracy: float, tmp_path: Path) -> int:
    """What the pipeline's export step does for ``run_name`` (the pipeline's pods do not run here)."""
    return pipeline_support.export(root, namespace, NAME, run_name, accuracy, tmp_path)


def finish(server: KfpApiServer, run_id: str) -> None:
    server.set_run_state(run_id, "RUNNING")
    server.set_run_state(run_id, "SUCCEEDED")


def status_of(objects) -> dict:
    return objects.get("ModelTraining", NAME).get("status") or {}


def test_recurring_run_fires_version_and_the_schedule_follows_the_spec(kfp_operator, objects, kfp_server,
                                                                         artifact_root, tmp_path):
    objects.create(body())
    mt = objects.wait("ModelTraining", NAME, lambda o: (o.get("status") or {}).get("recurringRunId")
                      and (o["status"].get("latestRun") or {}).get("backendRunId"), what="run and recurring run")
    uid8 = mt["metadata"]["uid"].replace("-", "")[:8]
    first = mt["status"]["latestRun"]
    assert first["name"] == f"{NAME}-{uid8}-g1" and first["state"] == "Pending"
    (job,) = kfp_server.recurring_runs.values()
    assert job.recurring_run_id == mt["status"]["recurringRunId"]
    assert job.display_name == f"{objects.namespace}.{NAME}"
    assert job.trigger.cron_schedule.cron == "0 */5 * * * *"
    # Each fire's run name carries KFP's schedule-time macro.
    assert job.runtime_config.parameters["run_name"] == f"{NAME}-{uid8}-s[[ScheduledTime]]"

    # The on-demand run succeeds: version 1.
    assert export(artifact_root, objects.namespace, first["name"], 0.81, tmp_path) == 1
    finish(kfp_server, first["backendRunId"])
    objects.wait("ModelTraining", NAME, lambda o: (o["status"].get("latestValidatedModel") or {}).get("version") == 1,
                 what="version 1")

    # Two fires of the recurring run, each its own run with its own version.
    versions = {}
    for hour, accuracy in ((9, 0.83), (10, 0.86)):
        recurring_run_id = status_of(objects)["recurringRunId"]  # replaced when the baseline changed
        scheduled = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0) + timedelta(days=1)
        run_id = kfp_server.fire(recurring_run_id, scheduled)
        assert run_id is not None
        run_name = kfp_server.fired_parameters[run_id]["run_name"]  # what the steps receive
        assert run_name == f"{NAME}-{uid8}-s{scheduled:%Y%m%d%H%M%S}"
        mt = objects.wait("ModelTraining", NAME, lambda o: (o["status"].get("latestRun") or {}).get("name") == run_name,
                          what=f"fire at {scheduled} recorded")
        assert mt["status"]["latestRun"]["backendRunId"] == run_id
        assert mt["status"]["latestRun"]["trigger"] == f"schedule */5 * * * * at {scheduled:%Y-%m-%dT%H:%M:%SZ}"
        versions[run_name] = export(artifact_root, objects.namespace, run_name, accuracy, tmp_path)
        finish(kfp_server, run_id)
        mt = objects.wait("ModelTraining", NAME, lambda o: (o["status"].get("latestValidatedModel") or {}).get("run")
                          == run_name, what=f"version of {run_name}")
        assert mt["status"]["latestValidatedModel"]["version"] == versions[run_name]
        assert mt["status"]["latestValidatedModel"]["metrics"] == {"accuracy": accuracy}
    assert sorted(versions.values()) == [2, 3]
    history = status_of(objects)["history"]
    assert [(r["name"], r.get("modelVersion")) for r in history] == [
        *sorted(((n, v) for n, v in versions.items()), key=lambda item: -item[1]), (first["name"], 1)]
    assert condition(objects.get("ModelTraining", NAME), "Validated")["status"] == "True"
    assert kfp_operator.metric("mlops_training_runs_total", result="succeeded") == 3

    # A changed schedule replaces the recurring run; a removed one deletes it.
    objects.patch("ModelTraining", NAME, {"spec": {"schedule": "0 3 * * *"}})
    wait_until(lambda: [j.trigger.cron_schedule.cron for j in kfp_server.recurring_runs.values()] == ["0 0 3 * * *"],
               what="recurring run with the new schedule")
    objects.patch("ModelTraining", NAME, {"spec": {"schedule": None}})
    wait_until(lambda: not kfp_server.recurring_runs and "recurringRunId" not in status_of(objects),
               what="recurring run deleted")
    assert "nextScheduleTime" not in status_of(objects)
    # One connection (one kfp.Client, which probes healthz when built) served every reconcile.
    assert len(kfp_server.requests_to("GET", "/apis/v2beta1/healthz")) == 1


def test_deleting_the_modeltraining_terminates_its_runs_and_deletes_its_recurring_run(kfp_operator, objects,
                                                                                      kfp_server):
    objects.create(body("@daily"))
    mt = objects.wait("ModelTraining", NAME, lambda o: (o.get("status") or {}).get("recurringRunId")
                      and (o["status"].get("latestRun") or {}).get("backendRunId"), what="run and recurring run")
    on_demand = mt["status"]["latestRun"]["backendRunId"]
    kfp_server.set_run_state(on_demand, "RUNNING")
    # A fire while the on-demand run is active: not recorded yet (one active run in status), yet it
    # is the ModelTraining's and must stop with it.
    fired = kfp_server.fire(mt["status"]["recurringRunId"], datetime.now(UTC).replace(microsecond=0))
    kfp_server.set_run_state(fired, "RUNNING")
    wait_until(lambda: status_of(objects).get("latestRun", {}).get("state") == "Running", what="run observed")
    assert status_of(objects)["latestRun"]["backendRunId"] == on_demand

    objects.delete("ModelTraining", NAME)
    wait_until(lambda: not objects.list_all(), timeout=60, what="ModelTraining deleted")
    assert kfp_server.recurring_runs == {}
    assert {kfp_server.runs[run_id].state for run_id in (on_demand, fired)} == {"CANCELING"}
    assert json.dumps(kfp_server.deletes) == json.dumps({"recurring_runs": 1})


def test_a_run_past_spec_timeout_is_terminated_and_fails_with_deadline_exceeded(kfp_operator, objects, kfp_server):
    training = body(None)
    training["spec"].update({"timeout": "3s", "retries": 2, "caching": True,
                             "resources": {"limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1}},
                             "nodeSelector": {"pool": "gpu"},
                             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    objects.create(training)
    mt = objects.wait("ModelTraining", NAME, lambda o: (o.get("status") or {}).get("latestRun", {}).get("backendRunId"),
                      what="run submitted")
    run_id = mt["status"]["latestRun"]["backendRunId"]
    stored = kfp_server.runs[run_id].pipeline_spec  # the spec's settings reached KFP
    executors = stored["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["resources"]["accelerator"]["resourceCount"] for e in executors.values()} == {"1"}
    assert {t["retryPolicy"]["maxRetryCount"] for t in stored["pipeline_spec"]["root"]["dag"]["tasks"].values()} == {2}
    assert {t["cachingOptions"].get("enableCache", False)
            for t in stored["pipeline_spec"]["root"]["dag"]["tasks"].values()} == {True}
    platform = stored["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {json.dumps(c, sort_keys=True) for c in platform.values()} == {json.dumps(
        {"nodeSelector": {"labels": {"pool": "gpu"}},
         "tolerations": [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]}, sort_keys=True)}

    kfp_server.set_run_state(run_id, "RUNNING")  # started now, per its state history
    mt = objects.wait("ModelTraining", NAME, lambda o: o["status"].get("phase") == "Failed", timeout=60,
                      what="stopped after spec.timeout")
    latest = mt["status"]["latestRun"]
    assert (latest["state"], latest["reason"]) == ("Failed", "DeadlineExceeded")
    assert "spec.timeout 3s" in latest["message"]
    assert condition(mt, "Succeeded")["reason"] == "DeadlineExceeded"
    assert kfp_server.runs[run_id].state == "CANCELING"
    wait_until(lambda: [e for e in objects.events(NAME) if e.reason == "DeadlineExceeded"], what="event")


def test_run_settings_are_refused_before_any_run(kfp_operator, objects, kfp_server):
    from kubernetes.client.exceptions import ApiException

    local = {**body(None), "metadata": {"name": "local"}}
    local["spec"] = {**local["spec"], "backend": "local", "model": "local"}
    for extra, message in (({"nodeSelector": {"pool": "gpu"}}, "apply to the Pods of backends kfp and job"),
                           ({"resources": {"limits": {"cpu": "1"}}}, "apply to the Pods of backends kfp and job"),
                           ({"caching": True}, "caching needs backend kfp"),
                           ({"tolerations": [{"value": "x"}]}, "needs operator Exists")):
        with pytest.raises(ApiException) as refused:
            objects.create({**local, "spec": {**local["spec"], **extra}})
        assert refused.value.status == 422 and message in refused.value.body, refused.value.body

    mismatch = body(None)
    mismatch["spec"]["resources"] = {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}
    objects.create(mismatch)
    mt = objects.wait("ModelTraining", NAME, lambda o: (o.get("status") or {}).get("phase") == "Invalid",
                      what="InvalidSpec")
    assert "nvidia.com/gpu request and limit must be equal" in condition(mt, "Succeeded")["message"]
    assert kfp_server.creates["runs"] == 0
