"""Data-drift statistics: pure, vectorised numpy/scipy; values in, values out.

Used by the training pipeline (the reference profile of the training data), the drift data backend
and the DriftMonitor reconcile logic. :mod:`.stats` compares a current window against a reference
(tests, multiple-testing corrections, the report); :mod:`.profile` builds reference profiles.
"""

import importlib
from typing import TYPE_CHECKING, Any

# numpy, pandas and scipy load on first use, not when the operator starts: most of its reconciliations
# never compare distributions, and these imports cost seconds of start-up on a busy node.
_WHERE = {"build_profile": "profile", **{name: "stats" for name in (
    "CATEGORICAL",
    "CORRECTIONS",
    "DEFAULT_MAX_CATEGORIES",
    "DEFAULT_PSI_BINS",
    "DEFAULT_QUANTILE_COUNT",
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_THRESHOLDS",
    "Histogram",
    "TEST_MIN_SAMPLES",
    "DRIFT",
    "INSUFFICIENT_DATA",
    "NO_DRIFT",
    "NUMERIC",
    "P_VALUE_TESTS",
    "PROFILE_FORMAT_VERSION",
    "PSI_EPSILON",
    "TEST_KINDS",
    "DriftReport",
    "FeatureResult",
    "TestResult",
    "adjust_p_values",
    "category_counts",
    "category_label",
    "chi2",
    "compare",
    "jensen_shannon",
    "ks_2samp",
    "ks_2samp_profile",
    "ks_pvalue",
    "numeric_values",
    "psi",
    "psi_from_proportions",
    "psi_profile",
    "wasserstein",
    "wasserstein_profile",

)}}

if TYPE_CHECKING:
    from mlops_operator.drift.profile import build_profile
    from mlops_operator.drift.stats import (
        CATEGORICAL,
        CORRECTIONS,
        DEFAULT_MAX_CATEGORIES,
        DEFAULT_PSI_BINS,
        DEFAULT_QUANTILE_COUNT,
        DEFAULT_ALPHA,
        DEFAULT_MIN_SAMPLES,
        DEFAULT_THRESHOLDS,
        Histogram,
        TEST_MIN_SAMPLES,
        DRIFT,
        INSUFFICIENT_DATA,
        NO_DRIFT,
        NUMERIC,
        P_VALUE_TESTS,
        PROFILE_FORMAT_VERSION,
        PSI_EPSILON,
        TEST_KINDS,
        DriftReport,
        FeatureResult,
        TestResult,
        adjust_p_values,
        category_counts,
        category_label,
        chi2,
        compare,
        jensen_shannon,
        ks_2samp,
        ks_2samp_profile,
        ks_pvalue,
        numeric_values,
        psi,
        psi_from_proportions,
        psi_profile,
        wasserstein,
        wasserstein_profile,
    )


def __getattr__(name: str) -> Any:
    if name in ("null", "profile", "report", "stats"):
        return importlib.import_module(f"{__name__}.{name}")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_WHERE)  # every name re-exported (the lazy map is the one list)
