"""Wall time of one local pipeline run vs the same steps done in-process, measured in the same run.

    python benchmarks/training_bench.py [--dataset iris] [--estimators 100] [--repeat 1]

Baselines (this process, imports done, measured in the same run as the candidate):
- same steps in-process: the pipeline's two stages (``components.stages.run_prepare_data`` and
  ``run_train_model``: extract, validate data, split, train, evaluate, validate model, export with
  profile and lineage) called directly, on files in a temporary directory, after one untimed
  warm-up (so lazy imports are paid before, as in a long-running operator);
- load+split+fit+score: the bundled dataset, split, a RandomForestClassifier fitted and scored.

Candidate: the same through ``training_local.submit`` (detached runner, kfp.local, one process per
task, Parquet hand-offs, registry export with profile and lineage), polled until it finishes.
Prints the times, the ratios (the goal: the local run within 5x of the same steps in-process) and
the per-task times of the run. ``--repeat`` runs the pair that many times and reports the median
ratio (the machine may be shared and noisy; each ratio compares runs made seconds apart).

The steady state is a warm run: the runner is forked from this process's training zygote, which
the first run starts (a fresh interpreter importing kfp, pandas, pyarrow and scikit-learn: seconds,
as every run paid before the zygote). So the first measurement is reported apart, as the cold run,
and the median ratio is over the warm runs (``--repeat 3`` or more gives two or more); ``--no-zygote``
measures runners started as fresh interpreters (``MLOPS_TRAINING_ZYGOTE=false``), every run cold.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.backends import training_local
from mlops_operator.components import evaluate, extract, split, stages, train
from mlops_operator.reconcile import modeltraining

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEP_START = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - Executing task '([\w-]+)'")
_STEP_END = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - Task '([\w-]+)' finished with status")


def direct(dataset: str, estimators: int, seed: int) -> tuple[float, float, dict]:
    """In-process: (total seconds, fit-only seconds, metrics)."""
    started = time.perf_counter()
    frame, _ = extract.load_dataset(f"sklearn://{dataset}")
    train_, test_, schema = split.split_dataset(frame, "target", "auto", 0.25, seed)
    fit_started = time.perf_counter()
    model, _ = train.train_model(train_, schema, "RandomForestClassifier", {"n_estimators": estimators}, seed)
    fit_seconds = time.perf_counter() - fit_started
    scores = evaluate.evaluate_model(model, test_, schema)
    return time.perf_counter() - started, fit_seconds, scores


def same_steps(dataset: str, estimators: int, seed: int, data_dir: Path) -> tuple[float, dict]:
    """The pipeline's steps in this process, as its two tasks call them: (seconds, metrics)."""
    work = data_dir / "files"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files = {name: SimpleNamespace(path=str(work / name)) for name in
             ("dataset", "production", "report", "production_valid", "train", "test", "model")}
    prepared = stages.run_prepare_data(dict(
        **files, dataset_uri=f"sklearn://{dataset}", dataset_format="auto", target="target", features=[],
        production_data={}, checks={}, task="auto", test_size=0.25, seed=seed, estimator="RandomForestClassifier",
        mix={}))
    trained = stages.run_train_model(dict(
        **files, schema=prepared.schema, estimator="RandomForestClassifier",
        estimator_params={"n_estimators": estimators}, seed=seed, champion_model_uri="", baseline_metrics={}, gate={},
        max_regression={}, artifact_root=(data_dir / "artifacts").resolve().as_uri(), model_namespace="bench",
        model_name="bench", run_name="bench-in-process", job_name="", job_id="", dataset_uri=f"sklearn://{dataset}",
        dataset_format="auto", dataset_digest=prepared.digest, dataset_rows=prepared.rows, test_size=0.25,
        pipeline_digest="", started_at=prepared.started_at, sources=prepared.sources, retrain_window={}))
    return time.perf_counter() - started, trained["metrics"]


def pipeline(dataset: str, estimators: int, seed: int, data_dir: Path,
             zygote: bool = True) -> tuple[float, training_local.RunStatus]:
    """Through the local backend, from submit to the final state."""
    # The parameters the operator passes for such a ModelTraining (one source: reconcile.modeltraining).
    spec = ModelTrainingSpec.model_validate({
        "model": "bench", "dataset": {"uri": f"sklearn://{dataset}", "target": "target"},
        "training": {"estimator": "RandomForestClassifier", "parameters": {"n_estimators": estimators}, "seed": seed},
    })
    artifact_root = (data_dir / "artifacts").resolve().as_uri()
    request = {"parameters": modeltraining.pipeline_parameters(spec, "bench", artifact_root, None)}
    started = time.perf_counter()
    status = training_local.submit("bench-run", request, data_dir, zygote=zygote)
    deadline = started + 600
    global runner_private_kib
    runner_private_kib = 0
    while not status.is_final and time.perf_counter() < deadline:
        time.sleep(0.1)
        if status.pid:
            runner_private_kib = max(runner_private_kib, _private_dirty_kib(status.pid) or 0)
        status = training_local.status("bench-run", data_dir)
    return time.perf_counter() - started, status


