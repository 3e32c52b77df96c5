"""The anomaly detector (reconcile/anomaly.py): false alarms on steady traffic, detection delay on
injected faults, duration and recovery rules, bounded memory. The full figures (a week of traffic,
many seeds) come from ``benchmarks/anomaly_bench.py``."""

from __future__ import annotations

import math

import pytest

import anomaly_traffic as traffic
from mlops_operator.reconcile.anomaly import METRICS, Detector, DetectorSettings, Point, Series

SETTINGS = DetectorSettings()


def test_two_days_of_steady_seasonal_traffic_open_no_anomaly_and_memory_stays_bounded():
    run = traffic.run(2.0, seed=7)
    assert run.points == 5760 and run.series == 4
    assert run.opened == []
    assert run.max_history == SETTINGS.window


@pytest.mark.parametrize("fault", traffic.FAULTS)
def test_each_injected_fault_opens_an_anomaly_on_its_metric_within_two_intervals_of_the_minimum_duration(fault):
    delay = traffic.detection_delay(fault, seed=3, warm_days=0.3)
    assert delay is not None, f"{fault} was not detected"
    # The breach must last minDuration; the first faulty point comes at most one interval after the fault.
    assert SETTINGS.min_duration <= delay <= SETTINGS.min_duration + 2 * traffic.Traffic().interval


def _warm(series: Series, value: float = 20.0, *, start: float = 0.0, points: int = 40, step: float = 30.0) -> float:
    at = start
    for i in range(points):
        at = start + i * step
        series.observe(at, value + (i % 5) * 0.5, samples=500)
    return at


def test_one_slow_point_is_not_an_incident():
    series = Series(METRICS["latencyP99Ms"])
    at = _warm(series)
    assert series.observe(at + 30, 400.0, samples=500).state == "pending"
    update = series.observe(at + 60, 21.0, samples=500)
    assert update.state == "normal" and update.opened is None
    assert series.anomaly is None


def test_an_anomaly_opens_after_the_minimum_duration_says_why_and_closes_after_recovery():
    series = Series(METRICS["latencyP99Ms"], version="3")
    at = _warm(series)
    opened = None
    for i in range(1, 4):
        update = series.observe(at + 30 * i, 90.0, samples=500)
        opened = opened or update.opened
    assert opened is not None and opened.since == at + 30
    assert opened.direction == "above" and opened.observed == 90.0
    assert opened.band.low < 21 < opened.band.high and opened.band.expected == pytest.approx(21, abs=1)
    message = opened.message()
    assert message.startswith("version 3 latencyP99Ms 90 ms is above its band: expected 21")
    # Back to normal: the anomaly stays open for closeAfter, then closes.
    closed = None
    for i in range(4, 8):
        update = series.observe(at + 30 * i, 21.0, samples=500)
        closed = closed or update.closed
    assert closed is not None and closed.closed == at + 30 * 6 and "back inside" in closed.close_reason
    assert closed.worst == 90.0 and series.anomaly is None


def test_anomalous_points_are_not_learned_until_the_new_level_is_accepted():
    settings = DetectorSettings(rebaseline_after=600)
    series = Series(METRICS["latencyP99Ms"], settings)
    at = _warm(series)
    for i in range(1, 40):
        update = series.observe(at + 30 * i, 90.0, samples=500)
        if update.closed:
            break
    assert update.closed is not None and "new normal" in update.closed.close_reason
    assert series.state == "learning"  # the baseline restarts from the new level


def test_points_from_too_few_requests_are_skipped_and_the_error_band_widens_with_fewer_requests():
    series = Series(METRICS["errorRate"])
    for i in range(30):
        series.observe(i * 30.0, 0.0, samples=1000)
    assert series.observe(31 * 30.0, 1.0, samples=3).skipped
    wide, narrow = series.band(0, samples=50), series.band(0, samples=50_000)
    assert wide.high > narrow.high >= METRICS["errorRate"].abs_floor
    # A zero baseline: two errors in a hundred requests are noise, ten are not.
    assert wide.contains(0.02, "up") and not series.band(0, samples=100).contains(0.10, "up")


def test_traffic_alarms_only_when_it_drops_and_errors_only_when_they_rise():
    rate = Series(METRICS["requestRate"])
    _warm(rate)
    band = rate.band(0)
    assert not band.contains(2.0, "down") and band.contains(60.0, "down")
    assert not band.contains(60.0, "both")
    errors = Series(METRICS["errorRate"])
    for i in range(30):
        errors.observe(i * 30.0, 0.05, samples=1000)
    assert errors.band(0, samples=1000).contains(0.0, "up")


def test_the_daily_term_joins_after_a_day_of_history():
    series = Series(METRICS["requestRate"], DetectorSettings(window=60))
    def rate(at: float) -> float:  # a trough of 4 req/s at 03:00 UTC, a peak of 36 at 15:00
        return 20 - 16 * math.cos(2 * math.pi * ((at % 86400) / 3600 - 3) / 24)
    at = 0.0
    for i in range(int(2 * 86400 / 300)):
        at = i * 300.0
        series.observe(at, rate(at))
    night, day = at + 3 * 3600, at + 15 * 3600
    night_band, day_band = series.band(night), series.band(day)
    assert night_band.daily < 0 < day_band.daily
    assert "daily" in night_band.describe("req/s")


def test_a_detector_keeps_one_series_per_version_and_metric_and_forgets_versions_no_longer_served():
    detector = Detector()
    for i in range(40):
        detector.observe(Point(i * 30.0, "1", {"latencyP99Ms": 20.0 + i % 3, "requestRate": 10.0 + i % 2}, 500))
        detector.observe(Point(i * 30.0, "2", {"latencyP99Ms": 20.0 + i % 3, "unknown": 1.0}, 500))
    assert set(detector.series) == {("1", "latencyP99Ms"), ("1", "requestRate"), ("2", "latencyP99Ms")}
    for i in range(40, 44):
        detector.observe(Point(i * 30.0, "2", {"latencyP99Ms": 200.0}, 500))
    assert [a.version for a in detector.open_anomalies()] == ["2"]
    closed = detector.forget_versions(["1"], at=44 * 30.0)
    assert [a.close_reason for a in closed] == ["version 2 is no longer served"]
    assert set(detector.series) == {("1", "latencyP99Ms"), ("1", "requestRate")}


def test_a_new_version_is_judged_against_the_baseline_of_the_version_before_it():
    detector = Detector(DetectorSettings(min_duration=30))
    for i in range(40):
        detector.observe(Point(i * 30.0, "1", {"errorRate": 0.001 * (i % 3)}, 500))
    # Version 2 takes over and fails from its very first requests: no warm-up that would learn it.
    opened = []
    for i in range(40, 43):
        for update in detector.observe(Point(i * 30.0, "2", {"errorRate": 0.5}, 500)):
            opened += [update.opened] if update.opened else []
    assert [(a.version, a.metric, a.since) for a in opened] == [("2", "errorRate", 40 * 30.0)]
    # A healthy new version simply continues the baseline.
    fresh = Detector()
    for i in range(40):
        fresh.observe(Point(i * 30.0, "1", {"errorRate": 0.001}, 500))
    assert fresh.observe(Point(40 * 30.0, "3", {"errorRate": 0.001}, 500))[0].state == "normal"
