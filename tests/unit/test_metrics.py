"""The operator's own metrics (metrics.py)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from mlops_operator import metrics


def test_error_counters_exist_at_zero_from_a_kinds_first_reconciliation():
    """increase() sees only changes of a series: an error counter born at 1 would hide the first error
    from the MlopsReconcileErrors alert."""
    with metrics.reconcile_timer("UnitTestKind"):
        pass
    assert REGISTRY.get_sample_value("mlops_reconcile_errors_total", {"kind": "UnitTestKind"}) == 0
    assert REGISTRY.get_sample_value("mlops_invalid_spec_total", {"kind": "UnitTestKind"}) == 0
    assert REGISTRY.get_sample_value("mlops_reconcile_total", {"kind": "UnitTestKind", "result": "success"}) == 1
