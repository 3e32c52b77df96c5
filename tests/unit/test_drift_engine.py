"""Drift engine: statistics against scipy, profile against raw rows, verdicts on synthetic drift."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlops_operator import drift

K = drift.DEFAULT_QUANTILE_COUNT


def samples(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reference/current pairs covering continuous, heavy-tailed, tied and lopsided cases."""
    rng = np.random.default_rng(seed)
    return {
        "normal-shift": (rng.normal(size=5000), rng.normal(0.1, 1, size=3000)),
        "normal-same": (rng.normal(size=4000), rng.normal(size=4000)),
        "lognormal": (rng.lognormal(size=6000), rng.lognormal(0.05, 1.1, size=2000)),
        "integers-ties": (rng.integers(0, 10, 4000).astype(float), rng.integers(0, 11, 2500).astype(float)),
        "zero-inflated": (
            np.where(rng.random(5000) < 0.6, 0.0, rng.exponential(size=5000)),
            np.where(rng.random(3000) < 0.5, 0.0, rng.exponential(size=3000)),
        ),
        "small-current": (rng.normal(size=3000), rng.normal(0.5, 1, size=40)),
        "small-reference": (rng.normal(size=300), rng.normal(size=2000)),
        "current-outside": (rng.uniform(0, 1, size=3000), rng.uniform(-0.5, 1.5, size=1000)),
    }


CASES = sorted(samples())


# ---------------------------------------------------------------------------------------------
# Single statistics against scipy


@pytest.mark.parametrize("case", CASES)
def test_ks_matches_scipy_asymptotic(case: str) -> None:
    ref, cur = samples()[case]
    statistic, p_value = drift.ks_2samp(ref, cur)
    expected = stats.ks_2samp(ref, cur, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=1e-9)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("case", ["normal-shift", "integers-ties", "zero-inflated", "small-reference"])
