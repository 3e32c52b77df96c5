"""Pure traffic logic of the local router: config schema, weighted split, mirroring, window stats.

Nothing here does I/O, so the router process, the manager and the tests share it.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Predictor names end up as Prometheus label values and directory names: keep them DNS-label-like.
_PREDICTOR_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class PredictorRoute(BaseModel):
    """One backend behind the router: a model server and its share of the traffic."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    name: str
    """Predictor name (e.g. ``stable``, ``canary``, ``shadow``); a metrics label and response header."""
    url: str
    """Base URL of the backend's V2 REST endpoint, e.g. ``http://127.0.0.1:40123``."""
    version: str = ""
    """Model version served by this predictor; echoed in ``x-mlops-model-version``."""
    model_name: str | None = Field(default=None, alias="modelName")
    """Model name the backend serves; the request path is rewritten to it (default: the router's model)."""
    weight: int = Field(default=0, ge=0, le=100)
    """Percent of client traffic (non-shadow predictors' weights sum to 100)."""
    shadow: bool = False
    """A shadow gets a mirrored copy of requests; its responses never reach the client."""
    mirror_percent: float = Field(default=100.0, ge=0.0, le=100.0, alias="mirrorPercent")
    """Percent of client requests mirrored to this shadow."""
    inputs: tuple[dict[str, Any], ...] = ()
    """The model's declared V2 inputs (``model-settings.json``: name, datatype, shape); the router
    refuses requests that do not fit the primary predictor's. Empty: only the protocol is checked."""

    @field_validator("name")
    @classmethod
    def _name_is_label(cls, value: str) -> str:
        if not _PREDICTOR_NAME.match(value):
            raise ValueError(f"predictor name {value!r} must be a lowercase DNS label")
        return value

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+$", value.rstrip("/")):
            raise ValueError(f"url {value!r} must be http(s)://host:port with no path")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _shadow_takes_no_weight(self) -> "PredictorRoute":
        if self.shadow and self.weight:
            raise ValueError(f"shadow predictor {self.name!r} must have weight 0")
        return self


class RouterConfig(BaseModel):
    """What the router serves: the public model name and its predictors (set atomically)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    model: str = Field(min_length=1)
    """Model name clients use in ``/v2/models/<model>/infer``."""
    predictors: tuple[PredictorRoute, ...]

    @model_validator(mode="after")
    def _routable(self) -> "RouterConfig":
        names = [p.name for p in self.predictors]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate predictor names: {duplicates}")
        served = [p for p in self.predictors if not p.shadow]
        total = sum(p.weight for p in served)
        if total != 100:
            raise ValueError(f"weights of non-shadow predictors must sum to 100, got {total}")
        return self

    @property
    def primary(self) -> PredictorRoute:
        """The predictor metadata requests go to: ``stable`` if present, else the heaviest."""
        served = [p for p in self.predictors if not p.shadow]
        for p in served:
            if p.name == "stable":
                return p
        return max(served, key=lambda p: p.weight)

    def backend_model_name(self, predictor: PredictorRoute) -> str:
        """Model name to put in the backend's URL path."""
        return predictor.model_name or self.model

    def to_json_dict(self) -> dict:
        """The config as the camelCase JSON the admin API accepts."""
        return self.model_dump(by_alias=True, mode="json")


class SmoothWeightedRoundRobin:
    """Deterministic weighted split (nginx's smooth weighted round-robin).

    Why not random: over any run of ``sum(weights)`` requests each predictor gets exactly its
    weight, so a 5 % canary step sees its 5 % at once instead of a binomially noisy share, and
    picks are interleaved (90/10 gives ``s s s s c s s s s s …``, not 90 then 10).
    """

    def __init__(self, weights: Sequence[tuple[str, int]]):
        self._names = [n for n, w in weights if w > 0]
        self._weights = [w for n, w in weights if w > 0]
        if not self._names:
            raise ValueError("at least one positive weight is needed")
        self._total = sum(self._weights)
        self._current = [0] * len(self._names)

    def pick(self) -> str:
        """Name of the predictor for the next request."""
        best = 0
        for i, w in enumerate(self._weights):
            self._current[i] += w
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= self._total
        return self._names[best]


