"""Wall time of one local pipeline run vs the same training done directly in-process.

    python benchmarks/training_bench.py [--dataset breast_cancer] [--estimators 100]

Baseline (measured in the same run): load the bundled dataset, split, fit a RandomForestClassifier
and score it, all in this process. Candidate: the same through ``training_local.submit`` (detached
runner, kfp.local, one subprocess per step, Parquet hand-offs, registry export with profile and
lineage), polled until it finishes. Prints both, their ratio, and the per-step times of the run.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from mlops_operator.backends import training_local
from mlops_operator.components import evaluate, extract, split, train

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


def pipeline(dataset: str, estimators: int, seed: int, data_dir: Path) -> tuple[float, training_local.RunStatus]:
    """Through the local backend, from submit to the final state."""
    request = {"parameters": {
        "dataset_uri": f"sklearn://{dataset}", "target": "target", "model_name": "bench",
        "estimator": "RandomForestClassifier", "estimator_params": {"n_estimators": estimators}, "seed": seed,
    }}
    started = time.perf_counter()
    status = training_local.submit("bench-run", request, data_dir)
    deadline = started + 600
    while not status.is_final and time.perf_counter() < deadline:
        time.sleep(0.1)
        status = training_local.status("bench-run", data_dir)
    return time.perf_counter() - started, status


def step_times(log: str) -> dict[str, float]:
    """Seconds per step from kfp.local's log lines."""
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
    parser.add_argument("--dataset", default="breast_cancer", choices=["iris", "wine", "breast_cancer", "digits"])
    parser.add_argument("--estimators", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    direct_seconds, fit_seconds, direct_scores = direct(args.dataset, args.estimators, args.seed)
    with tempfile.TemporaryDirectory(prefix="mlops-training-bench-") as tmp:
        run_seconds, status = pipeline(args.dataset, args.estimators, args.seed, Path(tmp))
        steps = step_times(training_local.read_log("bench-run", Path(tmp), tail_bytes=10_000_000))
    if status.state != training_local.SUCCEEDED:
        print(f"pipeline run did not succeed: {status.state} {status.reason}: {status.message}", file=sys.stderr)
        return 1

    print(f"dataset sklearn://{args.dataset}, RandomForestClassifier(n_estimators={args.estimators})")
    print(f"direct in-process (load+split+fit+score): {direct_seconds:8.2f} s   (fit alone {fit_seconds:.2f} s)")
    print(f"local pipeline run (submit -> SUCCEEDED): {run_seconds:8.2f} s")
    print(f"ratio pipeline / direct:                  {run_seconds / direct_seconds:8.1f}x")
    print(f"ratio pipeline / fit alone:               {run_seconds / fit_seconds:8.1f}x")
    print("per step: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in steps.items()))
    same = all(abs(direct_scores[k] - status.outputs["metrics"][k]) < 1e-9 for k in direct_scores)
    print(f"same metrics as direct: {same} ({', '.join(f'{k}={v:.4f}' for k, v in direct_scores.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
