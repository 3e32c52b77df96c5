"""Drift tests' calibration: false-positive rate on unchanged windows and power on known shifts.

With the DriftMonitor's default spec (psi 0.2, ks 0.1, chi2 0.1; alpha 0.05; Bonferroni; minSamples 50),
for each (reference rows, window rows):

- false-positive rate: the share of checks of *unchanged* data that flag any feature. Each trial
  draws a fresh reference and a window without replacement from data of one distribution (a shuffled
  public dataset split in two, or synthetic rows), builds the reference profile as a training run
  does, and runs the check. The target is at most alpha (0.05) plus sampling error (the 95% upper
  Clopper-Pearson bound is printed beside it).
- power: the share of checks that flag exactly the two shifted features (and nothing else), per
  test, for mean shifts of a few sizes (in reference standard deviations) and window sizes.

Datasets: scikit-learn's bundled breast_cancer (569 x 30) and digits (1797 x 64, integer pixels
with ties and constant columns), and synthetic rows (normal, lognormal, Poisson counts, a 4-level
categorical, a boolean) for windows up to 100 000 rows.

    python benchmarks/drift_calibration_bench.py            # ~3 minutes on 2 cores
    python benchmarks/drift_calibration_bench.py --quick    # ~30 s
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "operator"))

from mlops_operator.api.driftmonitor import DriftMonitorSpec  # noqa: E402

from mlops_operator import drift  # noqa: E402

SPEC = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "x"}})
TESTS = {test.name: test.threshold for test in SPEC.tests}


def check(reference: pd.DataFrame, window: pd.DataFrame, tests: dict[str, float] | None = None):
    """One default-spec check against the reference's profile (as a DriftMonitor runs it)."""
    return drift.compare(drift.build_profile(reference), window, tests or TESTS, alpha=SPEC.alpha,
                         correction="bonferroni", min_samples=SPEC.window.min_samples)


def upper_bound(alarms: int, trials: int) -> float:
    """95% one-sided Clopper-Pearson upper bound of a rate."""
    return 1.0 if alarms == trials else float(stats.beta.ppf(0.95, alarms + 1, trials - alarms))


def dataset(name: str) -> pd.DataFrame:
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}[name]
    return loader(as_frame=True).data


def synthetic(rng: np.random.Generator, rows: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    shift = shift or {}
    categories = np.array(["a", "b", "c", "d"], dtype=object)
    return pd.DataFrame({
        "normal": rng.normal(shift.get("normal", 0.0), 1.0, rows),
        "normal2": rng.normal(shift.get("normal2", 0.0), 1.0, rows),
        "lognormal": rng.lognormal(0.0, 0.8, rows),
        "count": rng.poisson(3.0, rows).astype(float),
        "cat": categories[rng.choice(4, rows, p=[0.4, 0.3, 0.2, 0.1])],
        "flag": rng.random(rows) < 0.2,
    })


def split_fpr(frame: pd.DataFrame, n_ref: int, m: int, trials: int, seed: int) -> tuple[int, int]:
    """(alarms, trials) on a dataset: reference and window drawn without replacement, disjoint."""
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(trials):
        order = rng.permutation(len(frame))
        reference = frame.iloc[order[:n_ref]]
        window = frame.iloc[order[n_ref:n_ref + m]]
        alarms += check(reference, window).drift_detected
    return alarms, trials


def synthetic_fpr(n_ref: int, m: int, trials: int, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    alarms = sum(check(synthetic(rng, n_ref), synthetic(rng, m)).drift_detected for _ in range(trials))
    return alarms, trials


def split_power(frame: pd.DataFrame, features: tuple[str, str], shift_sd: float, n_ref: int, m: int, trials: int,
                seed: int) -> dict[str, float]:
    """Share of checks that flag exactly ``features`` (any test), and per test the share flagging both."""
    rng = np.random.default_rng(seed)
    exact = 0
    per_test = {test: 0 for test in TESTS if test != "chi2"}
    for _ in range(trials):
        order = rng.permutation(len(frame))
        reference = frame.iloc[order[:n_ref]]
        window = frame.iloc[order[n_ref:n_ref + m]].copy()
        for feature in features:
            window[feature] = window[feature] + shift_sd * reference[feature].std(ddof=0)
        report = check(reference, window)
        exact += set(report.drifted_features) == set(features)
        for test in per_test:
            per_test[test] += all(report.features[f].tests[test].drifted for f in features)
    return {"exact": exact / trials, **{test: count / trials for test, count in per_test.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    trials = 100 if args.quick else 400
    started = time.perf_counter()
    print(f"default spec: tests {TESTS}, alpha {SPEC.alpha}, correction {SPEC.correction}, "
          f"minSamples {SPEC.window.min_samples}")
    print("\nfalse-positive rate on unchanged windows (target <= alpha = 0.05)")
    print(f"{'data':<16}{'reference':>10}{'window':>9}{'trials':>8}{'FPR':>8}{'95% upper':>11}")
    rows = []
    for name, sizes in (("breast_cancer", [(50, 50), (100, 100), (284, 285), (469, 100)]),
                        ("digits", [(50, 50), (200, 200), (900, 897), (1697, 100)])):
        frame = dataset(name)
        for n_ref, m in sizes:
            rows.append((name, n_ref, m, *split_fpr(frame, n_ref, m, trials, seed=n_ref * 7 + m)))
            print(f"{rows[-1][0]:<16}{n_ref:>10}{m:>9}{trials:>8}{rows[-1][3] / trials:>8.3f}"
                  f"{upper_bound(rows[-1][3], trials):>11.3f}", flush=True)
    synthetic_sizes = [(50, 50), (50, 1000), (1000, 50), (200, 200), (1000, 1000), (10_000, 10_000),
                       (1000, 100_000), (100_000, 100_000)]
    for n_ref, m in synthetic_sizes:
        count = trials if n_ref * m <= 1e8 else max(20, trials // 10)
        alarms, _ = synthetic_fpr(n_ref, m, count, seed=n_ref + m)
        print(f"{'synthetic':<16}{n_ref:>10}{m:>9}{count:>8}{alarms / count:>8.3f}{upper_bound(alarms, count):>11.3f}",
              flush=True)

    print("\npower: share of checks flagging exactly the two shifted features (any test), and per test the share "
          "flagging both; mean shift in reference sd")
    frame = dataset("breast_cancer")
    features = ("mean radius", "worst texture")
    power_trials = max(20, trials // 4)
    print(f"breast_cancer, shifted: {', '.join(features)}; reference 284 rows; {power_trials} trials each")
    print(f"{'shift sd':>9}{'window':>8}{'exact':>8}{'psi':>8}{'ks':>8}")
    for shift in (0.25, 0.5, 1.0):
        for m in (50, 100, 285):
            result = split_power(frame, features, shift, 284, m, power_trials, seed=int(shift * 100) + m)
            print(f"{shift:>9}{m:>8}{result['exact']:>8.2f}{result['psi']:>8.2f}{result['ks']:>8.2f}", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