# The runner's peak private memory in the last pipeline() (sampled with its polls): what a run costs
# beyond the pages it shares with the zygote it was forked from.
runner_private_kib = 0


def _proc_kib(pid: int, file: str, field: str) -> int | None:
    """A ``<field>: <n> kB`` line of /proc/<pid>/<file>, in KiB; None when the process or the line is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _private_dirty_kib(pid: int) -> int | None:
    """Memory only ``pid`` has written (Private_Dirty of /proc/<pid>/smaps_rollup), in KiB."""
    return _proc_kib(pid, "smaps_rollup", "Private_Dirty")


def step_times(log: str) -> dict[str, float]:
    """Seconds per task from kfp.local's log lines."""
    starts: dict[str, datetime] = {}
    durations: dict[str, float] = {}
    for line in _ANSI.sub("", log).splitlines():
        if match := _STEP_START.match(line):
            starts[match.group(2)] = datetime.strptime(match.group(1), "%H:%M:%S.%f")
        elif (match := _STEP_END.match(line)) and match.group(2) in starts:
            end = datetime.strptime(match.group(1), "%H:%M:%S.%f")
            durations[match.group(2)] = (end - starts[match.group(2)]).total_seconds()
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="iris", choices=["iris", "wine", "breast_cancer", "digits"])
    parser.add_argument("--estimators", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="measure the pair this many times (median ratio)")
    parser.add_argument("--no-zygote", action="store_true",
                        help="start every runner as a fresh interpreter (MLOPS_TRAINING_ZYGOTE=false)")
    args = parser.parse_args()
    zygote = not args.no_zygote

    print(f"dataset sklearn://{args.dataset}, RandomForestClassifier(n_estimators={args.estimators})", flush=True)
    with tempfile.TemporaryDirectory(prefix="mlops-training-bench-warmup-") as tmp:
        same_steps(args.dataset, args.estimators, args.seed, Path(tmp))  # warm-up: lazy imports, caches
    ratios: list[float] = []
    direct_ratios: list[float] = []
    for attempt in range(1, args.repeat + 1):
        direct_seconds, fit_seconds, direct_scores = direct(args.dataset, args.estimators, args.seed)
        with tempfile.TemporaryDirectory(prefix="mlops-training-bench-") as tmp:
            steps_seconds, steps_scores = same_steps(args.dataset, args.estimators, args.seed, Path(tmp))
            run_seconds, status = pipeline(args.dataset, args.estimators, args.seed, Path(tmp), zygote)
            steps = step_times(training_local.read_log("bench-run", Path(tmp), tail_bytes=10_000_000))
        if status.state != training_local.SUCCEEDED:
            print(f"pipeline run did not succeed: {status.state} {status.reason}: {status.message}", file=sys.stderr)
            return 1
        ratios.append(run_seconds / steps_seconds)
        direct_ratios.append(run_seconds / direct_seconds)
        kind = "cold: starts the zygote" if zygote and attempt == 1 else "warm" if zygote else "no zygote"
        print(f"-- measurement {attempt} of {args.repeat} ({kind})")
        print(f"same steps in-process (7 steps, 2 stages):  {steps_seconds:8.2f} s")
        print(f"load+split+fit+score in-process:           {direct_seconds:8.2f} s   (fit alone {fit_seconds:.2f} s)")
        print(f"local pipeline run (submit -> SUCCEEDED):  {run_seconds:8.2f} s   (runner's own memory: "
              f"{runner_private_kib / 1024:.0f} MiB private at most, sampled)")
        print(f"ratio pipeline / same steps in-process:    {ratios[-1]:8.1f}x   (goal: within 5x)")
        print(f"ratio pipeline / load+split+fit+score:     {direct_ratios[-1]:8.1f}x")
        print("per task: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in steps.items()))
        same = all(abs(direct_scores[k] - status.outputs["metrics"][k]) < 1e-9 for k in direct_scores)
        same = same and all(abs(steps_scores[k] - status.outputs["metrics"][k]) < 1e-9 for k in steps_scores)
        print(f"same metrics in all three: {same} ({', '.join(f'{k}={v:.4f}' for k, v in direct_scores.items())})",
              flush=True)
        if not same:
            return 1
    if zygote and args.repeat > 1:
        print(f"cold run (starts the zygote): pipeline / same steps in-process {ratios[0]:.1f}x")
        ratios, direct_ratios = ratios[1:], direct_ratios[1:]
        print(f"warm runs ({len(ratios)}, the steady state): ", end="")
    if len(ratios) > 1 or (zygote and args.repeat > 1):
        print(f"median ratio pipeline / same steps in-process: {statistics.median(ratios):.1f}x; "
              f"pipeline / load+split+fit+score: {statistics.median(direct_ratios):.1f}x")
    if zygote:
        pid = training_local.zygote_pid()
        rss = _rss_kib(pid) if pid else None
        print(f"training zygote: pid {pid}, RSS {rss / 1024:.0f} MiB (once per operator; a forked runner shares "
              "its pages)" if rss else "training zygote: not running")
    return 0


def _rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/<pid>/status)."""
    return _proc_kib(pid, "status", "VmRSS")


if __name__ == "__main__":
    sys.exit(main())
