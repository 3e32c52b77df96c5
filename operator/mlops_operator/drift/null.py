"""Null distributions of the drift tests: p-values that account for both sample sizes.

Every test the engine runs has a score (an effect size, compared with the test's threshold) and a
p-value under the null hypothesis "reference and current window come from the same distribution"
(compared, after the multiple-testing correction, with alpha). How each p-value is obtained, and why:

- ``ks``: the exact two-sample distribution of D (lattice-path count, Hodges 1957) when
  ``n*m <= KS_EXACT_MAX_CELLS`` and the p-value can decide a verdict (see :func:`ks_null_pvalue`);
  otherwise Smirnov's limit with Stephens' small-sample
  modification, ``Q_KS((sqrt(en) + 0.12 + 0.11/sqrt(en)) * D)``, ``en = nm/(n+m)``. scipy's
  asymptotic ``kstwo.sf(D, round(en))`` (what :func:`ks_pvalue` reproduces) is up to 36% too small at
  n = m = 50 in the 1e-4 tail; the exact count is what scipy's ``method="exact"`` computes. With ties
  (discrete data) D is taken between distinct values only, so both are conservative.
- ``psi`` on a numeric feature: the bins are the reference's quantiles, so for continuous data the
  reference counts are fixed by construction and the current counts are Dirichlet-multinomial:
  spacings of reference order statistics are Dirichlet(gaps of ranks), current counts given the
  spacings multinomial. That law depends only on (reference counts per bin, m) - not on the data's
  distribution - so it is simulated (``NULL_DRAWS`` draws, fixed seed, cached per layout) and the
  p-value is ``(1 + #{simulated >= observed}) / (1 + draws)``. When every expected bin count is at
  least ``ASYMPTOTIC_MIN_EXPECTED["psi"]`` the first-order expansion ``PSI ~ sum (c-r)^2/p`` gives
  ``PSI * nm/(n+m) ~ chi2(B-1)`` and that is used instead (it resolves smaller p-values). Measured
  (200 000 null draws): the chi-squared tail is 21x too light at n = m = 50 (PSI_EPSILON makes an
  empty bin cost ~0.7), 1.6x at 250, within 8% from an expected count of 100 up.
- ``psi``, ``js``, ``chi2`` on a categorical feature: a test of homogeneity of the 2 x k table
  (reference counts, current counts). Asymptotically ``chi2 ~ chi2(k-1)`` (Pearson),
  ``PSI * nm/(n+m) ~ chi2(k-1)`` and ``8 ln2 JS^2 * nm/(n+m) ~ chi2(k-1)`` (JS distance in bits;
  the JS divergence is ``sum (p-q)^2/(8 pi)`` to first order). These are used when every expected
  count ``row total * column total / N`` is at least ``ASYMPTOTIC_MIN_EXPECTED[test]`` (5 for chi2,
  Cochran's rule; 100 for psi and js, whose epsilon floor and logarithm make small counts' tails
  heavy). Otherwise a permutation null conditional on the margins: current counts are drawn from the
  multivariate hypergeometric law of the pooled table (vectorised over draws, one category at a
  time), the reference gets the rest, and the same statistic is recomputed.
- ``wasserstein``: ``sqrt(en) * W1`` converges to ``integral |B(F(x))| dx = integral_0^1 |B(u)| dQ(u)``
  for a Brownian bridge B and the reference quantile function Q; that functional is simulated on a
  grid of ``BRIDGE_GRID`` reference quantiles (bridges shared by all features, fixed seed). It is an
  asymptotic null: not in the default spec; the calibration benchmark measures it at small sizes.

Monte Carlo p-values are ``(1 + g) / (1 + N)`` with g of N simulated values at or above the
observed one. N is ``FIRST_DRAWS`` when that already gives p >= ``EARLY_STOP_P`` (no corrected
alpha below that can be reached: most unchanged features stop there), else ``NULL_DRAWS``. The
seed is fixed, so a check is reproducible. They are never below ``1/(1 + NULL_DRAWS)``: with
Bonferroni over M p-values a test can only be significant when ``alpha/M`` exceeds that (M < 1000
at alpha 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from scipy import special, stats

NULL_DRAWS = 20_000
"""Monte Carlo draws per null (numeric PSI: per distinct bin layout; categorical: per feature)."""
CATEGORICAL_DRAW_BUDGET = 400_000
"""Categorical permutation nulls draw at most this many cells (draws x categories), at least 2000 draws."""
KS_EXACT_MAX_CELLS = 10_000_000
"""The exact KS distribution is counted when n*m is at most this (about 20 ms at the limit)."""
ASYMPTOTIC_MIN_EXPECTED = {"chi2": 5.0, "psi": 100.0, "js": 100.0}
"""Smallest expected cell count for which a table test uses its chi-squared limit."""
FIRST_DRAWS = 2000
EARLY_STOP_P = 0.1
BRIDGE_GRID = 200
BRIDGE_DRAWS = 4_000
SEED = 20_261_129

EXACT = "exact"
ASYMPTOTIC = "asymptotic"
MONTE_CARLO = "monte-carlo"
PSI_EPSILON = 1e-4
"""Proportions are floored at this in PSI (same constant as the engine's)."""


# ---------------------------------------------------------------------------------------------
# Kolmogorov-Smirnov


def ks_pvalue_exact(statistic: float, n: int, m: int) -> float:
    """P(D >= statistic) for two samples of sizes n and m from one continuous distribution.

    Counts the monotone lattice paths from (0, 0) to (n, m) that stay strictly inside
    ``|i/n - j/m| < d`` (all paths are equally likely under the null); each row of the count is a
    cumulative sum over a contiguous band, rescaled to stay in floating range.
    """
    if n <= 0 or m <= 0:
        raise ValueError("sample sizes must be positive")
    if statistic <= 0:
        return 1.0
    if statistic > 1:
        return 0.0
    if n > m:
        n, m = m, n  # iterate over the shorter side
    # Inside iff |i*m - j*n| < t. D of real samples is a multiple of 1/lcm(n, m): snap float noise.
    t = statistic * n * m
    if abs(t - round(t)) < 1e-6 * max(1.0, t):
        t = float(round(t))
    # Row i of the count: paths reaching (i, j) inside the band |i*m - j*n| < t. The band of a row
    # is contiguous in j and a cell is entered from the left or from below, so row i is the
    # cumulative sum of row i-1 over row i's band. Only the band (width ~2*d*m) is touched.
    row = np.zeros(m + 1, dtype=np.float64)
    low, high = _ks_band(0, n, m, t)
    row[low : high + 1] = 1.0
    log_scale = 0.0
    for i in range(1, n + 1):
        new_low, new_high = _ks_band(i, n, m, t)
        if new_low > new_high:
            return 1.0
        segment = np.cumsum(row[new_low : new_high + 1])
        row[low:new_low] = 0.0
        top = float(segment[-1])
        if top <= 0:
            return 1.0
        row[new_low : new_high + 1] = segment / top
        log_scale += math.log(top)
        low, high = new_low, new_high
    inside_count = row[m]
    if inside_count <= 0:
        return 1.0
    log_inside = math.log(inside_count) + log_scale - (special.gammaln(n + m + 1) - special.gammaln(n + 1)
                                                       - special.gammaln(m + 1))
    return float(min(1.0, max(0.0, -math.expm1(log_inside))))


def _ks_band(i: int, n: int, m: int, t: float) -> tuple[int, int]:
    """The j range (inclusive) with |i*m - j*n| < t, clipped to [0, m]."""
    low = math.floor((i * m - t) / n) + 1
    high = math.ceil((i * m + t) / n) - 1
    # Guard the float division at the band's edges.
    while low - 1 >= 0 and abs(i * m - (low - 1) * n) < t:
        low -= 1
    while low <= m and abs(i * m - low * n) >= t:
        low += 1
    while high + 1 <= m and abs(i * m - (high + 1) * n) < t:
        high += 1
    while high >= 0 and abs(i * m - high * n) >= t:
        high -= 1
    return max(low, 0), min(high, m)


def ks_pvalue_stephens(statistic: float, n: int, m: int) -> float:
    """Smirnov's limit with Stephens' small-sample modification of the argument."""
    en = n * m / (n + m)
    root = math.sqrt(en)
    return float(stats.kstwobign.sf((root + 0.12 + 0.11 / root) * statistic))


def ks_null_pvalue(statistic: float, n: int, m: int, exact_below: float = 0.1) -> tuple[float, str]:
    """(p-value, method) of the KS statistic.

    Exact when ``n*m <= KS_EXACT_MAX_CELLS`` and the asymptotic value is in ``[1e-12, exact_below]``,
    i.e. wherever it can decide a verdict: the asymptotic value is at most the exact one at these
    sizes (measured: 0.64-1.0 times it in the tail), so above ``exact_below`` (set it >= alpha) the
    exact value is too, and below 1e-12 both are far below any corrected alpha.
    """
    asymptotic = ks_pvalue_stephens(statistic, n, m)
    if n * m <= KS_EXACT_MAX_CELLS and 1e-12 <= asymptotic <= exact_below:
        return ks_pvalue_exact(statistic, n, m), EXACT
    return asymptotic, ASYMPTOTIC


# ---------------------------------------------------------------------------------------------
# Tables: psi, js, chi2


def psi_rows(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """PSI of each row pair of count arrays (..., k); proportions floored at PSI_EPSILON."""
    r = np.maximum(ref / ref.sum(axis=-1, keepdims=True), PSI_EPSILON)
    c = np.maximum(cur / cur.sum(axis=-1, keepdims=True), PSI_EPSILON)
    return np.sum((c - r) * np.log(c / r), axis=-1)


def js_rows(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2, equal weights) of each row pair of count arrays."""
    p = ref / ref.sum(axis=-1, keepdims=True)
    q = cur / cur.sum(axis=-1, keepdims=True)
    mid = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log2(p / mid), 0.0)
        right = np.where(q > 0, q * np.log2(q / mid), 0.0)
    divergence = np.clip(np.sum(left + right, axis=-1) / 2, 0.0, 1.0)
    return np.sqrt(divergence)


def chi2_rows(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Pearson's chi-squared statistic of each 2 x k table (ref row, cur row); no Yates."""
    total = ref + cur
    n = ref.sum(axis=-1, keepdims=True)
    m = cur.sum(axis=-1, keepdims=True)
    grand = n + m
    expected_ref = total * n / grand
    expected_cur = total * m / grand
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(total > 0, (ref - expected_ref) ** 2 / expected_ref + (cur - expected_cur) ** 2 / expected_cur,
                         0.0)
    return np.sum(terms, axis=-1)


TABLE_STATISTICS = {"psi": psi_rows, "js": js_rows, "chi2": chi2_rows}


def cramers_v(chi2_statistic: float, total: float) -> float:
    """Effect size of a 2 x k chi-squared statistic: ``sqrt(chi2 / N)`` (Cramer's V with min(2,k)-1 = 1)."""
    return math.sqrt(max(chi2_statistic, 0.0) / total) if total > 0 else 0.0


def _asymptotic_table_pvalue(test: str, score: float, n: float, m: float, columns: int) -> float:
    df = max(columns - 1, 1)
    scale = n * m / (n + m)
    if test == "chi2":
        statistic = score
    elif test == "psi":
        statistic = score * scale
    else:  # js distance in bits -> 8 ln2 JSD * nm/(n+m)
        statistic = 8.0 * math.log(2.0) * score * score * scale
    return float(stats.chi2.sf(statistic, df))


def _monte_carlo_pvalue(simulated: np.ndarray, observed: float) -> float:
    # A relative tolerance so that a simulated table equal to the observed one counts as ">=".
    tolerance = 1e-9 * max(1.0, abs(observed))
    return float((1 + np.count_nonzero(simulated >= observed - tolerance)) / (1 + simulated.size))


def hypergeometric_tables(totals: np.ndarray, m: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``draws`` rows of current counts drawn from the multivariate hypergeometric law of column
    totals ``totals`` with m current rows (a random split of the pooled rows), one category at a time."""
    totals = np.asarray(totals, dtype=np.int64)
    out = np.empty((draws, totals.size), dtype=np.int64)
    left = np.full(draws, m, dtype=np.int64)
    rest = int(totals.sum())
    for column in range(totals.size - 1):
        rest -= int(totals[column])
        if totals[column] == 0:
            out[:, column] = 0
            continue
        out[:, column] = rng.hypergeometric(int(totals[column]), rest, left) if rest > 0 else left
        left -= out[:, column]
    out[:, -1] = left
    return out


def categorical_table_pvalues(ref_counts: np.ndarray, cur_counts: np.ndarray, tests: Iterable[str],
                              draws: int = NULL_DRAWS) -> dict[str, tuple[float, str]]:
    """(p-value, method) of each of ``tests`` (psi, js, chi2) on the 2 x k table of a categorical feature.

    Empty columns are dropped. Each test uses its chi-squared limit when every expected count is at
    least ``ASYMPTOTIC_MIN_EXPECTED[test]``, else one shared permutation null (conditional on the
    margins). Counts are rounded to integers for the permutation.
    """
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n, m = float(ref.sum()), float(cur.sum())
    tests = list(tests)
    if ref.size < 2:
        return {test: (1.0, EXACT) for test in tests}
    expected_min = float(np.min((ref + cur) * min(n, m) / (n + m)))
    results: dict[str, tuple[float, str]] = {}
    simulate = []
    for test in tests:
        score = float(TABLE_STATISTICS[test](ref, cur))
        if expected_min >= ASYMPTOTIC_MIN_EXPECTED[test]:
            results[test] = (_asymptotic_table_pvalue(test, score, n, m, ref.size), ASYMPTOTIC)
        else:
            simulate.append((test, score))
    if simulate:
        draws = max(2000, min(draws, CATEGORICAL_DRAW_BUDGET // ref.size))
        rng = np.random.default_rng([SEED, ref.size, int(m)])
        totals = np.rint(ref + cur).astype(np.int64)

        def batch(size: int) -> dict[str, np.ndarray]:
            cur_draws = hypergeometric_tables(totals, int(round(m)), size, rng).astype(np.float64)
            ref_draws = totals - cur_draws
            return {test: TABLE_STATISTICS[test](ref_draws, cur_draws) for test, _ in simulate}

        # One stream of simulated tables (first stage, then the rest); each test reads what it needs.
        shared: list[dict[str, np.ndarray]] = []
        for test, score in simulate:
            calls = [0]

            def read(size: int, test: str = test, calls: list[int] = calls) -> np.ndarray:
                stage = calls[0]
                calls[0] += 1
                if len(shared) <= stage:
                    shared.append(batch(size))
                return shared[stage][test]

            # Many categories make each table dear: a smaller first stage still tells p >= 0.1 apart.
            first = max(200, min(FIRST_DRAWS, CATEGORICAL_DRAW_BUDGET // (4 * ref.size)))
            results[test] = (StagedNull(read, draws, first).pvalue(score), MONTE_CARLO)
    return {test: results[test] for test in tests}


class StagedNull:
    """Simulated null values, ``FIRST_DRAWS`` first and up to ``NULL_DRAWS`` when a p-value needs them."""

    def __init__(self, simulate, max_draws: int = NULL_DRAWS, first_draws: int = FIRST_DRAWS):
        self.simulate = simulate
        """``simulate(size)`` -> that many more simulated statistics."""
        self.first_draws = first_draws
        self.max_draws = max(max_draws, first_draws)
        self._first: np.ndarray | None = None
        self._all: np.ndarray | None = None

    def pvalue(self, observed: float) -> float:
        tolerance = 1e-9 * max(1.0, abs(observed))
        if self._first is None:
            self._first = np.sort(self.simulate(self.first_draws))
        p = _tail_share(self._first, observed - tolerance)
        if p >= EARLY_STOP_P or self.max_draws == self.first_draws:
            return p
        if self._all is None:
            self._all = np.sort(np.concatenate((self._first, self.simulate(self.max_draws - self.first_draws))))
        return _tail_share(self._all, observed - tolerance)


def _tail_share(ordered: np.ndarray, level: float) -> float:
    above = ordered.size - int(np.searchsorted(ordered, level, side="left"))
    return float((1 + above) / (1 + ordered.size))


@lru_cache(maxsize=256)
def _numeric_psi_null(ref_counts: tuple[int, ...], m: int, draws: int) -> StagedNull:
    """The null of PSI of m current rows against reference-quantile bins holding ``ref_counts``
    reference rows (Dirichlet-multinomial; see the module docstring), simulated on demand."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    rng = np.random.default_rng([SEED, len(ref_counts), m, int(ref.sum())])
    # Bins are (-inf, e1], ..., (e_last, inf) with e_i a reference order statistic: the spacings of
    # the n+1 gaps of n uniform order statistics split into bins are Dirichlet(gaps) with the last
    # bin holding one gap more than its reference count.
    gaps = np.maximum(ref, 0.0).copy()
    gaps[-1] += 1.0
    gaps = np.maximum(gaps, 1e-3)  # an empty bin (possible with a profile) keeps a tiny mass

    def simulate(size: int) -> np.ndarray:
        probabilities = rng.dirichlet(gaps, size=size)
        current = rng.multinomial(m, probabilities).astype(np.float64)
        return psi_rows(np.broadcast_to(ref, current.shape), current)

    return StagedNull(simulate, draws)


def numeric_psi_pvalue(ref_counts: np.ndarray, cur_counts: np.ndarray, score: float,
                       draws: int = NULL_DRAWS) -> tuple[float, str]:
    """(p-value, method) of a numeric feature's PSI over reference-quantile bins."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    n, m = float(ref.sum()), float(cur.sum())
    if ref.size < 2:
        return 1.0, EXACT
    expected_min = float(np.min(ref) * min(n, m) / n)
    if expected_min >= ASYMPTOTIC_MIN_EXPECTED["psi"]:
        return _asymptotic_table_pvalue("psi", score, n, m, ref.size), ASYMPTOTIC
    null = _numeric_psi_null(tuple(int(x) for x in np.rint(ref)), int(round(m)), draws)
    return null.pvalue(score), MONTE_CARLO


# ---------------------------------------------------------------------------------------------
# Wasserstein


@lru_cache(maxsize=4)
def _bridge_abs(grid: int, draws: int) -> np.ndarray:
    """|B(u)| of ``draws`` Brownian bridges at the midpoints of ``grid`` equal cells of [0, 1]."""
    rng = np.random.default_rng([SEED, grid, draws])
    fine = 2 * grid
    steps = rng.normal(0.0, math.sqrt(1.0 / fine), size=(draws, fine))
    walk = np.cumsum(steps, axis=1)
    u = np.arange(1, fine + 1) / fine
    bridge = walk - u * walk[:, -1:]
    return np.abs(bridge[:, 0::2]).astype(np.float32)  # u = (2k+1)/(2 grid): cell midpoints


def wasserstein_pvalue(distance: float, reference_quantiles: np.ndarray, n: int, m: int) -> tuple[float, str]:
    """(p-value, method) of the raw (unscaled) Wasserstein-1 distance, from the Brownian-bridge limit.

    ``reference_quantiles``: BRIDGE_GRID + 1 reference quantiles at i/BRIDGE_GRID.
    """
    quantiles = np.asarray(reference_quantiles, dtype=np.float64)
    increments = np.diff(quantiles).astype(np.float32)
    if not np.any(increments > 0):
        return (1.0 if distance <= 0 else 0.0), ASYMPTOTIC
    bridges = _bridge_abs(increments.size, BRIDGE_DRAWS)
    # einsum, not a BLAS matvec: BLAS threads stall on a busy machine for no gain at this size.
    simulated = np.einsum("ij,j->i", bridges, increments) / math.sqrt(n * m / (n + m))
    return _monte_carlo_pvalue(simulated, distance), MONTE_CARLO
