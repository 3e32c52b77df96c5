"""The default spec's drift verdicts are calibrated: unchanged data is flagged at most alpha of the
time (plus sampling error), known shifts of two features flag exactly those two.

Data: scikit-learn's bundled breast_cancer (569 x 30) and digits (1797 x 64: integer pixels with
ties and constant columns), which no other test uses, and synthetic rows. Each check runs against
the reference's profile, as a DriftMonitor does. The fuller sweep with the FPR/power table is
``benchmarks/drift_calibration_bench.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import datasets

from mlops_operator.api.driftmonitor import DriftMonitorSpec
from mlops_operator.drift import null
from mlops_operator import drift

SPEC = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "x"}})
TESTS = {test.name: test.threshold for test in SPEC.tests}


def check(reference: pd.DataFrame, window: pd.DataFrame) -> drift.DriftReport:
    return drift.compare(drift.build_profile(reference), window, TESTS, alpha=SPEC.alpha,
                         correction=SPEC.correction, min_samples=SPEC.window.min_samples)


def allowed(trials: int, alpha: float = SPEC.alpha) -> float:
    """alpha plus sampling error: two standard errors of a rate measured in ``trials`` trials."""
    return alpha + 2 * math.sqrt(alpha * (1 - alpha) / trials)


@pytest.fixture(scope="module")
def breast_cancer() -> pd.DataFrame:
    return datasets.load_breast_cancer(as_frame=True).data


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return datasets.load_digits(as_frame=True).data


def split_alarms(frame: pd.DataFrame, sizes: list[tuple[int, int]], trials: int, seed: int) -> int:
    """Checks of unchanged windows that flagged drift: reference and window drawn without
    replacement from the shuffled dataset, disjoint, fresh each trial."""
    rng = np.random.default_rng(seed)
    alarms = 0
    for n_ref, m in sizes:
        for _ in range(trials):
            order = rng.permutation(len(frame))
            report = check(frame.iloc[order[:n_ref]], frame.iloc[order[n_ref:n_ref + m]])
            assert report.status != drift.INSUFFICIENT_DATA, "50 rows are enough for every default test"
            alarms += report.drift_detected
    return alarms


@pytest.mark.slow
def test_defaults_are_calibrated_on_breast_cancer(breast_cancer: pd.DataFrame) -> None:
    sizes, trials = [(50, 50), (100, 300), (284, 285)], 25
    alarms = split_alarms(breast_cancer, sizes, trials, seed=1)
    assert alarms / (len(sizes) * trials) <= allowed(len(sizes) * trials), alarms


@pytest.mark.slow
def test_defaults_are_calibrated_on_digits_with_ties_and_constant_columns(digits: pd.DataFrame) -> None:
    sizes, trials = [(50, 50), (300, 1000), (1000, 100)], 12
    alarms = split_alarms(digits, sizes, trials, seed=2)
    assert alarms / (len(sizes) * trials) <= allowed(len(sizes) * trials), alarms


def synthetic(rng: np.random.Generator, rows: int, shift: float = 0.0) -> pd.DataFrame:
    categories = np.array(["a", "b", "c", "d"], dtype=object)
    return pd.DataFrame({
        "normal": rng.normal(shift, 1.0, rows),
        "lognormal": rng.lognormal(0.0, 0.8, rows),
        "count": rng.poisson(3.0, rows).astype(float),
        "cat": categories[rng.choice(4, rows, p=[0.4, 0.3, 0.2, 0.1])],
        "flag": rng.random(rows) < 0.2,
    })


@pytest.mark.parametrize(("n_ref", "m", "trials"), [(50, 50, 60), (50, 5000, 40), (5000, 50, 40),
                                                     (2000, 100_000, 10)])
def test_defaults_are_calibrated_on_synthetic_windows_from_50_to_100000_rows(n_ref: int, m: int, trials: int) -> None:
    rng = np.random.default_rng(n_ref + m)
    alarms = sum(check(synthetic(rng, n_ref), synthetic(rng, m)).drift_detected for _ in range(trials))
    # Few trials per size here (the benchmark runs hundreds): at most one alarm more than alpha allows.
    assert alarms <= max(1, math.ceil(allowed(trials) * trials)), alarms


def test_psi_alone_would_flag_small_unchanged_windows_but_the_significance_rule_does_not(
        breast_cancer: pd.DataFrame) -> None:
    # The issue's complaint: with the plain PSI > 0.2 rule, ~90-row halves of a small dataset drift.
    rng = np.random.default_rng(3)
    order = rng.permutation(len(breast_cancer))
    reference, window = breast_cancer.iloc[order[:90]], breast_cancer.iloc[order[90:180]]
    report = check(reference, window)
    over_threshold = [name for name, f in report.features.items() if f.tests["psi"].score > 0.2]
    assert over_threshold, "at 90 rows unchanged data often has PSI above 0.2"
    assert not report.drift_detected
    for name in over_threshold:
        result = report.features[name].tests["psi"]
        assert result.adjusted_p_value >= SPEC.alpha and result.status == drift.NO_DRIFT


@pytest.mark.parametrize("use_raw", [False, True])
def test_two_shifted_features_and_only_they_are_flagged(breast_cancer: pd.DataFrame, use_raw: bool) -> None:
    shifted = ["mean radius", "worst texture"]
    rng = np.random.default_rng(4)
    exact = 0
    trials = 15
    for _ in range(trials):
        order = rng.permutation(len(breast_cancer))
        reference = breast_cancer.iloc[order[:284]]
        window = breast_cancer.iloc[order[284:]].copy()
        for name in shifted:
            window[name] += 1.0 * reference[name].std(ddof=0)
        ref = reference if use_raw else drift.build_profile(reference)
        report = drift.compare(ref, window, TESTS, alpha=SPEC.alpha, min_samples=SPEC.window.min_samples)
        exact += sorted(report.drifted_features) == sorted(shifted)
        assert set(report.drifted_features) <= set(shifted) or len(set(report.drifted_features) - set(shifted)) <= 1
    assert exact >= trials - 1, exact


def test_psi_null_is_calibrated_where_chi_squared_is_not() -> None:
    # 50 vs 50 rows, 10 bins: the chi-squared limit of PSI*nm/(n+m) is far too light-tailed there;
    # the Dirichlet-multinomial null used instead is exact for continuous data.
    rng = np.random.default_rng(5)
    n = m = 50
    ref_counts = np.full(10, 5.0)
    statistics = []
    for _ in range(2000):
        probabilities = rng.dirichlet(ref_counts + np.eye(10)[-1])
        cur = rng.multinomial(m, probabilities).astype(float)
        statistics.append(float(null.psi_rows(ref_counts, cur)))
    chi2_p = stats.chi2.sf(np.array(statistics) * n * m / (n + m), 9)
    mc_p = np.array([null.numeric_psi_pvalue(ref_counts, np.ones(10) * 5, s)[0] for s in statistics[:400]])
    assert (chi2_p < 0.01).mean() > 0.05, "the chi-squared limit is anti-conservative at 50 rows"
    assert (mc_p < 0.05).mean() <= allowed(400)


def test_ks_exact_matches_scipy_exact() -> None:
    rng = np.random.default_rng(6)
    for n, m in [(50, 50), (37, 80), (120, 300)]:
        x, y = rng.normal(size=n), rng.normal(0.4, 1, size=m)
        expected = stats.ks_2samp(x, y, method="exact")
        assert null.ks_pvalue_exact(expected.statistic, n, m) == pytest.approx(expected.pvalue, rel=1e-6)
