"""The KFP training backend against the real Kubeflow Pipelines API server (KFP 2.17.0's API server,
ScheduledWorkflow controller and persistence agent, with MariaDB and MinIO, on the local control
plane: the ``kfp_backend`` fixture, tests/kfp_server_support.py).

What KFP writes is checked where it writes it: each run is an Argo ``Workflow`` and each recurring run
a ``ScheduledWorkflow`` in the fixture's namespace. Argo's workflow controller does not run here (no
Pod of a pipeline runs: KFP's driver needs ML Metadata, whose server cannot be built here), so run
states are driven by patching a Workflow's ``status.phase`` as Argo would; the persistence agent
reports it to the API server. What the pipeline's export step writes is written by the test through
the same registry calls (as in test_modeltraining_kfp.py). One test runs the operator itself as a
process against the server, SIGKILLed once between its run submit and the run's end; the last one takes
the fires of a recurring run created when the module started (the ``firing`` fixture).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator

import pytest

import pipeline_support
from kube_support import OperatorProcess, wait_until
from mlops_operator.api.modeltraining import ModelTrainingSpec, ModelTrainingStatus, RunRecord
from mlops_operator.backends import pipeline_package, training_kfp
from mlops_operator.backends.training import KfpTraining, ScheduleRequest
from mlops_operator.backends.training_kfp import KfpConnection, RequestRejected
from mlops_operator.reconcile import modeltraining
from mlops_operator.settings import Settings

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline v2:FutureWarning")]

MODEL = "churn"
NAMESPACE = "team-a"
UID = "3f2a9c1d-0000-4000-8000-000000000000"
PARAMETERS = {"dataset_uri": "s3://data/churn.csv", "target": "churned"}


def run_async(coroutine):
    return asyncio.run(coroutine)


def kfp_training(kfp_backend, name: str, tmp_path: Path) -> KfpTraining:
    """KfpTraining for one ModelTraining on the real KFP API server."""
    spec = ModelTrainingSpec.model_validate({"model": MODEL, "backend": "kfp",
                                             "dataset": {"uri": "s3://data/churn.csv", "target": "churned"}})
    settings = Settings(kfp_host=kfp_backend.url, data_dir=tmp_path / "data",
                        artifact_root=(tmp_path / "artifacts").as_uri())
    return KfpTraining(spec, NAMESPACE, name, settings)


@pytest.fixture
def backend(kfp_backend, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KfpTraining]:
    """KfpTraining for one ModelTraining (a name per test) on the real KFP API server."""
    name = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40].rstrip("-")
    training = kfp_training(kfp_backend, name, tmp_path)
    yield training
    # A test that failed half-way leaves no recurring run firing into the next tests.
    training_kfp.delete_recurring_run(connection(kfp_backend), training.recurring_run_name)


@pytest.fixture(scope="module", autouse=True)
def firing(kfp_backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KfpTraining, str]]:
    """(backend, recurring run id): the every-minute recurring run of the fires test (the module's last),
    created when the module starts. Its fires come on the minute whatever the tests do, so the module's
    other tests fill the wait for the first one instead of that test waiting through it alone."""
    training = kfp_training(kfp_backend, "fires-of-the-recurring-run", tmp_path_factory.mktemp("fires"))
    try:
        yield training, schedule(training, "* * * * *").backend_id
    finally:
        training_kfp.delete_recurring_run(connection(kfp_backend), training.recurring_run_name)


def connection(kfp_backend) -> KfpConnection:
    return KfpConnection(kfp_backend.url, namespace=None, token=None)


def parameters(backend: KfpTraining) -> dict:
    return modeltraining.pipeline_parameters(backend.spec, backend.namespace, backend.settings.artifact_root_uri, None)


def wait_for_state(backend: KfpTraining, record: RunRecord, state: str) -> RunRecord:
    """Observe the run until the persistence agent has reported ``state`` to the API server."""
    return wait_until(lambda: (r := run_async(backend.observe(record)).record).state == state and r,
                      timeout=60, what=f"run {record.name} {state}")


def export(root: str, run_name: str, accuracy: float, tmp_path: Path) -> int:
    """What the pipeline's export step does for ``run_name`` (the pipeline's pods do not run here)."""
    return pipeline_support.export(root, NAMESPACE, MODEL, run_name, accuracy, tmp_path)


# ---- runs -----------------------------------------------------------------------------------


def test_a_run_of_the_builtin_pipeline_is_a_workflow_and_resubmitting_finds_it(backend, kfp_backend):
    run_name = f"{backend.name}-3f2a9c1d-g1"
    record = run_async(backend.submit(run_name, "spec change", parameters(backend)))
    assert (record.name, record.state) == (run_name, "Pending")
    run_id = record.backend_run_id

    workflow = wait_until(lambda: kfp_backend.workflow_of_run(run_id), what="the run's Workflow")
    assert workflow["metadata"]["name"].startswith("tabular-training-")
    assert workflow["spec"]["serviceAccountName"] == "pipeline-runner"
    assert workflow["metadata"]["labels"]["pipeline/runid"] == run_id

    # As after an operator restart between submit and status write: the same name finds the same run.
    again = run_async(backend.submit(run_name, "spec change", parameters(backend)))
    assert again.backend_run_id == run_id
    conn = connection(kfp_backend)
    found = training_kfp.find_run(conn, run_name, backend.experiment)
    assert found is not None and found.run_id == run_id
    stored = training_kfp.get_run(conn, run_id)
    assert (stored.name, stored.parameters["run_name"]) == (run_name, run_name)  # what the steps get
    assert len(kfp_backend.workflows(f"pipeline/runid={run_id}")) == 1
    assert training_kfp.find_run(conn, run_name + "x", backend.experiment) is None


def test_parameters_the_pipeline_does_not_take_are_rejected(backend, kfp_backend, tmp_path):
    # Checked by the backend before sending: a Failed record with InvalidSpec, nothing created.
    record = run_async(backend.submit(f"{backend.name}-g1", "spec change", {**parameters(backend), "bogus": 1}))
    assert (record.state, record.reason, record.backend_run_id) == ("Failed", "InvalidSpec", None)
    assert "bogus" in record.message

    # The real server rejects them too (400 → RequestRejected), when sent past the backend's own check.
    conn = connection(kfp_backend)
    package = str(pipeline_package.default_pipeline_package())
    arguments = pipeline_package.pipeline_arguments({"parameters": parameters(backend)}, "x", tmp_path, package)
    experiment_id = training_kfp._experiment_id(conn, backend.experiment)
    for bad in ({**arguments, "bogus": 1}, {k: v for k, v in arguments.items() if k != "dataset_uri"},
                {**arguments, "dataset_uri": 3}):
        with pytest.raises(RequestRejected) as rejected:
            conn._call("create run", lambda bad=bad: conn.client().create_run_from_pipeline_package(
                package, arguments=bad, run_name=f"{backend.name}-bad", experiment_id=experiment_id))
        assert rejected.value.status == 400, rejected.value
    with pytest.raises(RequestRejected) as unknown:
        training_kfp.get_run(conn, "00000000-0000-0000-0000-000000000000")
    assert unknown.value.status == 404
    assert training_kfp.find_run(conn, f"{backend.name}-bad", backend.experiment) is None
    assert training_kfp.find_run(conn, f"{backend.name}-g1", backend.experiment) is None


def test_run_states_follow_the_workflow_and_cancel_terminates_it(backend, kfp_backend, tmp_path):
    root = backend.settings.artifact_root_uri
    succeeded = run_async(backend.submit(f"{backend.name}-g1", "spec change", parameters(backend)))
    failed = run_async(backend.submit(f"{backend.name}-g2", "spec change", parameters(backend)))
    canceled = run_async(backend.submit(f"{backend.name}-g3", "spec change", parameters(backend)))
    workflows = {r.name: wait_until(lambda r=r: kfp_backend.workflow_of_run(r.backend_run_id),
                                    what="Workflow")["metadata"]["name"]
                 for r in (succeeded, failed, canceled)}

    kfp_backend.set_workflow_phase(workflows[succeeded.name], "Running")
    running = wait_for_state(backend, succeeded, "Running")
    assert running.started
    version = export(root, succeeded.name, 0.9, tmp_path)
    kfp_backend.set_workflow_phase(workflows[succeeded.name], "Succeeded")
    done = wait_for_state(backend, succeeded, "Succeeded")
    assert done.model_version == version and done.finished

    kfp_backend.set_workflow_phase(workflows[failed.name], "Failed", "step train failed")
    assert wait_for_state(backend, failed, "Failed").reason

    kfp_backend.set_workflow_phase(workflows[canceled.name], "Running")
    wait_for_state(backend, canceled, "Running")
    run_async(backend.cancel(canceled))
    workflow = kfp_backend.workflow_of_run(canceled.backend_run_id)
    assert workflow["spec"]["activeDeadlineSeconds"] == 0  # KFP's terminate: Argo stops the Pods
    assert training_kfp.get_run(connection(kfp_backend), canceled.backend_run_id).kfp_state == "CANCELING"
    run_async(backend.cancel(canceled))  # asked once only: CANCELING is left alone
    # Finished runs are left alone.
    run_async(backend.cancel(done))
    assert "activeDeadlineSeconds" not in kfp_backend.workflow_of_run(succeeded.backend_run_id)["spec"]


# ---- recurring runs -------------------------------------------------------------------------


def schedule(backend: KfpTraining, cron: str | None, enabled: bool = True, since=None):
    request = ScheduleRequest(cron, enabled, modeltraining.scheduled_run_prefix(backend.name, UID),
                              parameters(backend), since)
    return run_async(backend.sync_schedule(request))


def swfs_of(kfp_backend, backend: KfpTraining) -> list[dict]:
    """The ScheduledWorkflows of this backend's recurring run: KFP generates their names from the display
    name, lower-cased, without what a name cannot hold, cut at 25 characters (template.go)."""
    prefix = re.sub(r"[^a-z0-9-]+", "", backend.recurring_run_name.lower())[:25]
    return [s for s in kfp_backend.scheduled_workflows() if s["metadata"]["name"].startswith(prefix)]


def test_the_recurring_run_is_a_scheduled_workflow_kept_replaced_and_deleted(backend, kfp_backend):
    created = schedule(backend, "0 3 * * *")
    assert created.backend_id and created.runs == []
    (swf,) = wait_until(lambda: swfs_of(kfp_backend, backend), what="ScheduledWorkflow")
    assert swf["spec"]["trigger"]["cronSchedule"]["cron"] == "0 0 3 * * *"
    assert swf["spec"]["enabled"] is True and swf["spec"]["maxConcurrency"] == 1 and swf["spec"]["noCatchup"] is True
    fire_parameters = {p["name"]: p["value"] for p in swf["spec"]["workflow"]["parameters"]}
    assert modeltraining.scheduled_run_prefix(backend.name, UID) + "[[ScheduledTime]]" in json.dumps(fire_parameters)

    # The same spec keeps it; suspend disables it; resume enables it again.
    assert schedule(backend, "0 3 * * *").backend_id == created.backend_id
    assert [s["metadata"]["uid"] for s in swfs_of(kfp_backend, backend)] == [swf["metadata"]["uid"]]
    schedule(backend, "0 3 * * *", enabled=False)
    wait_until(lambda: [s["spec"]["enabled"] for s in swfs_of(kfp_backend, backend)] == [False], what="disabled")
    schedule(backend, "0 3 * * *")
    wait_until(lambda: [s["spec"]["enabled"] for s in swfs_of(kfp_backend, backend)] == [True], what="enabled")

    # A changed cron replaces it (KFP has no update).
    replaced = schedule(backend, "30 4 * * 1")
    assert replaced.backend_id != created.backend_id
    wait_until(lambda: [s["spec"]["trigger"]["cronSchedule"]["cron"] for s in swfs_of(kfp_backend, backend)]
               == ["0 30 4 * * 1"], what="the ScheduledWorkflow with the new cron")
    # A removed schedule deletes it.
    assert schedule(backend, None).backend_id is None
    wait_until(lambda: not swfs_of(kfp_backend, backend), what="ScheduledWorkflow deleted")
    assert training_kfp.find_recurring_runs(connection(kfp_backend), backend.recurring_run_name) == []


# ---- the operator process -------------------------------------------------------------------


def test_the_operator_runs_versions_and_cleans_up_through_the_real_server(kubeconfig, namespace, crds, objects,
                                                                           kfp_backend, tmp_path):
    """The operator as a process (MLOPS_KFP_HOST on the real server) for one ModelTraining with a schedule:
    its on-demand run is a Workflow and its schedule a ScheduledWorkflow; SIGKILLed and restarted, it
    submits nothing twice; the run's success reaches status as version 1; deleting the ModelTraining while
    a second run is active terminates that run and deletes the recurring run."""
    root = (tmp_path / "artifacts").as_uri()
    env = {"MLOPS_KFP_HOST": kfp_backend.url, "MLOPS_URI_ALLOWED_NETWORKS": "127.0.0.0/8", "MLOPS_ARTIFACT_ROOT": root}
    operator = OperatorProcess(kubeconfig, namespace, tmp_path / "operator", env=env).start()
    try:
        name = "churn-op"
        body = {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": name},
                "spec": {"model": name, "backend": "kfp", "schedule": "@daily",
                         "dataset": {"uri": "s3://data/churn.csv", "target": "churned"},
                         "validation": {"thresholds": [{"metric": "accuracy", "min": 0.5}]}}}
        objects.create(body)
        mt = objects.wait("ModelTraining", name, lambda o: (o.get("status") or {}).get("recurringRunId")
                          and (o["status"].get("latestRun") or {}).get("backendRunId"), what="run and recurring run")
        first = mt["status"]["latestRun"]
        run_id, recurring_run_id = first["backendRunId"], mt["status"]["recurringRunId"]
        display = f"{namespace}.{name}"
        workflow = wait_until(lambda: kfp_backend.workflow_of_run(run_id), what="the run's Workflow")
        wait_until(lambda: len(_scheduled_workflows_named(kfp_backend, display)) == 1, what="the ScheduledWorkflow")

        # A restart finds the run and the recurring run it made: nothing is submitted twice.
        operator.kill()
        operator = OperatorProcess(kubeconfig, namespace, operator.data_dir, env=env).start()
        kfp_backend.set_workflow_phase(workflow["metadata"]["name"], "Running")
        objects.wait("ModelTraining", name, lambda o: o["status"]["latestRun"].get("state") == "Running",
                     what="the run observed Running after the restart")
        conn = connection(kfp_backend)
        experiment_id = training_kfp._experiment_id(conn, "mlops-operator")
        runs = conn.client().list_runs(experiment_id=experiment_id, page_size=10,
                                       filter=training_kfp.display_name_filter(first["name"])).runs
        assert [r.run_id for r in runs or []] == [run_id]
        assert [j.recurring_run_id for j in training_kfp.find_recurring_runs(conn, display)] == [recurring_run_id]
        assert len(_scheduled_workflows_named(kfp_backend, display)) == 1

        # What the pipeline's export step writes (its Pods do not run here), then Argo's Succeeded.
        assert pipeline_support.export(root, namespace, name, first["name"], 0.9, tmp_path) == 1
        kfp_backend.set_workflow_phase(workflow["metadata"]["name"], "Succeeded")
        mt = objects.wait("ModelTraining", name,
                          lambda o: (o["status"].get("latestValidatedModel") or {}).get("version") == 1,
                          what="version 1 in status")
        assert mt["status"]["latestValidatedModel"]["run"] == first["name"]

        # A second run (a spec change), active when the ModelTraining is deleted: KFP terminates it,
        # the recurring run is gone, the finalizer is released.
        objects.patch("ModelTraining", name, {"spec": {"dataset": {"uri": "s3://data/churn-2.csv"}}})
        mt = objects.wait("ModelTraining", name, lambda o: o["status"]["latestRun"]["name"] != first["name"]
                          and o["status"]["latestRun"].get("backendRunId"), what="the second run")
        second = mt["status"]["latestRun"]["backendRunId"]
        second_workflow = wait_until(lambda: kfp_backend.workflow_of_run(second), what="the second Workflow")
        kfp_backend.set_workflow_phase(second_workflow["metadata"]["name"], "Running")
        objects.wait("ModelTraining", name, lambda o: o["status"]["latestRun"].get("state") == "Running",
                     what="the second run observed Running")
        objects.delete("ModelTraining", name)
        wait_until(lambda: not objects.list_all(), timeout=90, what="ModelTraining deleted")
        assert training_kfp.get_run(conn, second).kfp_state == "CANCELING"
        assert kfp_backend.workflow_of_run(second)["spec"]["activeDeadlineSeconds"] == 0
        assert training_kfp.find_recurring_runs(conn, display) == []
        wait_until(lambda: not _scheduled_workflows_named(kfp_backend, display), what="ScheduledWorkflow deleted")
    finally:
        if operator.process is not None and operator.process.poll() is None and objects.list_all():
            objects.delete_all()
            wait_until(lambda: not objects.list_all(), timeout=120, what="deletion")
        operator.stop()


def _scheduled_workflows_named(kfp_backend, display_name: str) -> list[dict]:
    prefix = re.sub(r"[^a-z0-9-]+", "", display_name.lower())[:25]
    return [s for s in kfp_backend.scheduled_workflows() if s["metadata"]["name"].startswith(prefix)]


# ---- the fires of a recurring run (last: see the firing fixture) ---------------------------


def test_fires_of_the_recurring_run_are_runs_with_their_own_versions(firing, kfp_backend, tmp_path):
    """Every minute: the ScheduledWorkflow controller fires it, the persistence agent reports the fire
    as a run with the recurring run's id, and the backend reads each fire as its own named run. (Last in
    the module: its recurring run, the ``firing`` fixture's, has been firing since the module started.)"""
    backend, recurring_run_id = firing
    root = backend.settings.artifact_root_uri
    prefix = modeltraining.scheduled_run_prefix(backend.name, UID)
    conn = connection(kfp_backend)
    (job,) = training_kfp.find_recurring_runs(conn, backend.recurring_run_name)

    versions = {}
    seen: set[str] = set()
    for accuracy in (0.8, 0.85):
        def new_fire():
            runs = [r for r in training_kfp.recurring_run_runs(conn, job) if r.run_id not in seen]
            return runs[0] if runs else None

        fire = wait_until(new_fire, timeout=150, interval=2, what="a fire reported as a run")
        seen.add(fire.run_id)
        assert fire.scheduled is not None
        (workflow,) = kfp_backend.workflows(f"pipeline/runid={fire.run_id}")
        assert workflow["metadata"]["ownerReferences"][0]["kind"] == "ScheduledWorkflow"
        run_name = prefix + fire.scheduled.astimezone(UTC).strftime(training_kfp.SCHEDULED_TIME_FORMAT)
        # The API reports the recurring run's parameters for a fire, macro unreplaced (the Workflow
        # carries no runtime parameters; what the steps get is the driver's, which cannot run here):
        # the backend names the fire from its scheduled_at, as the macro would.
        assert fire.parameters["run_name"] == prefix + training_kfp.SCHEDULED_TIME_MACRO

        versions[run_name] = export(root, run_name, accuracy, tmp_path)
        kfp_backend.set_workflow_phase(workflow["metadata"]["name"], "Succeeded")
        wait_until(lambda fire=fire: training_kfp.get_run(conn, fire.run_id).kfp_state == "SUCCEEDED",
                   what="fire reported succeeded")

    found = schedule(backend, "* * * * *", since=datetime(2000, 1, 1, tzinfo=UTC))
    assert found.backend_id == recurring_run_id
    recorded = {r.record.name: r.record for r in found.runs if r.record.name in versions}
    assert {name: record.model_version for name, record in recorded.items()} == versions
    assert sorted(versions.values()) == [1, 2]
    assert all(r.state == "Succeeded" and r.trigger.startswith("schedule * * * * * at ")
               for r in recorded.values())

    # The ModelTraining is deleted while the next fire runs: that fire is terminated and the recurring
    # run is gone, with no ScheduledWorkflow left to fire again.
    fire = wait_until(new_fire, timeout=150, interval=2, what="a third fire reported as a run")
    (workflow,) = kfp_backend.workflows(f"pipeline/runid={fire.run_id}")
    kfp_backend.set_workflow_phase(workflow["metadata"]["name"], "Running")
    wait_until(lambda: training_kfp.get_run(conn, fire.run_id).kfp_state == "RUNNING", what="fire reported running")
    run_async(backend.cleanup(ModelTrainingStatus()))
    assert training_kfp.get_run(conn, fire.run_id).kfp_state == "CANCELING"
    assert training_kfp.find_recurring_runs(conn, backend.recurring_run_name) == []
    wait_until(lambda: not swfs_of(kfp_backend, backend), what="ScheduledWorkflow deleted")
    # The fire's Workflow is owned by the ScheduledWorkflow: the garbage collector removes it (and
    # with it its Pods) once the recurring run is deleted, after KFP has terminated the run.
    wait_until(lambda: kfp_backend.workflow_of_run(fire.run_id) is None, what="the fire's Workflow collected")
