"""Anomaly detection on serving telemetry, pure: a robust, explainable baseline per series.

A *series* is one metric of one served version of one ModelDeployment (request rate, server error
rate, latency p50/p99, CPU, memory). Each observation is judged against a band around what the
series' own recent history says to expect, and only a breach that lasts opens an anomaly:

* **level**: the median of the last ``window`` normal points (deseasonalised), and its spread, the
  median absolute deviation (MAD, scaled by 1.4826 so it estimates a standard deviation for normal
  noise). Medians ignore the odd slow request that a mean would chase.
* **daily term**: 24 hourly slots (UTC), each an exponentially weighted mean of how far that hour's
  points sat from the level. It joins the expectation only once a day of history exists and the
  slot has been seen a few times, so a night-time dip in traffic is expected, not an incident.
* **band**: expected +/- the widest of ``sensitivity`` x MAD, a binomial term for rates (a 1% error
  rate over 50 requests is noisier than over 5000), and per-metric absolute and relative floors (a
  baseline of exactly zero errors must not make one error an anomaly).
* **a new version** (a canary, a promotion) starts from the baseline of the version it joins, so it
  is judged against what the deployment did before it from its first point.
* **duration**: a point outside the band makes the series *pending*; the anomaly opens only when it
  is still outside ``min_duration`` later, and closes once the series has been back inside for
  ``close_after``. Points outside the band, or while an anomaly is open, are not learned, so a
  sustained fault is not absorbed into the baseline; after ``rebaseline_after`` the new level is
  accepted instead (the anomaly closes and the recent baseline restarts; the daily shape is kept).

Memory per series is bounded: ``window`` floats and 24 slots, whatever the traffic.
Everything is plain arithmetic on floats; times are unix seconds.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

Direction = Literal["up", "down", "both"]
SeriesState = Literal["learning", "normal", "pending", "open"]

MAD_TO_SIGMA = 1.4826
SECONDS_PER_DAY = 86400.0
SLOTS = 24


@dataclass(frozen=True)
class MetricProfile:
    """How a metric is judged: which way is bad, the smallest band, how many samples a point needs."""

    name: str
    unit: str
    direction: Direction
    """up: only higher is bad (errors, latency); down: only lower (traffic); both."""
    abs_floor: float = 0.0
    """The band is never narrower than this, either side."""
    rel_floor: float = 0.0
    """... nor than this fraction of the expected value."""
    min_samples: int = 0
    """Points computed from fewer requests than this are skipped (a p99 of 3 requests says little)."""
    binomial: bool = False
    """A rate of events per request: the band includes its binomial sampling noise."""


# The metrics the operator watches, with floors chosen so that ordinary noise stays inside:
# server error rate (5xx only) never alarms below 2 percentage points above its baseline; latency
# never within 25% (and 5 ms) of it; traffic only when it halves.
METRICS: Mapping[str, MetricProfile] = {
    "errorRate": MetricProfile("errorRate", "ratio", "up", abs_floor=0.02, min_samples=20, binomial=True),
    "latencyP50Ms": MetricProfile("latencyP50Ms", "ms", "up", abs_floor=5.0, rel_floor=0.25, min_samples=20),
    "latencyP99Ms": MetricProfile("latencyP99Ms", "ms", "up", abs_floor=5.0, rel_floor=0.25, min_samples=20),
    # Traffic alarms only when it drops: a rise (a deployment going live, a campaign) is not an
    # incident by itself, and the latency and error rate it causes are judged on their own.
    "requestRate": MetricProfile("requestRate", "req/s", "down", abs_floor=0.05, rel_floor=0.5),
    "cpuCores": MetricProfile("cpuCores", "cores", "up", abs_floor=0.05, rel_floor=0.3),
    "memoryBytes": MetricProfile("memoryBytes", "bytes", "up", abs_floor=16 * 2**20, rel_floor=0.2),
}


@dataclass(frozen=True)
class DetectorSettings:
    """Tuning of every series of a detector."""

    window: int = 60
    """Normal points the level and spread are computed from (the memory per series)."""
    warmup: int = 20
    """Points learned before anything is judged."""
    sensitivity: float = 4.0
    """Half-width of the band in robust standard deviations (MAD x 1.4826)."""
    min_duration: float = 60.0
    """Seconds a breach must last before an anomaly opens."""
    close_after: float = 60.0
    """Seconds back inside the band before an open anomaly closes."""
    rebaseline_after: float = 6 * 3600.0
    """Seconds after which an anomaly that is still open is accepted as the new normal."""
    seasonal_alpha: float = 0.2
    """Weight of a new point in its hourly slot's mean offset."""
    seasonal_min_points: int = 3
    """Points a slot needs (after a day of history) before the daily term is used."""


