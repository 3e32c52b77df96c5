"""Pure traffic logic of the local router: split, mirroring, config validation, window stats."""

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from mlops_operator.backends.serving_local.traffic import (
    MirrorSampler,
    RouterConfig,
    SlidingWindow,
    SmoothWeightedRoundRobin,
    percentile,
    summarize,
)


def config(*predictors, model="iris"):
    return {"model": model, "predictors": list(predictors)}


STABLE = {"name": "stable", "url": "http://127.0.0.1:9001", "version": "1", "weight": 90}
CANARY = {"name": "canary", "url": "http://127.0.0.1:9002", "version": "2", "weight": 10}
SHADOW = {"name": "shadow", "url": "http://127.0.0.1:9003", "version": "3", "shadow": True, "mirrorPercent": 50}


@pytest.mark.parametrize("weights", [(90, 10), (95, 5), (50, 50), (1, 99), (33, 33, 34), (100, 0)])
def test_split_is_exact_over_every_full_cycle(weights):
    names = [f"p{i}" for i in range(len(weights))]
    balancer = SmoothWeightedRoundRobin(list(zip(names, weights)))
    for _ in range(3):  # each cycle of sum(weights)=100 picks gives each predictor exactly its weight
        counts = Counter(balancer.pick() for _ in range(100))
        assert {n: counts.get(n, 0) for n in names} == dict(zip(names, weights))


def test_split_interleaves_instead_of_bunching():
    balancer = SmoothWeightedRoundRobin([("stable", 90), ("canary", 10)])
    picks = [balancer.pick() for _ in range(100)]
    canary_positions = [i for i, p in enumerate(picks) if p == "canary"]
    gaps = np.diff(canary_positions)
    assert len(canary_positions) == 10 and set(gaps) == {10}


def test_split_prefix_never_drifts_more_than_one_request():
    balancer = SmoothWeightedRoundRobin([("a", 7), ("b", 93)])
    seen = Counter()
    for n in range(1, 1001):
        seen[balancer.pick()] += 1
        assert abs(seen["a"] - 0.07 * n) < 1.0


def test_split_needs_a_positive_weight():
    with pytest.raises(ValueError):
        SmoothWeightedRoundRobin([("a", 0)])


@pytest.mark.parametrize("percent, expected", [(100, 200), (50, 100), (10, 20), (0, 0), (12.5, 25)])
def test_mirror_sampler_takes_exact_share(percent, expected):
    sampler = MirrorSampler(percent)
    assert sum(sampler.take() for _ in range(200)) == expected


def test_config_accepts_stable_canary_shadow_in_camel_case():
    parsed = RouterConfig.model_validate(config(STABLE, CANARY, SHADOW))
    assert [p.name for p in parsed.predictors] == ["stable", "canary", "shadow"]
    assert parsed.predictors[2].mirror_percent == 50
    assert parsed.primary.name == "stable"
    assert parsed.backend_model_name(parsed.predictors[0]) == "iris"
    assert RouterConfig.model_validate(parsed.to_json_dict()) == parsed


def test_primary_is_heaviest_when_no_stable():
    parsed = RouterConfig.model_validate(config({**STABLE, "name": "blue", "weight": 30}, {**CANARY, "name": "green", "weight": 70}))
    assert parsed.primary.name == "green"


def test_backend_model_name_rewrite():
    parsed = RouterConfig.model_validate(config({**STABLE, "weight": 100, "modelName": "iris-v1"}))
    assert parsed.backend_model_name(parsed.predictors[0]) == "iris-v1"


@pytest.mark.parametrize(
    "bad, message",
    [
        (config({**STABLE, "weight": 80}, CANARY), "sum to 100"),
        (config(STABLE, {**CANARY, "name": "stable"}), "duplicate"),
        (config({**SHADOW, "weight": 10}, STABLE), "weight 0"),
        (config({**STABLE, "weight": 100, "name": "Stable"}), "DNS label"),
        (config({**STABLE, "weight": 100, "url": "127.0.0.1:9001"}), "http"),
        (config({**STABLE, "weight": 100, "url": "http://127.0.0.1:9001/v2"}), "no path"),
        (config({**STABLE, "weight": 101}), "less than or equal"),
        (config(SHADOW), "sum to 100"),
        (config({**STABLE, "weight": 100}, model=""), "at least 1"),
    ],
)
def test_config_rejects(bad, message):
    with pytest.raises(ValidationError, match=message):
        RouterConfig.model_validate(bad)


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.exponential(5.0, size=n).tolist())
        for q in (0, 1, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_hand_computed():
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 99) == pytest.approx(39.7)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_counts_5xx_as_errors_and_4xx_apart():
    samples = [(0.0, 0.001, 200)] * 6 + [(0.0, 0.002, 500), (0.0, 0.003, 502), (0.0, 0.004, 404), (0.0, 0.005, 200)]
    stats = summarize(samples)
    assert (stats.requests, stats.errors, stats.client_errors) == (10, 2, 1)
    # The client's 404 is neither in the error rate (2 of 9 well-formed requests) nor in the latencies.
    assert stats.error_rate == pytest.approx(2 / 9)
    assert stats.p50_ms == pytest.approx(1.0)
    assert stats.p99_ms == pytest.approx(np.percentile([1] * 6 + [2, 3, 5], 99))


def test_summarize_empty_window():
    stats = summarize([])
    assert (stats.requests, stats.errors, stats.error_rate, stats.p50_ms, stats.p99_ms) == (0, 0, 0.0, None, None)


def test_sliding_window_cuts_by_since_and_until():
    window = SlidingWindow()
    for t in range(100):
        window.add(float(t), t / 1000.0, 500 if t >= 90 else 200)
    recent = window.stats(since=80.0)
    assert recent.requests == 20 and recent.errors == 10
    middle = window.stats(since=10.0, until=19.0)
    assert middle.requests == 10 and middle.errors == 0
    assert middle.p50_ms == pytest.approx(14.5)
    assert window.covers(0.0)


def test_sliding_window_is_bounded_and_says_when_incomplete():
    window = SlidingWindow(retention_seconds=10.0, max_samples=1000)
    for t in range(5000):
        window.add(t / 100.0, 0.001, 200)  # 50 s of samples at 100/s
    assert window.stats(since=0.0).requests == 1000  # count bound wins
    assert not window.covers(0.0)
    assert window.covers(40.0)
    window.add(100.0, 0.001, 200)  # age bound: everything older than 90 s goes
    assert window.stats(since=0.0).requests == 1