def test_block_boundaries_do_not_change_results(case: str, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, cur = samples()[case]
    entry = drift.build_profile(pd.DataFrame({"x": ref}), quantile_count=200)["features"]["x"]
    whole = (drift.ks_2samp(ref, cur), drift.wasserstein(ref, cur), drift.ks_2samp_profile(entry, cur),
             drift.wasserstein_profile(entry, cur))
    monkeypatch.setattr(drift.stats, "_CHUNK", chunk)
    blocked = (drift.ks_2samp(ref, cur), drift.wasserstein(ref, cur), drift.ks_2samp_profile(entry, cur),
               drift.wasserstein_profile(entry, cur))
    assert blocked[0] == pytest.approx(whole[0], rel=1e-12)
    assert blocked[1] == pytest.approx(whole[1], rel=1e-9)
    assert blocked[2] == pytest.approx(whole[2], rel=1e-12)
    assert blocked[3] == pytest.approx(whole[3], rel=1e-9)


def test_large_samples_match_scipy() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(size=150_000), rng.normal(0.01, 1.0, size=140_000)
    cur[:5000] = np.round(cur[:5000], 2)  # some ties
    statistic, _ = drift.ks_2samp(ref, cur)
    assert statistic == pytest.approx(stats.ks_2samp(ref, cur, method="asymp").statistic, abs=1e-9)
    assert drift.wasserstein(ref, cur) == pytest.approx(stats.wasserstein_distance(ref, cur), rel=1e-9)


def test_ks_ties_are_exact() -> None:
    # All mass on a few atoms: a naive "rank" implementation overstates D here.
    ref = np.repeat([1.0, 2.0, 3.0], [50, 30, 20])
    cur = np.repeat([1.0, 2.0, 3.0], [45, 35, 20])
    assert drift.ks_2samp(ref, cur)[0] == pytest.approx(0.05, abs=1e-12)
    assert drift.ks_2samp(ref, ref)[0] == 0.0


def test_ks_pvalue_at_large_n_close_to_scipy() -> None:
    # Where scipy sums an O(n) series we use Maag-Dicaire; documented error bounds.
    for en in (10_001, 40_000):
        for z in (1.49, 2.0, 3.0, 4.0, 6.0):
            d = z / math.sqrt(en)
            ours = drift.ks_pvalue(d, 2 * en, 2 * en)
            scipy_value = stats.kstwo.sf(d, en)
            tolerance = 1e-3 if scipy_value >= 1e-6 else 2e-2
            assert ours == pytest.approx(scipy_value, rel=tolerance), (en, z)
    assert drift.ks_pvalue(0.5, 10**6, 10**6) == 0.0


def test_ks_pvalue_matches_scipy_exactly_below_series_regime() -> None:
    for en, d in ((400, 0.1), (5000, 0.02), (200_000, 0.001)):
        assert drift.ks_pvalue(d, 2 * en, 2 * en) == stats.kstwo.sf(d, en)


@pytest.mark.parametrize("case", CASES)
def test_wasserstein_matches_scipy(case: str) -> None:
    ref, cur = samples()[case]
    assert drift.wasserstein(ref, cur) == pytest.approx(stats.wasserstein_distance(ref, cur), rel=1e-9, abs=1e-12)


def test_chi2_matches_chi2_contingency_without_yates() -> None:
    ref, cur = [120, 300, 80, 0, 5], [100, 310, 95, 0, 12]
    statistic, p_value = drift.chi2(ref, cur)
    expected = stats.chi2_contingency([[120, 300, 80, 5], [100, 310, 95, 12]], correction=False)
    assert statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_chi2_unseen_category_is_finite_and_significant() -> None:
    # The current window has a category the reference never saw: no division by zero.
    statistic, p_value = drift.chi2([500, 500, 0], [450, 450, 100])
    assert math.isfinite(statistic) and statistic > 50
    assert p_value < 1e-10


def test_chi2_degenerate_tables() -> None:
    assert drift.chi2([10, 0], [5, 0]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        drift.chi2([0, 0], [1, 2])
    with pytest.raises(ValueError):
        drift.chi2([1, 2], [1, 2, 3])


def test_jensen_shannon_is_base2_distance() -> None:
    p, q = [10, 20, 30, 0], [30, 20, 10, 5]
    assert drift.jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-12)
    assert drift.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert drift.jensen_shannon(p, p) == pytest.approx(0.0, abs=1e-7)


def test_psi_by_hand_and_behaviour() -> None:
    ref = np.arange(1, 101, dtype=float)  # deciles at 10, 20, ..., 90
    cur = np.concatenate([np.arange(1, 51, dtype=float), np.full(50, 95.0)])
    # Current: 10% in each of the first five bins, 50% in the last: PSI by hand.
    r = np.full(10, 0.1)
    c = np.array([0.1] * 5 + [0, 0, 0, 0, 0.5])
    c_floor = np.maximum(c, drift.PSI_EPSILON)
    expected = float(np.sum((c_floor - r) * np.log(c_floor / r)))
    assert drift.psi(ref, cur) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(3)
    assert drift.psi(rng.normal(size=5000), rng.normal(size=5000)) < 0.02
    assert drift.psi(rng.normal(size=5000), rng.normal(1.0, 1, size=5000)) > 0.2


def test_nan_and_inf_count_as_missing() -> None:
    rng = np.random.default_rng(4)
    ref, cur = rng.normal(size=1000), rng.normal(size=800)
    dirty = cur.copy()
    dirty[::10] = np.nan
    dirty[1] = np.inf
    clean = dirty[np.isfinite(dirty)]
    assert drift.ks_2samp(ref, dirty) == drift.ks_2samp(ref, clean)
    assert drift.wasserstein(ref, dirty) == drift.wasserstein(ref, clean)
    values, missing = drift.numeric_values(pd.Series(dirty))
    assert missing == 81 and values.size == 719


def test_category_counts_labels_and_missing() -> None:
    counts, missing = drift.category_counts(pd.Series([1, 2, None, 1], dtype="Int64"))
    assert counts == {"1": 2, "2": 1} and missing == 1
    # An int column that picked up a NaN becomes float: same labels.
    counts, missing = drift.category_counts(np.array([1.0, 2.0, np.nan, 1.0]))
    assert counts == {"1": 2, "2": 1} and missing == 1
    counts, _ = drift.category_counts(pd.Series([True, False, True]))
    assert counts == {"True": 2, "False": 1}
    counts, missing = drift.category_counts(pd.Series(pd.Categorical(["a", None, "b", "a"], categories=["a", "b", "c"])))
    assert counts == {"a": 2, "b": 1} and missing == 1


# ---------------------------------------------------------------------------------------------
# Profile


def oracle_profile_distances(quantiles: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Straightforward reference: KS on the full union of points, Wasserstein in quantile space."""
    q = np.asarray(quantiles, dtype=float)
    k = q.size - 1
    cur = np.sort(cur)
    m = cur.size

    def cdf(x: np.ndarray, side: str) -> np.ndarray:
        c = np.searchsorted(q, x, side=side)
        out = np.empty(x.size)
        for i, (ci, xi) in enumerate(zip(c, x)):  # deliberately naive
            if ci == 0:
                out[i] = 0.0
            elif ci == k + 1:
                out[i] = 1.0
            else:
                out[i] = (ci - 1 + (xi - q[ci - 1]) / (q[ci] - q[ci - 1])) / k
        return out

    points = np.unique(np.concatenate([q, cur]))
    right = np.abs(cdf(points, "right") - np.searchsorted(cur, points, side="right") / m)
    left = np.abs(cdf(points, "left") - np.searchsorted(cur, points, side="left") / m)
    statistic = float(max(right.max(), left.max()))
    # W = integral over p of |Qprofile(p) - Qcurrent(p)| on the union of p-grids (midpoint-exact
    # for the linear-vs-constant pieces, split where they cross).
    grid = np.unique(np.concatenate([np.arange(m + 1) / m, np.arange(k + 1) / k]))
    profile_q = np.interp(grid, np.arange(k + 1) / k, q)
    level = cur[np.minimum(((grid[:-1] + grid[1:]) / 2 * m).astype(int), m - 1)]
    a, b = profile_q[:-1] - level, profile_q[1:] - level
    width = np.diff(grid)
    area = 0.0
    for ai, bi, wi in zip(a, b, width):
        if ai * bi >= 0:
            area += wi * (abs(ai) + abs(bi)) / 2
        else:
            area += wi * (ai * ai + bi * bi) / (2 * (abs(ai) + abs(bi)))
    return statistic, area


@pytest.mark.parametrize("case", ["normal-shift", "integers-ties", "zero-inflated", "small-current", "current-outside"])
def test_profile_distances_match_naive_oracle(case: str) -> None:
    ref, cur = samples()[case]
    entry = drift.build_profile(pd.DataFrame({"x": ref}), quantile_count=200)["features"]["x"]
    statistic, _ = drift.ks_2samp_profile(entry, cur)
    distance = drift.wasserstein_profile(entry, cur)
    expected_statistic, expected_distance = oracle_profile_distances(entry["quantiles"], cur)
    assert statistic == pytest.approx(expected_statistic, abs=1e-12)
    assert distance == pytest.approx(expected_distance, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_profile_statistics_within_stated_error_of_raw(case: str) -> None:
    ref, cur = samples()[case]
    entry = drift.build_profile(pd.DataFrame({"x": ref}))["features"]["x"]
    raw_ks = drift.ks_2samp(ref, cur)[0]
    assert abs(drift.ks_2samp_profile(entry, cur)[0] - raw_ks) < 1 / K
    raw_w = drift.wasserstein(ref, cur)
    assert abs(drift.wasserstein_profile(entry, cur) - raw_w) <= (ref.max() - ref.min()) / K + 1e-12
    # PSI: same edges; reference bin proportions within 1/K, first-order bound on the score.
    ref_sorted = np.sort(ref)
    bins = drift.DEFAULT_PSI_BINS
    i = np.arange(1, bins)
    raw_edges = np.unique(ref_sorted[(ref.size * i + bins - 1) // bins - 1])
    reference = drift.stats._NumericReference.from_profile("x", entry)
    assert np.array_equal(reference.psi_edges(bins), raw_edges)
    raw_props = np.diff(np.concatenate([[0], np.searchsorted(ref_sorted, raw_edges, "right") / ref.size, [1]]))
    profile_props = np.diff(np.concatenate([[0], reference.cdf(raw_edges), [1]]))
    assert np.abs(profile_props - raw_props).max() < 1 / K
    cur_props = np.diff(np.concatenate([[0], np.searchsorted(np.sort(cur), raw_edges, "right") / cur.size, [1]]))
    r, c = np.maximum(raw_props, drift.PSI_EPSILON), np.maximum(cur_props, drift.PSI_EPSILON)
    first_order = np.sum(np.abs(1 - c / r - np.log(c / r))) / K
    assert abs(drift.psi_profile(entry, cur) - drift.psi(ref, cur)) <= 2 * first_order + 1e-9


def test_profile_psi_exact_for_tie_free_data() -> None:
    ref, cur = samples()["normal-shift"]
    entry = drift.build_profile(pd.DataFrame({"x": ref}))["features"]["x"]
    # Edges coincide and proportions differ by < 1/n without ties.
    assert drift.psi_profile(entry, cur) == pytest.approx(drift.psi(ref, cur), abs=5 / ref.size)


def test_profile_format_and_json() -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, 2000),
            "country": rng.choice(["DE", "FR", "US"], 2000),
            "member": rng.random(2000) < 0.3,
            "grade": pd.Categorical(rng.choice(["a", "b"], 2000)),
            "code": rng.integers(0, 5, 2000),
            "when": pd.date_range("2024-01-01", periods=2000, freq="h"),
        }
    )
    frame.loc[::100, "age"] = np.nan
    profile = drift.build_profile(frame, exclude=["when"])
    text = json.dumps(profile, allow_nan=False)
    assert json.loads(text) == profile
    assert profile["formatVersion"] == 1 and profile["rows"] == 2000 and profile["quantileCount"] == K
    features = profile["features"]
    assert [features[name]["kind"] for name in ("age", "country", "member", "grade", "code")] == [
        "numeric", "categorical", "categorical", "categorical", "numeric",
    ]
    age = features["age"]
    assert age["count"] == 1980 and age["missing"] == 20
    assert len(age["quantiles"]) == K + 1
    assert age["quantiles"][0] == age["min"] and age["quantiles"][-1] == age["max"]
    assert np.all(np.diff(age["quantiles"]) >= 0)
    assert age["mean"] == pytest.approx(frame["age"].mean()) and age["std"] == pytest.approx(frame["age"].std(ddof=0))
    country = features["country"]
    assert sum(country["frequencies"].values()) + country["otherCount"] == country["count"] == 2000
    assert set(features["member"]["frequencies"]) == {"True", "False"}
    # Named columns become categorical too; unsupported dtypes must be excluded.
    assert drift.build_profile(frame, categorical=["code"], exclude=["when"])["features"]["code"]["kind"] == "categorical"
    with pytest.raises(ValueError, match="when"):
        drift.build_profile(frame)


def test_profile_quantiles_are_inverted_cdf() -> None:
    values = np.arange(1.0, 8.0)  # 7 values, K=4: quantile j is order statistic ceil(7*j/4)
    quantiles = drift.build_profile(pd.DataFrame({"x": values}), quantile_count=4)["features"]["x"]["quantiles"]
    assert quantiles == [1.0, 2.0, 4.0, 6.0, 7.0]
    assert quantiles == list(np.quantile(values, np.linspace(0, 1, 5), method="inverted_cdf"))


def test_profile_top_n_cap_and_other_bucket() -> None:
    labels = [f"c{i:03d}" for i in range(150)]
    values = np.repeat(labels, np.arange(150, 0, -1))
    entry = drift.build_profile(pd.DataFrame({"x": values}), max_categories=100)["features"]["x"]
    assert len(entry["frequencies"]) == 100 and entry["distinct"] == 150
    assert entry["otherCount"] == sum(range(1, 51))
    assert list(entry["frequencies"])[:2] == ["c000", "c001"]


def test_profile_size_does_not_grow_with_rows() -> None:
    rng = np.random.default_rng(6)

    def frame(rows: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "x": rng.normal(size=rows),
                "y": rng.lognormal(size=rows),
                "c": rng.choice([f"v{i}" for i in range(30)], rows),
            }
        )

    small = len(json.dumps(drift.build_profile(frame(1_000))))
    large = len(json.dumps(drift.build_profile(frame(1_000_000))))
    assert abs(large - small) / small < 0.05, (small, large)
    assert large < 50_000


# ---------------------------------------------------------------------------------------------
# compare()


def synthetic(rng: np.random.Generator, rows: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    shift = shift or {}
    categories = np.array(["a", "b", "c", "d"], dtype=object)
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    if "cat_freq" in shift:
        weights = np.array([0.25, 0.3, 0.25, 0.2])
    return pd.DataFrame(
        {
            "mean": rng.normal(shift.get("mean", 0.0), 1.0, rows),
            "scale": rng.normal(0.0, shift.get("scale", 1.0), rows),
            "skewed": rng.lognormal(0.0, 0.8, rows),
            "count": rng.poisson(3.0, rows).astype(float),
            "cat": categories[rng.choice(4, rows, p=weights)],
            "flag": rng.random(rows) < 0.2,
        }
    )


@pytest.mark.parametrize("correction", ["bonferroni", "benjamini-hochberg"])
@pytest.mark.parametrize("use_profile", [False, True])
def test_no_drift_false_positive_rate_at_most_alpha(correction: str, use_profile: bool) -> None:
    rng = np.random.default_rng(7)
    alpha, trials = 0.05, 200
    reference = synthetic(rng, 5000)
    ref = drift.build_profile(reference) if use_profile else reference
    alarms = sum(
        drift.compare(ref, synthetic(rng, 1000), alpha=alpha, correction=correction).drift_detected
        for _ in range(trials)
    )
    assert alarms / trials <= alpha, alarms


@pytest.mark.parametrize("use_profile", [False, True])
@pytest.mark.parametrize(
    ("shift", "feature", "test"),
    [
        ({"mean": 0.25}, "mean", "ks"),
        ({"scale": 1.5}, "scale", "ks"),
        ({"scale": 1.5}, "scale", "wasserstein"),
        ({"cat_freq": 1}, "cat", "chi2"),
    ],
)
def test_known_shift_detected_on_its_feature_only(use_profile: bool, shift: dict, feature: str, test: str) -> None:
    rng = np.random.default_rng(8)
    reference = synthetic(rng, 5000)
    ref = drift.build_profile(reference) if use_profile else reference
    report = drift.compare(ref, synthetic(rng, 1000, shift))
    assert report.drift_detected and report.status == drift.DRIFT
    assert report.drifted_features == [feature]
    assert report.features[feature].tests[test].drifted


def test_large_mean_shift_flags_psi_and_js() -> None:
    rng = np.random.default_rng(9)
    reference = synthetic(rng, 5000)
    current = synthetic(rng, 2000, {"mean": 1.0})
    current["cat"] = "d"  # all mass on the rarest category
    report = drift.compare(drift.build_profile(reference), current)
    assert report.features["mean"].tests["psi"].drifted
    assert report.features["cat"].tests["js"].drifted and report.features["cat"].tests["psi"].drifted


def test_raw_and_profile_reports_agree() -> None:
    rng = np.random.default_rng(10)
    reference = synthetic(rng, 20_000)
    current = synthetic(rng, 5000, {"mean": 0.1, "cat_freq": 1})
    raw = drift.compare(reference, current)
    profiled = drift.compare(drift.build_profile(reference), current)
    for name, feature in raw.features.items():
        other = profiled.features[name]
        assert other.status == feature.status and other.sample_size == feature.sample_size
        for test, result in feature.tests.items():
            tolerance = {"ks": 1 / K, "wasserstein": 0.02, "psi": 1e-3}.get(test, 1e-12)
            assert other.tests[test].score == pytest.approx(result.score, abs=tolerance), (name, test)


def test_unseen_categories_go_to_one_bucket() -> None:
    reference = pd.DataFrame({"c": ["a"] * 500 + ["b"] * 500})
    current = pd.DataFrame({"c": ["a"] * 450 + ["b"] * 450 + ["new1"] * 50 + ["new2"] * 50})
    report = drift.compare(reference, current)
    chi2_result = report.features["c"].tests["chi2"]
    expected = stats.chi2_contingency([[500, 500, 0], [450, 450, 100]], correction=False)
    cramers_v = math.sqrt(expected.statistic / 2000)  # the effect size of a 2 x k table
    assert chi2_result.score == pytest.approx(cramers_v) and chi2_result.drifted
    assert chi2_result.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert chi2_result.method == "asymptotic"  # every expected count >= 5
    profiled = drift.compare(drift.build_profile(reference), current)
    assert profiled.features["c"].tests["chi2"].score == pytest.approx(cramers_v)


def test_insufficient_data_is_not_drift() -> None:
    rng = np.random.default_rng(11)
    reference = synthetic(rng, 2000)
    current = synthetic(rng, 50, {"mean": 3.0})
    report = drift.compare(reference, current, min_samples=100)
    assert report.status == drift.INSUFFICIENT_DATA and not report.drift_detected
    for feature in report.features.values():
        assert feature.status == drift.INSUFFICIENT_DATA and feature.tests
        for name, test in feature.tests.items():
            assert test.status == drift.INSUFFICIENT_DATA and test.score is None and not test.drifted
            assert f"{name} needs 100 non-missing values" in test.message and "the window has 50" in test.message
        assert "needs 100" in feature.message
    # Enough rows overall, but one feature mostly missing: only that one is insufficient.
    current = synthetic(rng, 500)
    current.loc[current.index[:450], "skewed"] = np.nan
    report = drift.compare(reference, current, min_samples=100)
    assert report.features["skewed"].status == drift.INSUFFICIENT_DATA
    assert report.features["skewed"].missing == 450 and report.features["skewed"].sample_size == 50
    assert report.status == drift.NO_DRIFT
    # A feature absent from the current window has no samples.
    report = drift.compare(reference, current.drop(columns=["count"]))
    assert report.features["count"].status == drift.INSUFFICIENT_DATA and report.features["count"].sample_size == 0


def test_tests_thresholds_and_features_selection() -> None:
    rng = np.random.default_rng(12)
    reference = synthetic(rng, 3000)
    current = synthetic(rng, 1000, {"mean": 0.3})
    report = drift.compare(reference, current, tests={"psi": 10.0, "js": None}, features=["mean", "cat"])
    assert list(report.features) == ["mean", "cat"]
    assert set(report.features["mean"].tests) == {"psi"} and set(report.features["cat"].tests) == {"psi", "js"}
    assert report.features["cat"].tests["js"].threshold == drift.DEFAULT_THRESHOLDS["js"]
    assert not report.drift_detected  # psi threshold 10 is never reached
    report = drift.compare(reference, current, tests={"ks": 0.01}, features=["mean"])
    assert report.features["mean"].tests["ks"].threshold == 0.01 and report.drift_detected
    with pytest.raises(ValueError, match="unknown drift test"):
        drift.compare(reference, current, tests={"kl": 0.1})
    with pytest.raises(ValueError, match="not in the reference"):
        drift.compare(reference, current, features=["nope"])
    with pytest.raises(ValueError, match="correction"):
        drift.compare(reference, current, correction="holm")


def test_mapping_inputs_and_categorical_override() -> None:
    rng = np.random.default_rng(13)
    reference = {"code": rng.integers(0, 4, 2000), "x": rng.normal(size=2000)}
    current = {"code": rng.integers(0, 4, 800).astype(float), "x": rng.normal(size=800)}
    report = drift.compare(reference, current, categorical=["code"])
    assert report.features["code"].kind == drift.CATEGORICAL and report.features["x"].kind == drift.NUMERIC
    assert report.sample_size == 800 and report.status == drift.NO_DRIFT


def test_adjust_p_values() -> None:
    p = [0.01, 0.02, 0.03, 0.5]
    assert drift.adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.08, 0.12, 1.0])
    # BH: p_(i) * M / i, made monotone from the top.
    assert drift.adjust_p_values(p, "bh") == pytest.approx([0.04, 0.04, 0.04, 0.5])
    assert drift.adjust_p_values(p, "none") == p
    assert drift.adjust_p_values([], "bonferroni") == []


def test_correction_changes_verdict() -> None:
    # Many moderately small p-values: BH rejects, Bonferroni does not.
    rng = np.random.default_rng(14)
    n = 20
    reference = pd.DataFrame({f"f{i}": rng.normal(size=4000) for i in range(n)})
    current = pd.DataFrame({f"f{i}": rng.normal(0.07, 1, size=2000) for i in range(n)})
    # Effect threshold 0: only significance decides here.
    bonferroni = drift.compare(reference, current, tests={"ks": 0.0}, correction="bonferroni")
    bh = drift.compare(reference, current, tests={"ks": 0.0}, correction="benjamini-hochberg")
    assert len(bh.drifted_features) > len(bonferroni.drifted_features)
    result = bh.features["f0"].tests["ks"]
    assert result.adjusted_p_value >= result.p_value


def test_to_dict_is_camel_case_json() -> None:
    rng = np.random.default_rng(15)
    report = drift.compare(drift.build_profile(synthetic(rng, 2000)), synthetic(rng, 500, {"mean": 1.0}))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["status"] == "Drift" and data["driftDetected"] is True and data["sampleSize"] == 500
    assert data["driftedFeatures"] == report.drifted_features
    feature = next(f for f in data["features"] if f["name"] == "mean")
    assert set(feature) == {"name", "kind", "status", "sampleSize", "referenceSize", "missing", "message", "tests"}
    ks = next(t for t in feature["tests"] if t["name"] == "ks")
    assert set(ks) == {"name", "status", "score", "pValue", "adjustedPValue", "alpha", "pValueMethod", "threshold",
                       "drifted", "message"}
    psi_entry = next(t for t in feature["tests"] if t["name"] == "psi")
    assert 0 <= psi_entry["pValue"] <= 1 and psi_entry["pValueMethod"] in {"asymptotic", "monte-carlo"}


def test_bad_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="formatVersion"):
        drift.compare({"formatVersion": 99, "features": {}}, {"x": np.zeros(200)})
    bad = {"formatVersion": 1, "features": {"x": {"kind": "numeric", "count": 10, "quantiles": [2.0, 1.0]}}}
    with pytest.raises(ValueError, match="quantiles"):
        drift.compare(bad, {"x": np.zeros(200)})