@dataclass(frozen=True)
class Band:
    """What a series expected at one moment, and why."""

    expected: float
    low: float
    high: float
    level: float
    daily: float
    """The daily term included in ``expected`` (0 until a day of history exists)."""
    spread: float
    """Robust standard deviation (MAD x 1.4826) of the recent normal points."""

    def contains(self, value: float, direction: Direction) -> bool:
        """Whether ``value`` is normal for a metric that is bad in ``direction``."""
        if direction == "up":
            return value <= self.high
        if direction == "down":
            return value >= self.low
        return self.low <= value <= self.high

    def describe(self, unit: str, direction: Direction = "both") -> str:
        """The band in words: ``expected 20 ms (at most 25 ms; level 18 + daily 2, spread 1.1)``."""
        value = lambda v: _value(v, unit)  # noqa: E731
        daily = f" + daily {value(self.daily)}" if self.daily else ""
        limits = {"up": f"at most {value(self.high)}", "down": f"at least {value(self.low)}",
                  "both": f"{value(self.low)} to {value(self.high)}"}[direction]
        return (f"expected {value(self.expected)} ({limits}; level {value(self.level)}{daily}, "
                f"spread {value(self.spread)})")


@dataclass(frozen=True)
class Anomaly:
    """An open (or just closed) anomaly of one series."""

    metric: str
    version: str | None
    since: float
    """When the series first left its band (unix seconds)."""
    observed: float
    """The latest value outside the band."""
    band: Band
    """The band at the latest breach."""
    direction: Literal["above", "below"]
    unit: str
    worst: float
    sense: Direction = "both"
    """Which way the metric is bad (how its band is described)."""
    """The value furthest from the band during the anomaly."""
    closed: float | None = None
    """When it closed (unix seconds); None while open."""
    close_reason: str | None = None

    def message(self) -> str:
        """One line a person can act on."""
        who = f"version {self.version} " if self.version else ""
        return (f"{who}{self.metric} {_value(self.observed, self.unit)} is {self.direction} its band: "
                f"{self.band.describe(self.unit, self.sense)}")


@dataclass(frozen=True)
class Update:
    """What one observation did to a series."""

    state: SeriesState
    band: Band | None = None
    opened: Anomaly | None = None
    closed: Anomaly | None = None
    skipped: bool = False