class MirrorSampler:
    """Deterministic sampler: mirrors exactly ``percent`` % of requests, evenly spread."""

    def __init__(self, percent: float):
        self._rate = percent / 100.0
        self._seen = 0

    def take(self) -> bool:
        """True when this request should be mirrored."""
        before = math.floor(self._seen * self._rate + 1e-9)
        self._seen += 1
        return math.floor(self._seen * self._rate + 1e-9) > before


@dataclass(frozen=True)
class WindowStats:
    """Per-predictor request statistics over ``[since, until]``; what rollout analysis reads."""

    requests: int
    """Every request, client errors included."""
    errors: int
    """Predictor failures: 5xx, or the backend unreachable."""
    client_errors: int
    """Requests refused as the client's mistake (4xx); not in ``error_rate`` nor the latencies."""
    error_rate: float
    """``errors`` over the requests that were not client errors."""
    p50_ms: float | None
    p99_ms: float | None

    def to_json_dict(self) -> dict:
        """camelCase JSON as served by ``GET /_mlops/stats``."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "clientErrors": self.client_errors,
            "errorRate": self.error_rate,
            "p50Ms": self.p50_ms,
            "p99Ms": self.p99_ms,
        }

    @classmethod
    def from_json_dict(cls, data: dict) -> "WindowStats":
        """Inverse of :meth:`to_json_dict`."""
        return cls(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            client_errors=int(data.get("clientErrors", 0)),
            error_rate=float(data["errorRate"]),
            p50_ms=data.get("p50Ms"),
            p99_ms=data.get("p99Ms"),
        )


def is_server_error(status: int) -> bool:
    """A predictor failure: 5xx from the backend, or the router's 502/504 when it was unreachable."""
    return status >= 500


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: Iterable[tuple[float, float, int]]) -> WindowStats:
    """Stats of ``(timestamp, latency_seconds, status)`` samples (already cut to the window)."""
    latencies: list[float] = []
    errors = client_errors = 0
    for _, latency, status in samples:
        if is_server_error(status):
            errors += 1
        elif status >= 400:
            # The client's mistake: neither in the error rate nor in the latencies.
            client_errors += 1
            continue
        latencies.append(latency * 1000.0)
    judged = len(latencies)
    latencies.sort()
    return WindowStats(
        requests=judged + client_errors,
        errors=errors,
        client_errors=client_errors,
        error_rate=errors / judged if judged else 0.0,
        p50_ms=percentile(latencies, 50) if judged else None,
        p99_ms=percentile(latencies, 99) if judged else None,
    )


@dataclass
class SlidingWindow:
    """Recent ``(timestamp, latency_seconds, status)`` samples of one predictor.

    Bounded both by age and by count, so memory stays flat under any load; ``stats(since)``
    answers for any ``since`` inside the retained span.
    """

    retention_seconds: float = 3600.0
    max_samples: int = 200_000
    _samples: deque = field(default_factory=deque)
    _evicted_through: float | None = None

    def add(self, ts: float, latency_seconds: float, status: int) -> None:
        """Record one finished request (timestamps must be non-decreasing)."""
        self._samples.append((ts, latency_seconds, status))
        horizon = ts - self.retention_seconds
        while self._samples and (
            self._samples[0][0] < horizon or len(self._samples) > self.max_samples
        ):
            self._evicted_through = self._samples.popleft()[0]

    def stats(self, since: float, until: float | None = None) -> WindowStats:
        """Stats over samples with ``since <= ts`` (and ``ts <= until`` when given)."""
        samples = list(self._samples)
        start = bisect.bisect_left(samples, since, key=lambda s: s[0])
        end = len(samples) if until is None else bisect.bisect_right(samples, until, key=lambda s: s[0])
        return summarize(samples[start:end])

    def covers(self, since: float) -> bool:
        """True when no sample at or after ``since`` has been evicted (stats since then are complete)."""
        return self._evicted_through is None or self._evicted_through < since
