"""Local training backend: request handling, idempotent submit, lost runners, cancel, and real kfp.local runs."""

from __future__ import annotations

import hashlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml

from mlops_operator.backends import artifacts
from mlops_operator.backends import training_local as tl
from mlops_operator.components import errors

REPO_ROOT = Path(__file__).resolve().parents[2]
IRIS = {"dataset_uri": "sklearn://iris", "target": "target", "model_name": "iris", "model_namespace": "ml"}


def wait_for(predicate, timeout: float, interval: float = 0.25):
    """Poll ``predicate`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_final(run_name: str, data_dir: Path, namespace: str = "default", timeout: float = 180) -> tl.RunStatus:
    return wait_for(lambda: (s := tl.status(run_name, data_dir, namespace)).is_final and s, timeout)


@pytest.fixture
def popen_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every runner the backend starts (forked from the zygote or not; and still starts it)."""
    calls: list[Path] = []
    real = tl._start_runner

    def recording(directory, *a, **kw):
        calls.append(directory)
        return real(directory, *a, **kw)

    monkeypatch.setattr(tl, "_start_runner", recording)
    return calls


def group_members(pgid: int) -> set[tuple[int, int]]:
    """(pid, start time) of the live processes of a process group."""
    members = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.add((int(entry.name), int(fields[19])))
    return members