@dataclass
class Series:
    """The bounded state of one series and its open/close state machine."""

    profile: MetricProfile
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    version: str | None = None
    history: deque[tuple[int, float]] = field(init=False)
    """(hourly slot, value) of the latest normal points."""
    slot_offset: list[float] = field(init=False)
    slot_count: list[int] = field(init=False)
    first_seen: float | None = None
    long_level: float = 0.0
    long_at: float = 0.0
    pending_since: float | None = None
    inside_since: float | None = None
    anomaly: Anomaly | None = None

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.settings.window)
        self.slot_offset = [0.0] * SLOTS
        self.slot_count = [0] * SLOTS

    @property
    def state(self) -> SeriesState:
        if self.anomaly is not None:
            return "open"
        if self.pending_since is not None:
            return "pending"
        return "learning" if len(self.history) < self.settings.warmup else "normal"

    # ------------------------------------------------------------ baseline

    def _daily_terms(self, at: float) -> list[float]:
        """The daily term of each hourly slot as of ``at`` (zeros before a day of history)."""
        if self.first_seen is None or at - self.first_seen < SECONDS_PER_DAY:
            return [0.0] * SLOTS
        least = self.settings.seasonal_min_points
        return [offset if count >= least else 0.0 for offset, count in zip(self.slot_offset, self.slot_count)]

    def band(self, at: float, samples: float | None = None) -> Band | None:
        """The band at time ``at`` (None while learning)."""
        if len(self.history) < self.settings.warmup:
            return None
        # History is kept raw and deseasonalised with today's daily term, so the term can change
        # (or switch on after the first day) without leaving the level inconsistent.
        terms = self._daily_terms(at)
        values = [value - terms[slot] for slot, value in self.history]
        level = statistics.median(values)
        spread = MAD_TO_SIGMA * statistics.median([abs(v - level) for v in values])
        daily = terms[_slot(at)]
        expected = level + daily
        profile = self.profile
        half = max(self.settings.sensitivity * spread, profile.abs_floor, profile.rel_floor * abs(expected))
        if profile.binomial and samples:
            # The noise of a rate measured over `samples` requests, around the expected rate (at least
            # one event in the window, so a zero baseline still has a width).
            p = min(max(expected, 1.0 / max(samples, 1.0)), 1.0)
            half = max(half, self.settings.sensitivity * math.sqrt(p * (1 - p) / samples))
        return Band(expected, expected - half, expected + half, level, daily, spread)

    def _learn(self, at: float, value: float) -> None:
        if self.first_seen is None:
            self.first_seen, self.long_level, self.long_at = at, value, at
        slot = _slot(at)
        self.history.append((slot, value))
        # The daily term is each hour's mean offset from a slow level (time constant one day), not
        # from the recent level, which follows the daily cycle and would hide it.
        weight = min(max(at - self.long_at, 0.0) / SECONDS_PER_DAY, 1.0)
        self.long_level += weight * (value - self.long_level)
        self.long_at = at
        alpha = self.settings.seasonal_alpha if self.slot_count[slot] else 1.0
        self.slot_offset[slot] += alpha * ((value - self.long_level) - self.slot_offset[slot])
        self.slot_count[slot] += 1

    def _restart(self, value: float) -> None:
        # The recent window starts again at the new level; the daily shape is kept.
        self.history.clear()
        self.long_level = value

    # ------------------------------------------------------------ observe

    def observe(self, at: float, value: float, samples: float | None = None) -> Update:
        """Judge one point (``samples``: requests it was computed from) and learn it if it is normal."""
        profile, settings = self.profile, self.settings
        if not math.isfinite(value) or (profile.min_samples and (samples or 0) < profile.min_samples):
            return Update(self.state, skipped=True)
        band = self.band(at, samples)
        if band is None:
            self._learn(at, value)
            return Update(self.state)
        inside = band.contains(value, profile.direction)

        if self.anomaly is not None:
            if not inside:
                self.inside_since = None
                worst = max(self.anomaly.worst, value) if value > band.high else min(self.anomaly.worst, value)
                self.anomaly = replace(self.anomaly, observed=value, band=band, worst=worst)
                if at - self.anomaly.since >= settings.rebaseline_after:
                    return self._close(at, band, f"still outside after {settings.rebaseline_after:.0f}s: "
                                                 f"accepted as the new normal", restart=True)
                return Update("open", band)
            if self.inside_since is None:
                self.inside_since = at
            if at - self.inside_since >= settings.close_after:
                return self._close(at, band, f"back inside its band for {at - self.inside_since:.0f}s")
            return Update("open", band)

        if inside:
            self.pending_since = None
            self._learn(at, value)
            return Update(self.state, band)
        if self.pending_since is None:
            self.pending_since = at
        if at - self.pending_since >= settings.min_duration:
            self.anomaly = Anomaly(
                metric=profile.name, version=self.version, since=self.pending_since, observed=value, band=band,
                direction="above" if value > band.high else "below", unit=profile.unit, worst=value,
                sense=profile.direction)
            self.pending_since, self.inside_since = None, None
            return Update("open", band, opened=self.anomaly)
        return Update("pending", band)

    def _close(self, at: float, band: Band, reason: str, *, restart: bool = False) -> Update:
        assert self.anomaly is not None
        closed = replace(self.anomaly, closed=at, close_reason=reason)
        self.anomaly, self.inside_since, self.pending_since = None, None, None
        if restart:
            self._restart(closed.observed)
        return Update(self.state, band, closed=closed)


