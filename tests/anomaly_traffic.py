"""Synthetic serving telemetry for the anomaly detector's tests and benchmark (seeded, numpy).

Steady traffic: a daily cycle of request rate (peak in the afternoon UTC, trough at night, +/-50%),
Poisson request counts per interval, a 0.2% server error probability (binomial), and lognormal
latencies whose median rises with load; p50 and p99 are computed from the drawn latencies, as a
router computes them. Faults start at a given moment and stay: a latency step, an error burst, a
traffic drop.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "operator"))

from mlops_operator.reconcile.anomaly import Detector, DetectorSettings, Point  # noqa: E402

Fault = Literal["latency_step", "error_burst", "traffic_drop"]
FAULTS: tuple[Fault, ...] = ("latency_step", "error_burst", "traffic_drop")
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a midnight, so the daily cycle starts at its trough


@dataclass(frozen=True)
class Traffic:
    """Shape of the steady traffic."""

    interval: float = 30.0
    """Seconds per point (what one poll of the router's statistics covers)."""
    base_rate: float = 20.0
    """Mean requests per second over a day."""
    daily_amplitude: float = 0.5
    error_probability: float = 0.002
    latency_median_ms: float = 20.0
    latency_sigma: float = 0.45
    """Of the lognormal latency (p99 is about 2.9x the median)."""


def points(days: float, seed: int, traffic: Traffic = Traffic(), fault: Fault | None = None,
           fault_at: float | None = None, version: str = "1"):
    """Yield :class:`Point` s of steady traffic, with ``fault`` from ``fault_at`` (unix seconds) on."""
    rng = np.random.default_rng(seed)
    steps = int(days * 86400 / traffic.interval)
    for i in range(steps):
        at = START + (i + 1) * traffic.interval
        hour = (at % 86400) / 3600
        load = 1 + traffic.daily_amplitude * math.sin(2 * math.pi * (hour - 9) / 24)
        rate = traffic.base_rate * load
        error_p, median = traffic.error_probability, traffic.latency_median_ms * (0.8 + 0.2 * load)
        faulty = fault is not None and fault_at is not None and at > fault_at
        if faulty and fault == "traffic_drop":
            rate *= 0.2
        if faulty and fault == "error_burst":
            error_p = 0.10
        if faulty and fault == "latency_step":
            median *= 3
        requests = int(rng.poisson(rate * traffic.interval))
        errors = int(rng.binomial(requests, error_p)) if requests else 0
        values: dict[str, float | None] = {"requestRate": requests / traffic.interval}
        if requests:
            latencies = rng.lognormal(math.log(median), traffic.latency_sigma, size=requests)
            p50, p99 = np.percentile(latencies, [50, 99])
            values.update(errorRate=errors / requests, latencyP50Ms=float(p50), latencyP99Ms=float(p99))
        yield Point(at, version, values, samples=requests)


@dataclass(frozen=True)
class Run:
    """What the detector did with one synthetic run."""

    opened: list[tuple[float, str]]
    """(time, metric) of every anomaly that opened."""
    points: int
    series: int
    max_history: int


def run(days: float, seed: int, settings: DetectorSettings = DetectorSettings(), **kwargs) -> Run:
    """Feed a synthetic run to a fresh detector."""
    detector = Detector(settings)
    opened, count = [], 0
    for point in points(days, seed, **kwargs):
        count += 1
        for update in detector.observe(point):
            if update.opened:
                opened.append((point.at, update.opened.metric))
    return Run(opened, count, len(detector.series), max(len(s.history) for s in detector.series.values()))


FAULT_METRICS = {"latency_step": ("latencyP50Ms", "latencyP99Ms"), "error_burst": ("errorRate",),
                 "traffic_drop": ("requestRate",)}


def detection_delay(fault: Fault, seed: int, *, warm_days: float = 1.25, settings: DetectorSettings = DetectorSettings()
                    ) -> float | None:
    """Seconds from the fault's start to the first anomaly on a metric the fault affects (None: missed)."""
    rng = np.random.default_rng(seed + 10_000)
    fault_at = START + warm_days * 86400 + float(rng.uniform(0, 86400 / 2))
    days = (fault_at - START) / 86400 + 0.05  # an hour and a bit after the fault
    result = run(days, seed, settings, fault=fault, fault_at=fault_at)
    hits = [at for at, metric in result.opened if at > fault_at and metric in FAULT_METRICS[fault]]
    return hits[0] - fault_at if hits else None
