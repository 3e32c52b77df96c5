"""Anomaly detector benchmark: false alarms on steady traffic and detection delay on injected faults,
against a naive baseline measured in the same run.

Traffic (``tests/anomaly_traffic.py``, seeded): one point every 30 s of request rate (daily cycle
+/-50%, Poisson counts, 20 req/s on average), server error rate (0.2%, binomial) and latency p50/p99
(computed from lognormal latencies whose median rises with load). Faults, injected after at least a
day and a quarter of history at a random moment and kept on: latency x3, error probability 10%,
traffic x0.2.

Ours: ``reconcile/anomaly.py`` with its defaults (rolling median/MAD over 60 points, daily term,
band floors, 60 s minimum duration). Baseline: the usual static rule, mean +/- 3 standard deviations
of the first 20 points, alarming on any single point outside (no duration, no adaptation).

    python benchmarks/anomaly_bench.py            # 7 days x 3 seeds steady, 5 seeds per fault
    python benchmarks/anomaly_bench.py --quick    # 2 days x 1 seed, 2 seeds per fault
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "operator"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import anomaly_traffic as traffic  # noqa: E402
from mlops_operator.reconcile.anomaly import METRICS, Detector, Series  # noqa: E402


class StaticRule:
    """The baseline: mean +/- 3 sd of the first 20 points, one point outside alarms (then re-arms when inside)."""

    def __init__(self) -> None:
        self.first: dict[str, list[float]] = {}
        self.limits: dict[str, tuple[float, float]] = {}
        self.alarmed: set[str] = set()

    def observe(self, point) -> list[str]:
        opened = []
        for metric, value in point.values.items():
            if value is None:
                continue
            if metric not in self.limits:
                self.first.setdefault(metric, []).append(value)
                if len(self.first[metric]) == 20:
                    mean, sd = statistics.fmean(self.first[metric]), statistics.pstdev(self.first[metric])
                    self.limits[metric] = (mean - 3 * sd, mean + 3 * sd)
                continue
            low, high = self.limits[metric]
            bad = value > high if METRICS[metric].direction == "up" else not low <= value <= high
            if bad and metric not in self.alarmed:
                self.alarmed.add(metric)
                opened.append(metric)
            elif not bad:
                self.alarmed.discard(metric)
        return opened


def steady(days: float, seeds: int) -> dict[str, float]:
    ours = base = points = 0
    series_days = 0.0
    started = time.perf_counter()
    for seed in range(seeds):
        detector, rule = Detector(), StaticRule()
        for point in traffic.points(days, 1000 + seed):
            points += 1
            ours += sum(1 for u in detector.observe(point) if u.opened)
            base += len(rule.observe(point))
        series_days += days * len(detector.series)
        print(f"  steady seed {seed}: {days:g} days, ours {ours} / baseline {base} false alarms so far "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
    return {"points": points, "series_days": series_days, "ours": ours, "baseline": base,
            "seconds_per_point": (time.perf_counter() - started) / points}


def delays(seeds: int) -> dict[str, dict[str, float | int | None]]:
    result = {}
    for fault in traffic.FAULTS:
        found, missed, base_found, base_missed = [], 0, [], 0
        for seed in range(seeds):
            delay = traffic.detection_delay(fault, 2000 + seed)
            if delay is None:
                missed += 1
            else:
                found.append(delay)
            base = _baseline_delay(fault, 2000 + seed)
            if base is None:
                base_missed += 1
            else:
                base_found.append(base)
        result[fault] = {"median": statistics.median(found) if found else None, "max": max(found) if found else None,
                         "missed": missed, "baseline_median": statistics.median(base_found) if base_found else None,
                         "baseline_missed": base_missed}
        print(f"  {fault}: delays {[round(d) for d in found]} s, missed {missed}", flush=True)
    return result


def _baseline_delay(fault, seed: int) -> float | None:
    rng = np.random.default_rng(seed + 10_000)
    fault_at = traffic.START + 1.25 * 86400 + float(rng.uniform(0, 86400 / 2))
    rule = StaticRule()
    days = (fault_at - traffic.START) / 86400 + 0.05
    for point in traffic.points(days, seed, fault=fault, fault_at=fault_at):
        opened = rule.observe(point)
        if point.at > fault_at and any(m in traffic.FAULT_METRICS[fault] for m in opened):
            return point.at - fault_at
    return None


def memory_per_series(points: int) -> int:
    tracemalloc.start()
    series = Series(METRICS["latencyP99Ms"])
    before = tracemalloc.take_snapshot()
    rng = np.random.default_rng(0)
    for i, value in enumerate(rng.lognormal(3, 0.2, size=points)):
        series.observe(i * 30.0, float(value), samples=500)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    days, steady_seeds, fault_seeds = (2.0, 1, 2) if args.quick else (7.0, 3, 5)

    print(f"steady traffic: {days:g} days x {steady_seeds} seeds, 4 series each", flush=True)
    quiet = steady(days, steady_seeds)
    print(f"faults: {fault_seeds} seeds each", flush=True)
    faults = delays(fault_seeds)
    small, large = memory_per_series(1_000), memory_per_series(50_000)

    print("\n== anomaly detector")
    per_day = quiet["ours"] / quiet["series_days"]
    base_per_day = quiet["baseline"] / quiet["series_days"]
    print(f"false alarms on steady traffic: ours {quiet['ours']} in {quiet['series_days']:g} series-days "
          f"({per_day:.3f}/series-day, {quiet['ours'] / quiet['points']:.2e} per point); static 3-sigma baseline "
          f"{quiet['baseline']} ({base_per_day:.3f}/series-day)")
    for fault, figures in faults.items():
        ours = (f"median {figures['median']:.0f} s, max {figures['max']:.0f} s" if figures["median"] is not None
                else "never")
        base = f"{figures['baseline_median']:.0f} s" if figures["baseline_median"] is not None else "never"
        print(f"detection delay, {fault}: ours {ours}, missed {figures['missed']}/{fault_seeds}; baseline median "
              f"{base}, missed {figures['baseline_missed']}/{fault_seeds}")
    print(f"memory per series: {small} B after 1,000 points, {large} B after 50,000 (bounded: ratio "
          f"{large / max(small, 1):.2f})")
    print(f"cost: {quiet['seconds_per_point'] * 1e3:.2f} ms per point of 4 metrics (including generating it)")


if __name__ == "__main__":
    main()
