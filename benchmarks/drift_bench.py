"""Drift engine benchmark: our engine against a plain scipy loop and Evidently, on the same data.

Data (seeded, regenerated identically in each child): ``--rows`` reference rows and as many current
rows, 20 numeric features (normal, lognormal, uniform, Poisson counts with ties, zero-inflated;
some with 1% NaN) and 5 categorical ones (3 to 200 labels); 4 numeric and 2 categorical features are
shifted in the current window.

Each measured step runs in its own fresh (spawned) process, so peaks do not mix. In the child the
data is generated first, then the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and
the step is timed; "peak" is the child's VmHWM during the step, "above data" that peak less the RSS
the data already took before the step. Ratios are baseline / ours.

    python benchmarks/drift_bench.py                 # 1e6 x 1e6 rows (Evidently takes minutes)
    python benchmarks/drift_bench.py --quick         # 20 000 rows
    python benchmarks/drift_bench.py --skip-evidently
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "operator"))

NUMERIC_FEATURES = 20
CATEGORICAL_FEATURES = 5
CATEGORY_COUNTS = (3, 8, 20, 50, 200)
SHIFTED_NUMERIC = {0: "mean +0.05 sd", 6: "scale x1.1", 12: "lognormal sigma 1.0 -> 1.05", 18: "poisson 3 -> 3.05"}
SHIFTED_CATEGORICAL = {1: "one label +2 pts", 3: "frequencies flattened 10%"}


def make_frame(rows: int, seed: int, current: bool):
    """One synthetic frame; ``current`` applies the shifts. Same (rows, seed, current) -> same data."""
    import pandas as pd

    rng = np.random.default_rng([seed, int(current)])
    columns: dict[str, Any] = {}
    for i in range(NUMERIC_FEATURES):
        shifted = current and i in SHIFTED_NUMERIC
        kind = i % 5
        if kind == 0:
            values = rng.normal(0.05 if shifted else 0.0, 1.0, rows)
        elif kind == 1:
            values = rng.normal(10.0, 1.1 if shifted else 1.0, rows)
        elif kind == 2:
            values = rng.lognormal(0.0, 1.05 if shifted else 1.0, rows)
        elif kind == 3:
            values = rng.poisson(3.05 if shifted else 3.0, rows).astype(np.float64)
        else:
            values = np.where(rng.random(rows) < 0.4, 0.0, rng.exponential(2.0, rows))
        if i % 5 == 3:  # 1% missing
            values[rng.random(rows) < 0.01] = np.nan
        columns[f"num_{i:02d}"] = values
    for j, count in enumerate(CATEGORY_COUNTS):
        labels = np.array([f"c{j}_{k}" for k in range(count)], dtype=object)
        weights = 1.0 / np.arange(1, count + 1)  # Zipf-like
        if current and j == 1:
            weights[count // 2] += 0.02 * weights.sum() / (1 - 0.02)
        if current and j == 3:
            weights = 0.9 * weights + 0.1 * weights.mean()
        columns[f"cat_{j}"] = labels[rng.choice(count, rows, p=weights / weights.sum())]
    return pd.DataFrame(columns)


# ---------------------------------------------------------------------------------------------
# Measurement in a child process


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _measure(prepare: Callable[[], Any], step: Callable[[Any], Any]) -> dict[str, Any]:
    data = prepare()
    reset = _reset_peak()
    before = _rss_bytes()
    started, cpu_started = time.perf_counter(), time.process_time()
    outcome = step(data)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak = _peak_bytes()
    return {"seconds": seconds, "cpu": cpu, "peak": peak, "above": peak - before, "peak_reset": reset,
            "outcome": outcome}


def run_ours_build(rows: int, seed: int, workdir: str) -> dict[str, Any]:
    from mlops_operator import drift

    def step(reference):
        profile = drift.build_profile(reference)
        Path(workdir, "profile.json").write_text(json.dumps(profile))
        return {
            kind: [len(json.dumps(entry)) for entry in profile["features"].values() if entry["kind"] == kind]
            for kind in ("numeric", "categorical")
        } | {"total": len(json.dumps(profile))}

    return _measure(lambda: make_frame(rows, seed, current=False), step)


def run_ours_profile(rows: int, seed: int, workdir: str) -> dict[str, Any]:
    from mlops_operator import drift

    def step(current):
        profile = json.loads(Path(workdir, "profile.json").read_text())
        return drift.compare(profile, current).drifted_features

    return _measure(lambda: make_frame(rows, seed, current=True), step)


def run_ours_raw(rows: int, seed: int, workdir: str) -> dict[str, Any]:
    from mlops_operator import drift

    def step(frames):
        return drift.compare(frames[0], frames[1]).drifted_features

    return _measure(lambda: (make_frame(rows, seed, False), make_frame(rows, seed, True)), step)


def run_scipy(rows: int, seed: int, workdir: str) -> dict[str, Any]:
    from scipy import stats

    def step(frames):
        reference, current = frames
        p_values = {}
        for name in reference.columns:
            if name.startswith("num_"):
                p_values[name] = stats.ks_2samp(reference[name].dropna(), current[name].dropna()).pvalue
            else:
                ref_counts = reference[name].value_counts()
                cur_counts = current[name].value_counts().reindex(ref_counts.index.union(current[name].unique()))
                table = np.vstack([ref_counts.reindex(cur_counts.index).fillna(0), cur_counts.fillna(0)])
                p_values[name] = stats.chi2_contingency(table, correction=False).pvalue
        level = 0.05 / len(p_values)
        return [name for name, p in p_values.items() if p < level]

    return _measure(lambda: (make_frame(rows, seed, False), make_frame(rows, seed, True)), step)


def run_evidently(rows: int, seed: int, workdir: str) -> dict[str, Any]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    def step(frames):
        reference, current = frames
        snapshot = Report([DataDriftPreset()]).run(current, reference)
        for metric in snapshot.dict()["metrics"]:
            if metric["metric_name"].startswith("DriftedColumnsCount"):
                return f"{int(metric['value']['count'])} columns drifted"
        return "?"

    return _measure(lambda: (make_frame(rows, seed, False), make_frame(rows, seed, True)), step)


def in_child(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


# ---------------------------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in reference and in current")
    parser.add_argument("--quick", action="store_true", help="small run (20 000 rows)")
    parser.add_argument("--skip-evidently", action="store_true", help="leave Evidently out (minutes at 1e6 rows)")
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args()
    rows = 20_000 if args.quick else args.rows

    print(f"drift benchmark: {rows:,} reference x {rows:,} current rows, {NUMERIC_FEATURES} numeric + "
          f"{CATEGORICAL_FEATURES} categorical features; shifted: "
          f"{', '.join(f'num_{i:02d}' for i in SHIFTED_NUMERIC)}, {', '.join(f'cat_{j}' for j in SHIFTED_CATEGORICAL)}")
    print(f"cpus={os.cpu_count()} load average at start={os.getloadavg()[0]:.2f} (other work on the machine inflates "
          "wall time; cpu s is the child's own CPU time)")

    steps: list[tuple[str, Callable[..., dict[str, Any]]]] = [
        ("ours: build profile", run_ours_build),
        ("ours: compare vs profile", run_ours_profile),
        ("ours: compare vs raw rows", run_ours_raw),
        ("scipy loop (ks_2samp + chi2_contingency)", run_scipy),
    ]
    if not args.skip_evidently:
        steps.append(("evidently 0.7 DataDriftPreset", run_evidently))

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as workdir:
        for label, function in steps:
            results[label] = in_child(function, rows, args.seed, workdir)
            print(f"  done: {label} ({results[label]['seconds']:.2f} s)", flush=True)

    if not all(result["peak_reset"] for result in results.values()):
        print("note: could not reset the peak-RSS mark; peaks include data generation")
    width = 44
    print()
    print(f"{'step':<{width}} {'wall s':>9} {'cpu s':>9} {'peak MiB':>9} {'above data MiB':>15}")
    for label, result in results.items():
        print(f"{label:<{width}} {result['seconds']:>9.2f} {result['cpu']:>9.2f} {mib(result['peak']):>9} "
              f"{mib(result['above']):>15}")

    print()
    ours = {"profile": results["ours: compare vs profile"], "raw": results["ours: compare vs raw rows"]}
    print(f"{'ratio (baseline / ours)':<{width}} {'wall':>9} {'cpu':>9} {'peak':>9} {'above data':>15}")
    for label, result in results.items():
        if label.startswith("ours"):
            continue
        for name, mine in ours.items():
            print(f"{label.split(' (')[0] + ' / ours ' + name:<{width}} {result['seconds'] / mine['seconds']:>8.1f}x "
                  f"{result['cpu'] / mine['cpu']:>8.1f}x {result['peak'] / mine['peak']:>8.1f}x "
                  f"{result['above'] / max(mine['above'], 1):>14.1f}x")

    sizes = results["ours: build profile"]["outcome"]
    print()
    print(f"profile size: {sizes['total']:,} bytes total; per numeric feature {np.mean(sizes['numeric']):,.0f} bytes, "
          f"per categorical feature {np.mean(sizes['categorical']):,.0f} bytes "
          f"(max {max(sizes['categorical']):,}); independent of rows")
    print()
    print("verdicts (ours: psi+ks+wasserstein / chi2+js+psi, Bonferroni 0.05; scipy loop: ks / chi2, Bonferroni 0.05;"
          " evidently: its defaults):")
    for label, result in results.items():
        if not label.startswith("ours: build"):
            print(f"  {label}: {result['outcome']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