def gone(pid: int, start: int | None) -> bool:
    """Whether the process (pid, start time) has ended (a zombie has)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return True
    return int(fields[19]) != start or fields[0] in ("Z", "X")


# --- pure request handling ----------------------------------------------------------------

def test_pipeline_arguments_normalise_the_request(tmp_path: Path) -> None:
    request = {
        "namespace": "ml",
        "parameters": {**IRIS, "estimator_params": {"n_estimators": 50, "max_features": 1.0}, "seed": 7.0},
        "gate": [{"metric": "accuracy", "min": 0.9}, {"metric": "rmse", "max": 60, "min": None}],
        "max_regression": 0.02,
        "task": None,
    }
    args = tl.pipeline_arguments(request, "iris-run-1", tmp_path)
    assert args["run_name"] == "iris-run-1"
    assert args["artifact_root"] == (tmp_path / "artifacts").resolve().as_uri()
    assert args["gate"] == {"accuracy": {"min": 0.9}, "rmse": {"max": 60}}
    assert args["max_regression"] == {"*": 0.02}
    assert json.loads(args["estimator_params"]) == {"n_estimators": 50, "max_features": 1.0}
    assert args["seed"] == 7 and isinstance(args["seed"], int)
    assert "task" not in args  # None leaves the pipeline default
    package = tl.default_pipeline_package()
    assert args["pipeline_digest"] == hashlib.sha256(package.read_bytes()).hexdigest()


@pytest.mark.parametrize("request_, match", [
    ({"dataset_uri": "sklearn://iris", "target": "target", "model_namespace": "ml"},
     r"missing pipeline parameters \['model_name'\]"),
    ({**IRIS, "learning_rate": 0.1}, r"unknown pipeline parameters \['learning_rate'\]"),
    ({**IRIS, "seed": 1.5}, "not a valid NUMBER_INTEGER"),
    ({**IRIS, "validation": "strict"}, "not a valid STRUCT"),
])
def test_pipeline_arguments_reject_bad_requests(tmp_path: Path, request_: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tl.pipeline_arguments(request_, "r", tmp_path)


def test_step_reasons_agree_with_the_steps() -> None:
    assert tl.STEP_ERROR_FILE_ENV == errors.STEP_ERROR_FILE_ENV
    assert set(tl.STEP_REASONS) == set(errors.KNOWN_REASONS)


def test_parse_step_error_reads_traceback_lines() -> None:
    log = "\n".join([
        "Traceback (most recent call last):",
        "mlops_operator.api.errors.DataValidationFailed: DataValidationFailed: 1 of 3 data checks failed: x",
        "RuntimeError: Pipeline 'tabular-training' finished with status FAILURE.",
    ])
    assert tl.parse_step_error(log) == ("DataValidationFailed", "1 of 3 data checks failed: x")
    assert tl.parse_step_error("all good") is None


def test_run_dir_rejects_unsafe_names(tmp_path: Path) -> None:
    assert tl.run_dir(tmp_path, "iris-1", "ml") == tmp_path / "runs" / "ml" / "iris-1"
    for name in ("../x", "A", "", "a/b"):
        with pytest.raises(ValueError):
            tl.run_dir(tmp_path, name)


# --- run directory lifecycle (no pipeline run needed) ---------------------------------------

def test_invalid_request_fails_without_starting_a_process(tmp_path: Path, popen_calls: list) -> None:
    status = tl.submit("bad-1", {"dataset_uri": "sklearn://iris"}, tmp_path)
    assert status.state == tl.FAILED and status.reason == "InvalidSpec" and "missing pipeline parameters" in status.message
    assert status.is_final and status.pid is None and popen_calls == []
    assert tl.submit("bad-1", {**IRIS}, tmp_path) == status  # the run exists: nothing new happens


def test_dead_runner_is_reported_as_runner_lost(tmp_path: Path) -> None:
    directory = tl.run_dir(tmp_path, "lost-1")
    directory.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (directory / tl.PID_FILE).write_text(str(dead.pid))
    (directory / tl.STATE_FILE).write_text(json.dumps({"state": tl.RUNNING, "started": "2026-01-01T00:00:00Z"}))
    status = tl.status("lost-1", tmp_path)
    assert (status.state, status.reason) == (tl.FAILED, "RunnerLost")
    assert status.started == "2026-01-01T00:00:00Z" and status.finished
    assert json.loads((directory / tl.STATE_FILE).read_text())["reason"] == "RunnerLost"  # persisted


def test_the_runner_is_known_by_pid_and_start_time_not_by_a_reused_pid(tmp_path: Path) -> None:
    # A live process that is not the runner: what a pid reused since the runner ended looks like.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        start = tl.process_start_time(other.pid)
        assert start is not None and tl.process_start_time(2**22 + 1) is None
        for name, pid_file, alive in [("same", f"{other.pid} {start}", True),
                                      ("reused", f"{other.pid} {start - 1}", False),
                                      ("one-number", str(other.pid), False)]:  # an older pid file: by command line
            directory = tl.run_dir(tmp_path, name)
            directory.mkdir(parents=True)
            (directory / tl.PID_FILE).write_text(pid_file)
            (directory / tl.STATE_FILE).write_text(json.dumps({"state": tl.RUNNING}))
            assert tl._runner_alive(other.pid, directory) is alive, name
            assert tl._read_pid(directory) == other.pid
        assert tl.status("same", tmp_path).state == tl.RUNNING
        assert (tl.status("reused", tmp_path).reason, tl.status("one-number", tmp_path).reason) == ("RunnerLost",) * 2
        assert tl.cancel("reused", tmp_path).state == tl.FAILED  # lost already: nothing signalled
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_group_is_the_runs_by_command_line_or_working_directory(tmp_path: Path) -> None:
    """A runner forked from the zygote, and its tasks, have the zygote's command line: the run dir as
    their working directory marks them."""
    directory = (tmp_path / "run").resolve()
    directory.mkdir()
    member = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], cwd=directory,
                              start_new_session=True)
    try:
        assert tl.group_alive(member.pid, str(directory)) and tl.group_alive(member.pid)
        assert not tl.group_alive(member.pid, str(tmp_path / "other"))
    finally:
        member.kill()
        member.wait()
    assert not tl.group_alive(member.pid, str(directory))


def test_run_dir_without_runner_is_lost_after_the_grace_period(tmp_path: Path) -> None:
    directory = tl.run_dir(tmp_path, "orphan-1")
    directory.mkdir(parents=True)
    assert tl.status("orphan-1", tmp_path).state == tl.PENDING
    old = time.time() - tl.START_GRACE_SECONDS - 5
    os.utime(directory, (old, old))
    assert tl.status("orphan-1", tmp_path).reason == "RunnerLost"


def test_a_run_whose_submitter_died_before_starting_it_is_started_by_the_next_submit(
        tmp_path: Path, popen_calls: list) -> None:
    """An operator killed between creating the run dir and starting the runner: its restart submits
    the same run name again, and that starts the run (found by the kill test across the loop)."""
    directory = tl.run_dir(tmp_path, "killed-1", "ml")
    directory.mkdir(parents=True)
    (directory / tl.STATE_FILE).write_text(json.dumps({"state": tl.PENDING}))
    old = time.time() - tl.START_GRACE_SECONDS - 5
    os.utime(directory, (old, old))
    status = tl.submit("killed-1", {**IRIS, "namespace": "ml"}, tmp_path)
    assert len(popen_calls) == 1 and status.pid and status.state != tl.FAILED
    assert tl.submit("killed-1", {**IRIS, "namespace": "ml"}, tmp_path).pid == status.pid  # started once
    assert len(popen_calls) == 1
    tl.cancel("killed-1", tmp_path, "ml", grace_seconds=5)


def test_a_run_being_submitted_by_a_live_process_is_neither_started_again_nor_lost(
        tmp_path: Path, popen_calls: list) -> None:
    directory = tl.run_dir(tmp_path, "busy-1", "ml")
    directory.mkdir(parents=True)
    old = time.time() - tl.START_GRACE_SECONDS - 5
    os.utime(directory, (old, old))
    with open(directory / tl.SUBMIT_LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another submitter, alive, is setting the run up
        status = tl.submit("busy-1", {**IRIS, "namespace": "ml"}, tmp_path)
        assert popen_calls == [] and status.state == tl.PENDING
        os.utime(directory, (old, old))  # (creating the lock file touched the directory)
        assert tl.status("busy-1", tmp_path, "ml").state == tl.PENDING  # not RunnerLost while it works
    assert tl.status("busy-1", tmp_path, "ml").reason == "RunnerLost"  # it died without starting it


def test_status_of_unknown_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tl.status("nope", tmp_path)


def test_same_run_submitted_twice_starts_one_process_and_cancel_stops_it(tmp_path: Path, popen_calls: list) -> None:
    request = {**IRIS, "namespace": "ml"}
    results: list[tl.RunStatus] = []
    threads = [threading.Thread(target=lambda: results.append(tl.submit("twice-1", request, tmp_path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    again = tl.submit("twice-1", request, tmp_path)
    assert len(popen_calls) == 1
    pid = wait_for(lambda: tl.status("twice-1", tmp_path, "ml").pid, 10)
    assert {r.pid for r in results if r.pid} <= {pid} and again.pid == pid
    assert tl.group_alive(pid)

    status = tl.cancel("twice-1", tmp_path, "ml", grace_seconds=5)
    assert (status.state, status.reason) == (tl.CANCELED, "Canceled") and status.is_final
    assert not tl.group_alive(pid)
    assert tl.cancel("twice-1", tmp_path, "ml") == status  # idempotent
    assert tl.delete("twice-1", tmp_path, "ml") and not tl.run_dir(tmp_path, "twice-1", "ml").exists()


# --- real local runs through kfp.local ------------------------------------------------------

@pytest.mark.slow
# MLServer sends plain arrays to a model fitted on a DataFrame; sklearn warns, once.
@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_local_run_of_iris_end_to_end(tmp_path: Path) -> None:
    request = {"namespace": "ml", "parameters": {
        **IRIS, "estimator": "RandomForestClassifier", "estimator_params": {"n_estimators": 50},
        "validation": {"minRows": 100, "maxMissingFraction": 0.0},
        "gate": {"accuracy": {"min": 0.8}}, "baseline_metrics": {"accuracy": 0.5}, "max_regression": 0.05,
    }}
    started = time.monotonic()
    tl.submit("iris-e2e", request, tmp_path)
    status = wait_final("iris-e2e", tmp_path, "ml", timeout=180)
    elapsed = time.monotonic() - started
    assert status.state == tl.SUCCEEDED, (status, tl.read_log("iris-e2e", tmp_path, "ml")[-3000:])
    outputs = status.outputs
    assert set(outputs) == {"model_version", "model_uri", "metrics", "validated", "validation_reasons",
                            "profile_uri", "dataset_digest", "sources", "comparison"}
    assert outputs["sources"] == [{"name": "base", "uri": "sklearn://iris", "rows": 150,
                                   "digest": outputs["dataset_digest"]}]
    assert outputs["comparison"]["holdout"] == {"source": "dataset", "rows": 38}
    assert outputs["comparison"]["challenger"] == outputs["metrics"] and "champion" not in outputs["comparison"]
    root = artifacts.default_artifact_root(tmp_path)
    assert outputs["model_version"] == 1 and outputs["model_uri"] == f"{root}/models/ml/iris/1"
    assert outputs["validated"] is True and outputs["validation_reasons"] == []
    assert outputs["metrics"]["accuracy"] > 0.8 and len(outputs["dataset_digest"]) == 64
    assert status.started and status.finished

    version_dir = tmp_path / "artifacts" / "models" / "ml" / "iris" / "1"
    model = joblib.load(version_dir / "model.joblib")
    prediction = model.predict(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    assert prediction.tolist() == [0, 2]
    assert model.named_steps["estimator"].n_estimators == 50  # an int survived the trip through KFP

    info = artifacts.read_model_version(root, "ml", "iris", 1)
    assert info["validated"] and info["metrics"] == outputs["metrics"] and info["run"] == "iris-e2e"
    lineage = info["lineage"]
    assert lineage["pipeline"]["digest"] == hashlib.sha256(tl.default_pipeline_package().read_bytes()).hexdigest()
    assert lineage["dataset"] == {"uri": "sklearn://iris", "format": "auto", "digest": outputs["dataset_digest"], "rows": 150}
    assert lineage["estimator"]["params"] == {"n_estimators": 50, "random_state": 42}
    assert lineage["run"]["id"] and lineage["operatorVersion"] == "0.1.0"
    print(f"local iris run: {elapsed:.1f}s from submit to SUCCEEDED")


@pytest.mark.slow
def test_local_run_with_missing_dataset_is_dataset_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.csv"
    tl.submit("missing-1", {**IRIS, "dataset_uri": str(missing)}, tmp_path)
    status = wait_final("missing-1", tmp_path, timeout=120)
    assert (status.state, status.reason) == (tl.FAILED, "DatasetUnavailable")
    assert str(missing) in status.message and status.message.startswith("step extract:")
    assert not (tmp_path / "artifacts").exists()  # nothing was exported


@pytest.mark.slow
def test_local_run_reasons_for_bad_data_and_bad_estimator(tmp_path: Path) -> None:
    tl.submit("checks-1", {**IRIS, "validation": {"min_rows": 1000}}, tmp_path)
    tl.submit("spec-1", {**IRIS, "estimator": "RandomForestClassifer"}, tmp_path)
    checks = wait_final("checks-1", tmp_path, timeout=120)
    spec = wait_final("spec-1", tmp_path, timeout=120)
    assert (checks.reason, spec.reason) == ("DataValidationFailed", "InvalidSpec")
    assert "rows 150 < min_rows 1000" in checks.message
    assert "did you mean RandomForestClassifier" in spec.message


@pytest.mark.slow
def test_cancel_a_running_run_kills_its_steps(tmp_path: Path) -> None:
    tl.submit("cancel-1", {**IRIS}, tmp_path)
    status = wait_for(lambda: (s := tl.status("cancel-1", tmp_path)).state == tl.RUNNING and s, 60)
    assert "--zygote" in Path(f"/proc/{status.pid}/cmdline").read_text()  # forked from the zygote
    # Wait until a task process runs under the runner, so cancel has a group to kill.
    members = wait_for(lambda: len(m := group_members(status.pid)) >= 2 and m, 60, interval=0.05)
    canceled = tl.cancel("cancel-1", tmp_path)
    assert canceled.state == tl.CANCELED and not tl.group_alive(status.pid)
    assert all(gone(pid, start) for pid, start in members)  # the runner and its forked task
    time.sleep(0.5)
    assert tl.status("cancel-1", tmp_path).state == tl.CANCELED  # the killed runner wrote nothing after


@pytest.mark.slow
# Once quarantined (issue #15): a train-model task process aborted at interpreter exit ('terminate
# called without an active exception', a native library's thread) after writing its outputs. Tasks
# now run in forked children of the runner that leave with os._exit: no interpreter shutdown.
def test_run_survives_the_death_of_the_process_that_submitted_it(tmp_path: Path) -> None:
    # A stand-in operator submits the run and is then killed: the detached runner carries on, and a
    # fresh process (this one) follows it to the end from the run dir alone.
    script = (
        "import sys, time; from pathlib import Path; from mlops_operator.backends import training_local as tl; "
        f"tl.submit('orphan-run', {{'dataset_uri': 'sklearn://iris', 'target': 'target', 'model_name': 'iris', 'model_namespace': 'ml'}}, "
        f"Path({str(tmp_path)!r})); z = tl.zygote_pid(); print(z, tl.process_start_time(z), flush=True); "
        "time.sleep(600)"
    )
    operator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        zygote, zygote_start = (int(part) for part in operator.stdout.readline().split())
        running = wait_for(lambda: (s := tl.status("orphan-run", tmp_path)).state == tl.RUNNING and s, 60)
        # The runner was forked from the stand-in's zygote (its command line is the zygote's).
        assert "--zygote" in Path(f"/proc/{running.pid}/cmdline").read_text() and zygote != running.pid
        operator.kill()  # SIGKILL: nothing of the stand-in runs again
        operator.wait()
        wait_for(lambda: gone(zygote, zygote_start), 30, interval=0.05)  # the zygote does not outlive it
        assert tl.status("orphan-run", tmp_path).state == tl.RUNNING
        final = wait_final("orphan-run", tmp_path, timeout=180)
        assert final.state == tl.SUCCEEDED and final.pid == running.pid
        assert final.outputs["model_version"] == 1
        assert tl.submit("orphan-run", {**IRIS}, tmp_path) == final  # a restarted operator does not rerun it
    finally:
        if operator.poll() is None:
            operator.kill()


def test_runner_does_nothing_for_a_run_canceled_before_it_started(tmp_path: Path) -> None:
    from mlops_operator.backends import training_runner

    directory = tl.run_dir(tmp_path, "early-cancel")
    directory.mkdir(parents=True)
    (directory / tl.REQUEST_FILE).write_text(json.dumps({"pipelinePackage": "x", "arguments": {}}))
    (directory / tl.STATE_FILE).write_text(json.dumps({"state": tl.CANCELED, "reason": "Canceled"}))
    (directory / tl.CANCEL_FILE).write_text("now")
    assert training_runner.run(directory) == 0
    assert json.loads((directory / tl.STATE_FILE).read_text())["state"] == tl.CANCELED


@pytest.mark.parametrize(("failures", "reason", "calls", "state"), [
    (2, "PipelineFailed", 3, tl.SUCCEEDED),  # spec.retries 2: a third attempt succeeds
    (3, "PipelineFailed", 3, tl.FAILED),  # every attempt fails
    (1, "DataValidationFailed", 1, tl.FAILED),  # a retry cannot change it
    (1, "InvalidSpec", 1, tl.FAILED),
])
def test_the_runner_runs_the_pipeline_again_on_failure_up_to_spec_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int, reason: str, calls: int, state: str
) -> None:
    from mlops_operator.backends import training_runner

    directory = tmp_path / "run"
    directory.mkdir()
    tl._write_json(directory / tl.REQUEST_FILE, {"request": {"retries": 2}, "pipelinePackage": "p.yaml",
                                                  "arguments": {}})
    attempts = []

    def pipeline(package, arguments, root):
        attempts.append(package)
        if len(attempts) <= failures:
            tl._write_json(directory / tl.STEP_ERROR_FILE, {"step": "train", "reason": reason, "message": "boom"})
            raise RuntimeError("a step failed")
        return {"model_version": 1}

    monkeypatch.setattr(training_runner, "_run_pipeline", pipeline)
    assert training_runner.run(directory) == (0 if state == tl.SUCCEEDED else 1)
    assert len(attempts) == calls
    final = tl._read_json(directory / tl.STATE_FILE)
    assert final["state"] == state
    if state == tl.FAILED:
        assert final["reason"] == reason
        assert final["message"].startswith("step train: boom")
        assert ("attempt 3 of 3" in final["message"]) == (calls == 3)
    else:
        assert final["outputs"] == {"model_version": 1}


def test_the_compiled_tasks_run_forked_from_the_warm_runner() -> None:
    """Both tasks of the built-in pipeline have exactly the command the runner forks instead of
    starting a new interpreter (if kfp changed its script they would silently run slow again)."""
    from mlops_operator.backends.training_runner import forkable

    package = yaml.safe_load((REPO_ROOT / "pipelines" / "tabular.yaml").read_text())
    executors = package["deploymentSpec"]["executors"]
    assert len(executors) == 2
    for executor in executors.values():
        container = executor["container"]
        # kfp.local runs command + args, with 'python3' replaced by this interpreter.
        full = [part.replace("python3", sys.executable) for part in container["command"]] + container["args"]
        full[3] = container["command"][3]  # the component's own source keeps its text
        parsed = forkable(full)
        assert parsed is not None, container["command"][2]
        source, arguments = parsed
        assert "def " in source and "--executor_input" in arguments and "--function_to_execute" in arguments
    # Anything else runs as kfp.local starts it: a container component, or a script that installs packages.
    assert forkable(["python3", "-m", "kfp.dsl.executor_main", "--executor_input", "{}"]) is None
    script = container["command"][2]
    assert forkable(["sh", "-ec", "python3 -m pip install pandas && " + script, "src"]) is None


# --- the zygote --------------------------------------------------------------------------------

def canceled_run(data_dir: Path, name: str) -> Path:
    """A run dir whose runner has nothing to do (canceled before it started): the runner exits at once."""
    directory = tl.run_dir(data_dir, name)
    directory.mkdir(parents=True)
    (directory / tl.REQUEST_FILE).write_text(json.dumps({"pipelinePackage": "x", "arguments": {}}))
    (directory / tl.STATE_FILE).write_text(json.dumps({"state": tl.CANCELED, "reason": "Canceled"}))
    (directory / tl.CANCEL_FILE).write_text("now")
    return directory.resolve()


@pytest.mark.slow
def test_the_zygote_forks_runners_in_their_own_sessions_and_is_replaced_when_it_dies(tmp_path: Path) -> None:
    zygote = tl._Zygote()
    try:
        first = canceled_run(tmp_path, "first")
        pid, start = zygote.start_runner(first, {**os.environ, "MLOPS_TEST_MARK": "1"})
        forked_by = zygote.pid
        assert forked_by and pid != forked_by and start is not None
        # The runner names itself (pid and start time) before the zygote answers.
        assert (first / tl.PID_FILE).read_text() == f"{pid} {start}"
        assert (first / tl.LOG_FILE).exists()
        wait_for(lambda: gone(pid, start), 30, interval=0.05)
        assert json.loads((first / tl.STATE_FILE).read_text())["state"] == tl.CANCELED  # it ran run(): nothing to do

        # A killed zygote takes nothing with it, and the next run starts a new one.
        os.kill(forked_by, 9)
        wait_for(lambda: zygote.pid is None, 30, interval=0.05)
        second = canceled_run(tmp_path, "second")
        pid2, start2 = zygote.start_runner(second, dict(os.environ))
        assert zygote.pid not in (None, forked_by) and (second / tl.PID_FILE).read_text() == f"{pid2} {start2}"
        assert zygote._failures == 0
    finally:
        zygote.stop()
    assert zygote.pid is None


def test_a_zygote_that_cannot_start_gives_way_to_fresh_runners(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    zygote = tl._Zygote()
    monkeypatch.setattr(tl.sys, "executable", "/bin/false")  # exits at once: no greeting
    for _ in range(tl.ZYGOTE_MAX_FAILURES + 2):
        assert zygote.start_runner(canceled_run(tmp_path, f"r{_}"), {}) is None
    assert zygote._failures == tl.ZYGOTE_MAX_FAILURES and zygote.pid is None  # then no more attempts
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "did not start" in warnings[0].getMessage()  # logged once


def test_submit_falls_back_to_a_fresh_runner_without_the_zygote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    real = subprocess.Popen

    def recording(args, *a, **kw):
        started.append(list(args))
        return real(args, *a, **kw)

    monkeypatch.setattr(tl.subprocess, "Popen", recording)
    monkeypatch.setattr(tl._ZYGOTE, "start_runner", lambda directory, env: None)  # the zygote cannot
    status = tl.submit("fresh-1", {**IRIS}, tmp_path)
    assert started and started[-1][1:3] == ["-m", "mlops_operator.backends.training_runner"]
    pid, start = (int(part) for part in (tl.run_dir(tmp_path, "fresh-1") / tl.PID_FILE).read_text().split())
    assert pid == status.pid and start == tl.process_start_time(pid)
    tl.cancel("fresh-1", tmp_path, grace_seconds=5)
    started.clear()

    def not_asked(directory, env):
        raise AssertionError("the zygote was asked")

    monkeypatch.setattr(tl._ZYGOTE, "start_runner", not_asked)
    tl.submit("fresh-2", {**IRIS}, tmp_path, zygote=False)  # the setting off: no zygote asked
    assert len(started) == 1 and started[0][-1] == str(tl.run_dir(tmp_path, "fresh-2").resolve())
    tl.cancel("fresh-2", tmp_path, grace_seconds=5)


@pytest.mark.parametrize("forked", [True, False])
def test_a_zygote_that_hangs_mid_request_is_replaced_and_its_runner_adopted_if_it_forked_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: bool) -> None:
    """A zygote that took the request but never answers may have forked the runner (which names
    itself in the pid file before the zygote answers): that runner is the run's; without one,
    the caller starts a fresh runner. Either way the hung zygote is stopped."""
    fake = tmp_path / "fake_zygote.py"
    fake.write_text(
        "import json, socket, sys, time\n"
        "channel = socket.socket(fileno=int(sys.argv[-1]))\n"
        "channel.sendall(b'{\"ready\": true}\\n')\n"
        "request = json.loads(channel.makefile('rb').readline())\n"
        f"if {forked}:\n"
        "    open(request['run_dir'] + '/pid', 'w').write('4242 99')\n"
        "time.sleep(120)\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(tl.sys, "executable", str(wrapper))
    monkeypatch.setattr(tl, "ZYGOTE_REPLY_TIMEOUT", 1.0)
    monkeypatch.setattr(tl, "ZYGOTE_ORPHAN_WAIT", 1.0)
    zygote = tl._Zygote()
    directory = tl.run_dir(tmp_path, "hung")
    directory.mkdir(parents=True)
    try:
        assert zygote.start_runner(directory.resolve(), {}) == ((4242, 99) if forked else None)
        assert zygote.pid is None and zygote._failures == 1
    finally:
        zygote.stop()
