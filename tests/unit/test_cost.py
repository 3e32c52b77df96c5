"""Monthly cost estimates from the shipped price table (reconcile/cost.py, data/prices.yaml)."""

from __future__ import annotations

from decimal import Decimal
from typing import get_args

import pytest

from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.reconcile.cost import (
    cheapest_fitting_instance,
    cost_per_thousand_predictions,
    default_price_table,
    estimate_monthly_cost,
    parse_price_table,
    parse_quantity,
)

TABLE = default_price_table()


def spec(**fields) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"fromTraining": "iris"}, **fields})


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Decimal("0.5")), ("2", Decimal(2)), ("0.25", Decimal("0.25")), ("512Mi", Decimal(512 * 2**20)),
    ("2Gi", Decimal(2 * 2**30)), ("1G", Decimal(10**9)), ("1e3", Decimal(1000)), ("1.5Ki", Decimal(1536)),
    ("100k", Decimal(100000)),
])
def test_quantities(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["lots", "1Zi", "", "1.2.3"])
def test_bad_quantities(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_every_price_and_capacity_names_a_source_with_a_url_and_a_date():
    assert TABLE.regions, "the shipped table prices nothing"
    for source in TABLE.sources.values():
        assert source.url.startswith("https://") and source.date and source.what
    for capacity in TABLE.instance_types.values():
        assert capacity.source in TABLE.sources
    for region, prices in TABLE.regions.items():
        assert set(prices) <= TABLE.instance_type_names()
        for instance in prices:
            assert TABLE.price_source(region, instance).url.startswith("https://")
    # Regions the CRD allows but no source prices give no estimate and say why (see below).
    regions = set(get_args(get_args(ModelDeploymentSpec.model_fields["region"].annotation)[0]))
    assert set(TABLE.regions) <= regions


def test_the_cheapest_instance_that_holds_the_requests_is_chosen():
    assert cheapest_fitting_instance(TABLE, "us-east-1", 0.5, 0.5) == "t3.large"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 2, 6) == "t3.large"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 2, 12) == "r5.large"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 3, 6) == "c5.xlarge"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 3, 12) == "m5.xlarge"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 64, 1) is None


def test_estimate_for_replicas_in_a_region_cites_the_price():
    estimate = estimate_monthly_cost(spec(region="us-east-1", replicas=3,
                                          resources={"requests": {"cpu": "1500m", "memory": "12Gi"}}), TABLE)
    assert estimate.problem is None
    assert estimate.cost["instanceType"] == "r5.large"
    assert estimate.cost["amount"] == pytest.approx(3 * 0.126 * 730, abs=0.01)
    assert estimate.cost["currency"] == "USD"
    basis = estimate.cost["basis"]
    assert "3 replicas x r5.large at 0.126 USD/h" in basis
    assert "https://github.com/aws/karpenter-provider-aws/blob/" in basis and "2026-01-19" in basis


def test_a_region_without_sourced_prices_gets_no_estimate_and_says_why():
    estimate = estimate_monthly_cost(spec(region="eu-west-1"), TABLE)
    assert estimate.cost is None and "no sourced prices for region eu-west-1" in estimate.problem


def test_estimate_with_autoscaling_counts_the_minimum():
    estimate = estimate_monthly_cost(spec(region="us-east-1", autoscaling={"minReplicas": 2, "maxReplicas": 6}), TABLE)
    assert estimate.cost["amount"] == pytest.approx(2 * 0.0832 * 730, abs=0.01)
    assert "up to 6" in estimate.cost["basis"]


def test_cost_per_thousand_predictions_from_observed_traffic():
    # $60.74 a month at 1 request per second: 2,628,000 requests a month.
    assert cost_per_thousand_predictions(60.736, 1.0) == pytest.approx(60.736 / 2628, rel=1e-9)
    assert cost_per_thousand_predictions(60.736, 0.0) is None


def test_limits_stand_in_for_missing_requests():
    estimate = estimate_monthly_cost(spec(region="us-east-1", resources={"limits": {"cpu": "3"}}), TABLE)
    assert estimate.cost["instanceType"] == "c5.xlarge"


def test_a_named_instance_type_is_used_when_it_fits():
    assert estimate_monthly_cost(spec(region="us-east-1", instanceType="r5.large"), TABLE).cost["amount"] == \
        pytest.approx(0.126 * 730, abs=0.01)
    too_small = estimate_monthly_cost(spec(region="us-east-1", instanceType="t3.large",
                                           resources={"requests": {"memory": "12Gi"}}), TABLE)
    assert too_small.cost is None and "cannot hold" in too_small.problem


def test_no_region_no_estimate_and_huge_requests_say_why():
    assert estimate_monthly_cost(spec(), TABLE).cost is None
    huge = estimate_monthly_cost(spec(region="us-east-1", resources={"requests": {"cpu": "96"}}), TABLE)
    assert huge.cost is None and "no instance type" in huge.problem


def test_zero_replicas_cost_nothing():
    assert estimate_monthly_cost(spec(region="us-east-1", replicas=0), TABLE).cost["amount"] == 0


SOURCES = {"s": {"what": "a page", "url": "https://example.org/prices", "date": "2026-01-01"}}
TYPE_A = {"a": {"vcpu": 1, "memoryGiB": 1, "source": "s"}}


@pytest.mark.parametrize(("table", "problem"), [
    ({}, "malformed"),
    ({"sources": SOURCES, "instanceTypes": TYPE_A, "regions": {"r": {"b": {"usdPerHour": 1.0, "source": "s"}}}},
     "unknown instance types"),
    ({"sources": SOURCES, "instanceTypes": TYPE_A, "regions": {"r": {"a": {"usdPerHour": -1, "source": "s"}}}},
     "negative"),
    ({"sources": SOURCES, "instanceTypes": TYPE_A, "regions": {"r": {"a": {"usdPerHour": 1, "source": "memory"}}}},
     "no known source"),
    ({"sources": SOURCES, "instanceTypes": TYPE_A, "regions": {"r": {"a": 0.1}}}, "malformed"),
    ({"sources": {"s": {"what": "x", "url": "somewhere", "date": "2026"}}, "instanceTypes": TYPE_A, "regions": {}},
     "https URL"),
    ({"sources": SOURCES, "instanceTypes": {"a": {"vcpu": 1, "memoryGiB": 1, "source": "t"}}, "regions": {}},
     "names no known source"),
])
def test_malformed_tables_are_refused(table, problem):
    with pytest.raises(ValueError, match=problem):
        parse_price_table(table)
