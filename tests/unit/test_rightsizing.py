"""Right-sizing suggestions (reconcile/rightsizing.py): from observed use, never editing spec."""

from __future__ import annotations

from mlops_operator.reconcile.rightsizing import UsageSample, format_cpu, format_memory, suggest_requests

MIB = 2**20


def samples(cpu: float, memory_mib: float, count: int = 60, step: float = 120.0) -> list[UsageSample]:
    # CPU varies between 0.5x and 1.45x `cpu`; memory peaks once at `memory_mib`.
    return [UsageSample(i * step, cpu * (0.5 + (i % 20) / 20), memory_mib * MIB * (1.0 if i == 7 else 0.9))
            for i in range(count)]


def test_quantities_round_up():
    assert [format_cpu(c) for c in (0.0, 0.001, 0.123, 0.5, 1.0, 1.234)] == ["10m", "10m", "130m", "500m", "1", "1240m"]
    assert [format_memory(m * MIB) for m in (1, 100, 1024, 1500)] == ["16Mi", "112Mi", "1Gi", "1504Mi"]


def test_over_provisioned_requests_get_a_smaller_suggestion():
    found = suggest_requests("2", "4Gi", samples(cpu=0.2, memory_mib=300))
    assert found.verdict == "over"
    assert found.cpu == "370m"  # p95 of 0.10..0.29 cores is 0.28; +30% -> 364m, rounded up
    assert found.memory == "368Mi"  # max 300 MiB +20% = 360 MiB, rounded up to 16 MiB
    assert "cpu request 2 is 5.4x what is used" in found.message and "spec.resources is not changed" in found.message


def test_under_provisioned_memory_is_called_out_first():
    found = suggest_requests("500m", "256Mi", samples(cpu=0.2, memory_mib=300))
    assert found.verdict == "under"
    assert "memory request 256Mi is below the observed use; suggest 368Mi" in found.message


def test_fitting_and_unset_requests():
    assert suggest_requests("370m", "368Mi", samples(cpu=0.2, memory_mib=300)).verdict == "fits"
    unset = suggest_requests(None, None, samples(cpu=0.2, memory_mib=300))
    assert unset.verdict == "unset" and "no cpu request is set; 370m would hold" in unset.message


def test_nothing_is_suggested_before_enough_is_observed():
    assert suggest_requests("1", "1Gi", samples(cpu=0.2, memory_mib=300, count=10)) is None
    assert suggest_requests("1", "1Gi", samples(cpu=0.2, memory_mib=300, step=10)) is None  # 10 minutes only
    assert suggest_requests("1", "1Gi", []) is None
