"""Contract tests of the ``kfp`` training backend: real ``kfp.Client`` calls against a fake KFP
v2beta1 API that validates every request with kfp-server-api models and kfp's protobuf types."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from mlops_operator.backends import training_kfp
from mlops_operator.backends.training_kfp import (
    BackendUnavailable,
    KfpConnection,
    RequestRejected,
    cancel_run,
    delete_recurring_run,
    ensure_recurring_run,
    find_run,
    get_run,
    kfp_cron,
    submit_run,
)

from .conftest import TOKEN
from .kfp_api_server import KfpApiServer, parse_filter, parse_model

pytestmark = pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline v2:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"dataset_uri": "file:///data/iris.csv", "n_estimators": 50, "learning_rate": 0.05, "balanced": True}
RUN_NAME = "iris-3f2a9c1d-g3"


def connect(server: KfpApiServer, token: str | None = TOKEN, **kwargs: Any) -> KfpConnection:
    return KfpConnection(server.url, namespace=None, token=token, **{"connect_timeout": 2, "read_timeout": 5, **kwargs})


def created_bodies(server: KfpApiServer, path: str) -> list[Any]:
    return [request.body for request in server.requests_to("POST", path)]


# ---- runs -----------------------------------------------------------------------------------


def test_submit_run_sends_a_run_the_api_accepts(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    run = submit_run(connect(kfp_api), RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")

    assert kfp_api.creates == {"experiments": 1, "runs": 1}
    (body,) = created_bodies(kfp_api, "/apis/v2beta1/runs")
    sent = parse_model(body, "V2beta1Run")  # strict: unknown fields or wrong types raise
    assert sent.display_name == RUN_NAME
    assert sent.experiment_id == next(iter(kfp_api.experiments))
    spec = json_format.ParseDict(sent.pipeline_spec, pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "tiny-train"
    assert set(spec.root.dag.tasks) == {"train", "evaluate"}
    parameters = sent.runtime_config.parameters
    assert parameters == PARAMS
    assert [type(parameters[k]) for k in ("dataset_uri", "n_estimators", "learning_rate", "balanced")] == [
        str, int, float, bool,
    ]
    assert run.run_id in kfp_api.runs
    assert (run.name, run.state, run.kfp_state) == (RUN_NAME, "Pending", "PENDING")
    assert (run.finished, run.message) == (None, None)
    assert run.parameters == PARAMS


def test_submit_run_with_the_same_name_returns_the_existing_run(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    first = submit_run(connect(kfp_api), RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
    # As after an operator restart between submit and status write: a new connection, same name.
    again = submit_run(connect(kfp_api), RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")

    assert again.run_id == first.run_id
    assert kfp_api.creates == {"experiments": 1, "runs": 1}
    lookups = kfp_api.requests_to("GET", "/apis/v2beta1/runs")
    assert len(lookups) == 2
    for lookup in lookups:
        assert lookup.query["experiment_id"] == [first.experiment_id]
        assert parse_filter(lookup.query["filter"][0]) == [
            {"operation": "EQUALS", "key": "display_name", "value": RUN_NAME}
        ]

    other = submit_run(connect(kfp_api), RUN_NAME.replace("g3", "g4"), str(tiny_pipeline), PARAMS, experiment="mlops")
    assert other.run_id != first.run_id
    assert kfp_api.creates["runs"] == 2


def test_find_run_looks_up_by_name_without_creating_anything(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    conn = connect(kfp_api)
    assert find_run(conn, RUN_NAME, experiment="mlops") is None
    assert kfp_api.creates == {}
    submitted = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
    assert find_run(conn, RUN_NAME, experiment="mlops").run_id == submitted.run_id
    assert find_run(conn, RUN_NAME + "-other", experiment="mlops") is None


def test_submit_run_rejects_parameters_that_do_not_fit_before_sending(
    kfp_api: KfpApiServer, tiny_pipeline: Path
) -> None:
    conn = connect(kfp_api)
    for params, problem in [
        ({**PARAMS, "n_estimators": "fifty"}, "'n_estimators' must be an integer"),
        ({**PARAMS, "balanced": 1}, "'balanced' must be a boolean"),
        ({**PARAMS, "epochs": 3}, "unknown parameter 'epochs'"),
        ({k: v for k, v in PARAMS.items() if k != "dataset_uri"}, "missing parameter 'dataset_uri'"),
    ]:
        with pytest.raises(RequestRejected, match=problem):
            submit_run(conn, RUN_NAME, str(tiny_pipeline), params, experiment="mlops")
    assert kfp_api.creates["runs"] == 0


def test_submit_run_rejects_a_package_that_is_not_a_pipeline(kfp_api: KfpApiServer, tmp_path: Path) -> None:
    package = tmp_path / "broken.yaml"
    package.write_text(yaml.safe_dump({"pipelineInfo": {"name": "x"}, "notAField": 1}))
    with pytest.raises(RequestRejected, match="invalid pipeline package"):
        submit_run(connect(kfp_api), RUN_NAME, str(package), {}, experiment="mlops")
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    ("kfp_state", "state"),
    [
        ("RUNTIME_STATE_UNSPECIFIED", "Pending"),
        ("PENDING", "Pending"),
        ("RUNNING", "Running"),
        ("CANCELING", "Running"),
        ("PAUSED", "Running"),
        ("SUCCEEDED", "Succeeded"),
        ("SKIPPED", "Succeeded"),
        ("FAILED", "Failed"),
        ("CANCELED", "Canceled"),
    ],
)
def test_get_run_maps_every_kfp_state(kfp_api: KfpApiServer, tiny_pipeline: Path, kfp_state: str, state: str) -> None:
    conn = connect(kfp_api)
    submitted = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
    kfp_api.set_run_state(submitted.run_id, kfp_state)

    run = get_run(conn, submitted.run_id)

    assert (run.state, run.kfp_state) == (state, kfp_state)
    assert run.is_finished == (state in ("Succeeded", "Failed", "Canceled"))
    assert (run.finished is not None) == run.is_finished
    assert run.created is not None
    assert (run.message is not None) == (state in ("Failed", "Canceled"))


def test_every_kfp_runtime_state_is_mapped() -> None:
    from kfp_server_api.models import V2beta1RuntimeState

    assert set(training_kfp.KFP_RUN_STATES) == set(V2beta1RuntimeState.allowable_values)


def test_get_run_of_a_failed_run_reports_error_times_and_tasks(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    conn = connect(kfp_api)
    submitted = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
    kfp_api.set_run_state(submitted.run_id, "RUNNING")
    kfp_api.set_run_state(
        submitted.run_id,
        "FAILED",
        error="task evaluate failed: OOMKilled",
        task_details=[
            {
                "run_id": submitted.run_id, "task_id": "t1", "display_name": "train", "state": "SUCCEEDED",
                "start_time": "2026-01-01T10:00:00Z", "end_time": "2026-01-01T10:05:00Z",
                "outputs": {"Output": {"artifact_ids": ["41"]}, "model": {"artifact_ids": ["42", "43"]}},
            },
            {
                "run_id": submitted.run_id, "task_id": "t2", "display_name": "evaluate", "state": "FAILED",
                "error": {"code": 2, "message": "OOMKilled"}, "start_time": "2026-01-01T10:05:00Z",
                "end_time": "1970-01-01T00:00:00Z",
            },
        ],
    )

    run = get_run(conn, submitted.run_id)

    assert (run.state, run.message) == ("Failed", "task evaluate failed: OOMKilled")
    assert run.started is not None and run.finished is not None and run.started <= run.finished
    train, evaluate = run.tasks
    assert (train.name, train.kfp_state) == ("train", "SUCCEEDED")
    assert train.outputs == {"Output": ["41"], "model": ["42", "43"]}
    assert (evaluate.name, evaluate.error, evaluate.finished) == ("evaluate", "OOMKilled", None)  # epoch → None


def test_failed_run_without_a_run_error_takes_the_failing_task_message(
    kfp_api: KfpApiServer, tiny_pipeline: Path
) -> None:
    conn = connect(kfp_api)
    submitted = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
    kfp_api.set_run_state(
        submitted.run_id,
        "FAILED",
        task_details=[{"display_name": "train", "state": "FAILED", "error": {"message": "exit code 1"}}],
    )
    assert get_run(conn, submitted.run_id).message == "exit code 1"


def test_get_run_of_an_unknown_run_is_rejected_with_404(kfp_api: KfpApiServer) -> None:
    with pytest.raises(RequestRejected) as raised:
        get_run(connect(kfp_api), "no-such-run")
    assert raised.value.status == 404


def test_cancel_run_terminates_an_active_run_once(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    conn = connect(kfp_api)
    active = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
    kfp_api.set_run_state(active.run_id, "RUNNING")
    done = submit_run(conn, RUN_NAME + "-done", str(tiny_pipeline), PARAMS, experiment="mlops")
    kfp_api.set_run_state(done.run_id, "SUCCEEDED")

    cancel_run(conn, active.run_id)
    cancel_run(conn, active.run_id)  # already CANCELING: nothing more to ask
    cancel_run(conn, done.run_id)  # finished: left alone
    cancel_run(conn, "no-such-run")  # gone: nothing to do

    assert get_run(conn, active.run_id).kfp_state == "CANCELING"
    assert len(kfp_api.requests_to("POST", f"/apis/v2beta1/runs/{active.run_id}:terminate")) == 1
    assert kfp_api.requests_to("POST", f"/apis/v2beta1/runs/{done.run_id}:terminate") == []


# ---- recurring runs -------------------------------------------------------------------------


def test_recurring_run_is_created_kept_replaced_suspended_and_deleted(
    kfp_api: KfpApiServer, tiny_pipeline: Path
) -> None:
    conn = connect(kfp_api)
    name = "iris-3f2a9c1d-schedule"

    first = ensure_recurring_run(conn, name, str(tiny_pipeline), PARAMS, "*/15 * * * *", experiment="mlops")
    (body,) = created_bodies(kfp_api, "/apis/v2beta1/recurringruns")
    sent = parse_model(body, "V2beta1RecurringRun")
    assert sent.trigger.cron_schedule.cron == "0 */15 * * * *"
    assert (sent.display_name, sent.mode, sent.max_concurrency, sent.no_catchup) == (name, "ENABLE", "1", True)
    assert sent.runtime_config.parameters == PARAMS
    json_format.ParseDict(sent.pipeline_spec, pipeline_spec_pb2.PipelineSpec())

    # Unchanged: kept as it is.
    assert ensure_recurring_run(conn, name, str(tiny_pipeline), PARAMS, "*/15 * * * *", experiment="mlops") == first
    assert (kfp_api.creates["recurring_runs"], kfp_api.deletes["recurring_runs"]) == (1, 0)

    # New schedule: replaced.
    second = ensure_recurring_run(conn, name, str(tiny_pipeline), PARAMS, "0 3 * * 1-5", experiment="mlops")
    assert second != first and set(kfp_api.recurring_runs) == {second}
    assert kfp_api.recurring_runs[second].trigger.cron_schedule.cron == "0 0 3 * * 1-5"

    # New parameters: replaced.
    changed = {**PARAMS, "n_estimators": 400}
    third = ensure_recurring_run(conn, name, str(tiny_pipeline), changed, "0 3 * * 1-5", experiment="mlops")
    assert third != second and set(kfp_api.recurring_runs) == {third}
    assert kfp_api.recurring_runs[third].runtime_config.parameters["n_estimators"] == 400
    assert (kfp_api.creates["recurring_runs"], kfp_api.deletes["recurring_runs"]) == (3, 2)

    # Suspended and resumed: disabled and enabled in place.
    args = (conn, name, str(tiny_pipeline), changed, "0 3 * * 1-5")
    assert ensure_recurring_run(*args, experiment="mlops", enabled=False) == third
    assert kfp_api.recurring_runs[third].status == "DISABLED"
    assert ensure_recurring_run(*args, experiment="mlops", enabled=True) == third
    assert kfp_api.recurring_runs[third].status == "ENABLED"
    assert kfp_api.creates["recurring_runs"] == 3

    assert delete_recurring_run(conn, name) == 1
    assert kfp_api.recurring_runs == {}
    assert delete_recurring_run(conn, name) == 0


def test_fires_of_a_recurring_run_are_read_back_by_its_id(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    import datetime as dt

    conn = connect(kfp_api)
    params = {**PARAMS, "dataset_uri": "s3://data/[[ScheduledTime]].csv"}
    recurring_run_id = ensure_recurring_run(conn, "ns.iris", str(tiny_pipeline), params, "@hourly", experiment="mlops")
    other_id = ensure_recurring_run(conn, "ns.other", str(tiny_pipeline), PARAMS, "@hourly", experiment="mlops")
    (job,) = training_kfp.find_recurring_runs(conn, "ns.iris")
    assert (job.recurring_run_id, job.name, job.enabled) == (recurring_run_id, "ns.iris", True)
    assert training_kfp.recurring_run_runs(conn, job) == []

    at = [dt.datetime(2026, 11, 24, hour, tzinfo=dt.timezone.utc) for hour in (9, 10)]
    first = kfp_api.fire(recurring_run_id, at[0])
    assert kfp_api.fire(recurring_run_id, at[1]) is None  # max_concurrency 1: the controller waits
    kfp_api.set_run_state(first, "SUCCEEDED")
    second = kfp_api.fire(recurring_run_id, at[1])
    kfp_api.fire(other_id, at[1])
    submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")  # not the recurring run's

    # Newest first by creation time (here within one second: KFP then orders by id).
    runs = sorted(training_kfp.recurring_run_runs(conn, job), key=lambda run: run.scheduled, reverse=True)
    assert [run.run_id for run in runs] == [second, first]
    assert [run.scheduled for run in runs] == [at[1], at[0]]
    assert {run.recurring_run_id for run in runs} == {recurring_run_id}
    swf = runs[0].name.rsplit("-", 2)[0]  # <swf name>-<index>-<fnv32a>, the swf name from the display name
    assert swf.startswith("nsiris") and len(swf) == len("nsiris") + 5 and runs[1].name.startswith(f"{swf}-1-")
    # What the steps receive has the macro replaced by the time the fire was scheduled for.
    assert kfp_api.fired_parameters[second]["dataset_uri"] == "s3://data/20261124100000.csv"
    (listing,) = [r for r in kfp_api.requests_to("GET", "/apis/v2beta1/runs") if "filter" in r.query][-1:]
    assert parse_filter(listing.query["filter"][0]) == [
        {"operation": "EQUALS", "key": "recurring_run_id", "value": recurring_run_id}]

    # Disabled (spec.suspend): no fires.
    ensure_recurring_run(conn, "ns.iris", str(tiny_pipeline), params, "@hourly", experiment="mlops", enabled=False)
    kfp_api.set_run_state(second, "SUCCEEDED")
    assert kfp_api.fire(recurring_run_id, at[1] + dt.timedelta(hours=1)) is None


def test_recurring_run_rejects_a_bad_schedule_before_sending(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    with pytest.raises(RequestRejected, match="invalid cron"):
        ensure_recurring_run(connect(kfp_api), "x", str(tiny_pipeline), PARAMS, "every monday", experiment="mlops")
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("*/15 * * * *", "0 */15 * * * *"),
        ("0  3 * *   1-5", "0 0 3 * * 1-5"),
        ("5 4 1 1,7 *", "0 5 4 1 1,7 *"),
        ("@daily", "@daily"),
        ("@hourly", "@hourly"),
    ],
)
def test_kfp_cron_prefixes_seconds(cron: str, expected: str) -> None:
    assert kfp_cron(cron) == expected


@pytest.mark.parametrize("cron", ["", "* * * *", "0 */15 * * * *", "61 * * * *", "@every 5m", "@reboot"])
def test_kfp_cron_rejects_what_is_not_a_standard_cron(cron: str) -> None:
    with pytest.raises(RequestRejected):
        kfp_cron(cron)


# ---- failures and secrets -------------------------------------------------------------------


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(30)
def test_unreachable_host_is_backend_unavailable_quickly() -> None:
    conn = KfpConnection(f"http://127.0.0.1:{_free_loopback_port()}", namespace=None, token=TOKEN, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unreachable") as raised:
        get_run(conn, "any")
    assert time.monotonic() - started < 5  # no kfp healthz retry loop (5 attempts, 5 s apart)
    assert TOKEN not in str(raised.value)


@pytest.mark.timeout(30)
def test_a_server_that_never_answers_times_out_on_first_contact() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never responds
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        conn = KfpConnection(f"http://{host}:{port}", namespace=None, token=TOKEN, read_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            conn.client()
        assert time.monotonic() - started < 5


@pytest.mark.timeout(30)
def test_a_stalled_answer_times_out(tiny_pipeline: Path) -> None:
    with KfpApiServer(token=TOKEN) as server:
        conn = connect(server, read_timeout=0.5)
        submitted = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
        server.stall_seconds = 10
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="timed out"):
            get_run(conn, submitted.run_id)
        assert time.monotonic() - started < 5


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [500, 503, 429, 401])
def test_server_errors_are_backend_unavailable(tiny_pipeline: Path, status: int) -> None:
    with KfpApiServer(token=TOKEN) as server:
        conn = connect(server)
        submitted = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
        server.fail_with = status
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=f"answered {status}"):
            get_run(conn, submitted.run_id)
        assert time.monotonic() - started < 5
        # Also on the first contact (kfp.Client probes healthz when no namespace is set).
        with pytest.raises(BackendUnavailable, match=f"answered {status}"):
            connect(server).client()


def test_client_errors_are_request_rejected(kfp_api: KfpApiServer, tiny_pipeline: Path) -> None:
    conn = connect(kfp_api)
    conn.client()
    kfp_api.fail_with = 400
    with pytest.raises(RequestRejected) as raised:
        submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
    assert raised.value.status == 400
    kfp_api.violations.clear()  # the injected 400s are not client mistakes


def test_the_token_is_sent_as_bearer_and_never_leaks(
    tiny_pipeline: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and kfp_server_api included
    with KfpApiServer(token=TOKEN) as server:
        conn = connect(server)
        run = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
        get_run(conn, run.run_id)
        ensure_recurring_run(conn, "sched", str(tiny_pipeline), PARAMS, "@daily", experiment="mlops")

        assert server.requests
        for request in server.requests:
            headers = {key.lower(): value for key, value in request.headers.items()}
            assert headers.get("authorization") == f"Bearer {TOKEN}", request.path

        # A proxy that echoes the request headers in its error body must not carry the token out.
        server.fail_with, server.fail_message = 502, f"upstream said: Authorization: Bearer {TOKEN}"
        with pytest.raises(BackendUnavailable) as unavailable:
            get_run(conn, run.run_id)
        # A wrong token gets 401: reported without the token that was sent.
        server.fail_with = None
        with pytest.raises(BackendUnavailable, match="401") as unauthorized:
            get_run(connect(server, token="wrong-" + TOKEN), run.run_id)

    errors = [str(unavailable.value), str(unauthorized.value)]
    assert "***" in errors[0]
    for text in [*errors, repr(conn), repr(run), caplog.text, *capsys.readouterr()]:
        assert TOKEN not in text


def test_connection_needs_a_scheme() -> None:
    with pytest.raises(ValueError):
        KfpConnection("ml-pipeline.kubeflow:8888", namespace=None)


def test_multi_user_namespace_is_used_and_no_home_state_is_written(
    tiny_pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kfp

    context_file = tmp_path / "kfp" / "context.json"
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(context_file))
    with KfpApiServer(token=TOKEN, multi_user=True) as server:
        conn = KfpConnection(server.url, namespace="team-a", token=TOKEN)
        run = submit_run(conn, RUN_NAME, str(tiny_pipeline), PARAMS, experiment="mlops")
        (experiment,) = server.experiments.values()
        assert experiment.namespace == "team-a"
        assert server.runs[run.run_id].experiment_id == experiment.experiment_id
        name = "sched"
        ensure_recurring_run(conn, name, str(tiny_pipeline), PARAMS, "@daily", experiment="mlops")
        assert delete_recurring_run(conn, name) == 1
        assert server.violations == []
        # Without a namespace kfp.Client asks healthz; in multi-user mode it would persist the
        # namespace it guessed to ~/.config/kfp/context.json. Not here.
        KfpConnection(server.url, namespace=None, token=TOKEN).client()
        assert len(server.requests_to("GET", "/apis/v2beta1/healthz")) == 1
    assert not context_file.exists()


# ---- the fake server itself must be strict --------------------------------------------------


def test_fake_api_rejects_malformed_requests(tiny_pipeline: Path) -> None:
    spec = yaml.safe_load(tiny_pipeline.read_text())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with KfpApiServer(token=TOKEN) as server:
        experiment = requests.post(
            f"{server.url}/apis/v2beta1/experiments", json={"display_name": "e"}, headers=headers, timeout=5
        ).json()
        run = {
            "display_name": "r",
            "experiment_id": experiment["experiment_id"],
            "pipeline_spec": spec,
            "runtime_config": {"parameters": {"dataset_uri": "file:///d.csv"}},
        }
        assert requests.post(f"{server.url}/apis/v2beta1/runs", json=run, headers=headers, timeout=5).status_code == 200

        def status(method: str, path: str, body: Any = None, **params: str) -> int:
            response = requests.request(
                method, f"{server.url}{path}", json=body, params=params, headers=headers, timeout=5
            )
            return response.status_code

        bad_runs = [
            {**run, "displayName": "r"},  # camelCase is not the API's field name
            {**run, "display_name": 7},
            {**run, "state": "RUNNING"},  # output only
            {**run, "pipeline_spec": {**spec, "pipelineInfo": {"name": "x", "colour": "red"}}},
            {**run, "pipeline_spec": {k: v for k, v in spec.items() if k != "deploymentSpec"}},
            {**run, "runtime_config": {"parameters": {"dataset_uri": "d", "n_estimators": "many"}}},
            {**run, "runtime_config": {"parameters": {"n_estimators": 3}}},  # dataset_uri is required
            {**run, "runtime_config": {"parameters": {"dataset_uri": "d", "colour": "red"}}},
            {k: v for k, v in run.items() if k != "pipeline_spec"},
        ]
        for body in bad_runs:
            assert status("POST", "/apis/v2beta1/runs", body) == 400, body
        job = {
            "display_name": "j",
            "experiment_id": experiment["experiment_id"],
            "mode": "ENABLE",
            "max_concurrency": "1",
            "trigger": {"cron_schedule": {"cron": "0 */5 * * * *"}},
            "pipeline_spec": spec,
            "runtime_config": {"parameters": {"dataset_uri": "d"}},
        }
        assert status("POST", "/apis/v2beta1/recurringruns", job) == 200
        for body in [
            {**job, "trigger": {"cron_schedule": {"cron": "*/5 * * * *"}}},  # five fields
            {**job, "max_concurrency": 11},
            {**job, "mode": "ON"},
            {**job, "trigger": {}},
        ]:
            assert status("POST", "/apis/v2beta1/recurringruns", body) == 400, body
        assert status("GET", "/apis/v2beta1/runs", filter="display_name=r") == 400
        assert status("GET", "/apis/v2beta1/runs", filter=json.dumps({"predicates": [{"key": "display_name"}]})) == 400
        assert status("GET", "/apis/v2beta1/runs", colour="red") == 400
        assert status("GET", "/apis/v2beta1/runs", sort_by="colour") == 400
        assert status("POST", "/apis/v2beta1/experiments", {"display_name": "e"}) == 409
        assert requests.get(f"{server.url}/apis/v2beta1/runs", timeout=5).status_code == 401
        assert len(server.violations) == len(bad_runs) + 4 + 4
        assert server.creates == {"experiments": 1, "runs": 1, "recurring_runs": 1}


# ---- the project's own pipeline -------------------------------------------------------------

TABULAR = REPO / "pipelines" / "tabular.yaml"


def _sample_value(parameter_type: int) -> Any:
    kinds = pipeline_spec_pb2.ParameterType
    return {
        kinds.STRING: "file:///data/sample.csv",
        kinds.NUMBER_INTEGER: 1,
        kinds.NUMBER_DOUBLE: 0.5,
        kinds.BOOLEAN: False,
        kinds.LIST: [],
        kinds.STRUCT: {},
    }[parameter_type]


@pytest.mark.skipif(not TABULAR.exists(), reason="pipelines/tabular.yaml not built yet")
def test_the_tabular_pipeline_is_accepted(kfp_api: KfpApiServer) -> None:
    spec = training_kfp.load_pipeline_spec(str(TABULAR))
    params = {
        name: _sample_value(definition.parameter_type)
        for name, definition in spec.root.input_definitions.parameters.items()
        if not definition.HasField("default_value") and not definition.is_optional
    }
    run = submit_run(connect(kfp_api), "tabular-0a1b2c3d-g1", str(TABULAR), params, experiment="mlops")
    assert kfp_api.creates["runs"] == 1
    assert json_format.ParseDict(
        kfp_api.runs[run.run_id].pipeline_spec, pipeline_spec_pb2.PipelineSpec()
    ).pipeline_info.name == spec.pipeline_info.name


@pytest.mark.skipif(not TABULAR.exists(), reason="pipelines/tabular.yaml not built yet")
def test_the_parameters_the_operator_builds_fit_the_tabular_pipeline(kfp_api: KfpApiServer) -> None:
    from mlops_operator.api.modeltraining import ModelTrainingSpec
    from mlops_operator.reconcile import modeltraining

    spec = ModelTrainingSpec.model_validate(
        {
            "model": "iris",
            "backend": "kfp",
            "dataset": {"uri": "file:///data/iris.csv", "target": "species"},
            "training": {"estimator": "RandomForestClassifier", "parameters": {"n_estimators": 50}},
            "validation": {"thresholds": [{"metric": "accuracy", "min": 0.8}]},
        }
    )
    from mlops_operator.backends.training_local import pipeline_arguments

    params = modeltraining.pipeline_parameters(spec, "ml", "file:///var/lib/mlops/artifacts", {"accuracy": 0.9})
    # As the ModelTraining handler does for backend kfp: coerce to the compiled pipeline's inputs.
    params = pipeline_arguments({"parameters": params}, "iris-0a1b2c3d-g1", "/var/lib/mlops", TABULAR)
    assert params["run_name"] == "iris-0a1b2c3d-g1" and params["pipeline_digest"]

    submit_run(connect(kfp_api), params["run_name"], str(TABULAR), params, experiment="mlops")
    assert kfp_api.creates["runs"] == 1


@pytest.mark.skipif(not TABULAR.exists(), reason="pipelines/tabular.yaml not built yet")
def test_the_tabular_pipeline_runs_in_the_configured_image_root_and_service_account(
    kfp_api: KfpApiServer, tmp_path: Path
) -> None:
    from mlops_operator.backends.training_local import pipeline_arguments, pipeline_digest
    from mlops_operator.settings import Settings

    default = Settings().training_image_ref
    assert training_kfp.with_component_image(str(TABULAR), default, tmp_path) == str(TABULAR)  # compiled with it
    image = "registry.example:5000/ml/mlops-operator:0.2.0-rc1"
    package = training_kfp.with_component_image(str(TABULAR), image, tmp_path)
    assert package != str(TABULAR) and training_kfp.with_component_image(str(TABULAR), image, tmp_path) == package
    params = pipeline_arguments({"parameters": {"dataset_uri": "s3://data/iris.csv", "target": "species",
                                                "model_name": "iris", "model_namespace": "ml"}}, "iris-0a1b2c3d-g1", tmp_path, package)
    assert params["pipeline_digest"] == pipeline_digest(package)  # lineage names what ran
    run = submit_run(connect(kfp_api), "iris-0a1b2c3d-g1", package, params, experiment="mlops",
                     pipeline_root="s3://mlops-pipelines/runs", service_account="training-runner")
    stored = kfp_api.runs[run.run_id]
    assert stored.service_account == "training-runner"
    assert stored.runtime_config.pipeline_root == "s3://mlops-pipelines/runs"
    document = stored.pipeline_spec.get("pipeline_spec", stored.pipeline_spec)
    json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())  # still a valid IR
    images = {name: executor["container"]["image"] for name, executor in document["deploymentSpec"]["executors"].items()}
    assert images == {"exec-prepare-data": image, "exec-train-model": image}


def test_a_bad_training_image_or_service_account_setting_is_refused() -> None:
    from pydantic import ValidationError

    from mlops_operator.settings import Settings

    for bad in ({"training_image": "two words"}, {"kfp_service_account": "Runner_1"}, {"kfp_pipeline_root": "s3://a b"}):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_the_operator_sends_the_builtin_pipeline_in_the_training_image_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlops_operator.backends.training import builtin_kfp_package
    from mlops_operator.settings import Settings

    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path))
    assert builtin_kfp_package(Settings()) == str(TABULAR)  # the default is what it is compiled with
    monkeypatch.setenv("MLOPS_TRAINING_IMAGE", "registry.example/mlops-operator@sha256:" + "0" * 64)
    package = Path(builtin_kfp_package(Settings()))
    assert package.parent == tmp_path / "pipelines"
    executors = yaml.safe_load(package.read_text())["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/mlops-operator@sha256:" + "0" * 64}


@pytest.mark.skipif(not TABULAR.exists(), reason="pipelines/tabular.yaml not built yet")
@pytest.mark.parametrize("caching", [False, True])
def test_resources_placement_retries_and_caching_reach_the_submitted_spec(
    kfp_api: KfpApiServer, tmp_path: Path, caching: bool
) -> None:
    from mlops_operator.api.modeltraining import ModelTrainingSpec
    from mlops_operator.backends.pipeline_package import pipeline_arguments
    from mlops_operator.backends.training import kfp_run_settings

    spec = ModelTrainingSpec.model_validate({
        "model": "iris", "backend": "kfp", "dataset": {"uri": "s3://data/iris.csv", "target": "species"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                      "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1}},
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60}],
        "retries": 2, "caching": caching})
    image = "registry.example/mlops-operator:0.2.0"
    package = training_kfp.with_run_settings(str(TABULAR), kfp_run_settings(spec, image), tmp_path)
    assert training_kfp.with_run_settings(str(TABULAR), kfp_run_settings(spec, image), tmp_path) == package
    params = pipeline_arguments({"parameters": {"dataset_uri": "s3://data/iris.csv", "target": "species",
                                                "model_name": "iris", "model_namespace": "ml"}}, "iris-0a1b2c3d-g1", tmp_path, package)
    run = submit_run(connect(kfp_api), "iris-0a1b2c3d-g1", package, params, experiment="mlops",
                     enable_caching=spec.caching)

    sent = kfp_api.runs[run.run_id].pipeline_spec
    pipeline = json_format.ParseDict(sent["pipeline_spec"], pipeline_spec_pb2.PipelineSpec())
    executors = json_format.MessageToDict(pipeline.deployment_spec)["executors"]
    assert set(executors) == {"exec-prepare-data", "exec-train-model"}
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == image
        assert container["resources"] == {
            "cpuRequest": 0.5, "cpuLimit": 2.0, "memoryRequest": 1.073741824, "memoryLimit": 4.294967296,
            "resourceCpuRequest": "500m", "resourceCpuLimit": "2", "resourceMemoryRequest": "1Gi",
            "resourceMemoryLimit": "4Gi",
            "accelerator": {"type": "nvidia.com/gpu", "count": "1", "resourceType": "nvidia.com/gpu",
                            "resourceCount": "1"}}
    for task in pipeline.root.dag.tasks.values():
        assert task.retry_policy.max_retry_count == 2
        assert task.caching_options.enable_cache is caching
    platform = sent["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == set(executors)
    for config in platform.values():
        assert config == {
            "nodeSelector": {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                             "tolerationSeconds": "60"}]}


def test_the_same_settings_compiled_by_kfp_and_kfp_kubernetes_read_the_same(tmp_path: Path) -> None:
    """with_run_settings writes what kfp's compiler and kfp-kubernetes write for the same task settings."""
    from kfp import compiler

    from .tiny_pipeline import configured_pipeline

    plain, by_kfp = tmp_path / "plain.yaml", tmp_path / "kfp.yaml"
    compiler.Compiler().compile(configured_pipeline(False), str(plain))
    compiler.Compiler().compile(configured_pipeline(True), str(by_kfp))
    ours = training_kfp.with_run_settings(str(plain), training_kfp.RunSettings(
        cpu_request="250m", cpu_limit="1", memory_request="512Mi", memory_limit="2Gi", gpus=2,
        node_selector={"pool": "gpu"}, tolerations=({"key": "nvidia.com/gpu", "operator": "Exists",
                                                     "effect": "NoSchedule"},), retries=3), tmp_path / "out")
    expected = list(yaml.safe_load_all(by_kfp.read_text()))
    produced = list(yaml.safe_load_all(Path(ours).read_text()))
    assert produced[1] == expected[1]  # the platform spec
    assert produced[0]["deploymentSpec"] == expected[0]["deploymentSpec"]
    assert produced[0]["root"]["dag"]["tasks"] == expected[0]["root"]["dag"]["tasks"]