@dataclass(frozen=True)
class Point:
    """One observation of a served version's telemetry over a short window."""

    at: float
    version: str | None
    values: Mapping[str, float | None]
    """metric name -> value (None: not measured this time)."""
    samples: float | None = None
    """Requests the rates and latencies were computed from."""


@dataclass
class Detector:
    """The series of one ModelDeployment, keyed by (version, metric), with bounded memory."""

    settings: DetectorSettings = field(default_factory=DetectorSettings)
    metrics: Mapping[str, MetricProfile] = field(default_factory=lambda: dict(METRICS))
    series: dict[tuple[str | None, str], Series] = field(default_factory=dict)

    def observe(self, point: Point) -> list[Update]:
        """Judge every metric of ``point``; the updates that opened or closed something come first."""
        updates = []
        for metric, value in point.values.items():
            profile = self.metrics.get(metric)
            if profile is None or value is None:
                continue
            key = (point.version, metric)
            series = self.series.get(key)
            if series is None:
                series = self.series[key] = self._new_series(profile, point.version)
            updates.append(series.observe(point.at, value, point.samples))
        return sorted(updates, key=lambda u: u.opened is None and u.closed is None)

    def _new_series(self, profile: MetricProfile, version: str | None) -> Series:
        """A series for a version that starts serving. It inherits the baseline of another version of the
        same metric that has one (the stable version, for a canary or a newly promoted version), so the
        new version is judged against what the deployment did before it from its first point: a
        version that fails from the start is not learned as normal."""
        series = Series(profile, self.settings, version)
        if version is None:
            return series
        donors = [s for (v, m), s in self.series.items() if m == profile.name and v is not None and v != version
                  and s.anomaly is None and len(s.history) >= self.settings.warmup]
        if donors:
            donor = max(donors, key=lambda s: len(s.history))
            series.history.extend(donor.history)
            series.slot_offset, series.slot_count = list(donor.slot_offset), list(donor.slot_count)
            series.first_seen, series.long_level, series.long_at = donor.first_seen, donor.long_level, donor.long_at
        return series

    def forget_versions(self, keep: Iterable[str | None], at: float) -> list[Anomaly]:
        """Drop the series of versions no longer served; their open anomalies close."""
        kept = set(keep)
        closed = []
        for key in [k for k in self.series if k[0] not in kept]:
            anomaly = self.series.pop(key).anomaly
            if anomaly is not None:
                closed.append(replace(anomaly, closed=at, close_reason=f"version {key[0]} is no longer served"))
        return closed

    def open_anomalies(self) -> list[Anomaly]:
        """Every open anomaly, oldest first."""
        return sorted((s.anomaly for s in self.series.values() if s.anomaly is not None), key=lambda a: a.since)


def _slot(at: float) -> int:
    return int((at % SECONDS_PER_DAY) // 3600)


def _value(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.3g}%"
    if unit == "bytes":
        return f"{value / 2**20:.4g} MiB"
    return f"{_fmt(value)} {unit}"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.3g}"
    return f"{value:.3g}"
