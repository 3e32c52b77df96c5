"""Monthly cost estimates from the shipped price table (reconcile/cost.py, data/prices.yaml)."""

from __future__ import annotations

from decimal import Decimal
from typing import get_args

import pytest

from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.reconcile.cost import (
    cheapest_fitting_instance,
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


def test_the_table_covers_every_region_the_crd_allows_and_says_where_it_comes_from():
    regions = set(get_args(get_args(ModelDeploymentSpec.model_fields["region"].annotation)[0]))
    assert regions <= set(TABLE.regions)
    assert "AWS" in TABLE.source and TABLE.prices_as_of
    for prices in TABLE.regions.values():
        assert set(prices) == TABLE.instance_type_names()


def test_the_cheapest_instance_that_holds_the_requests_is_chosen():
    assert cheapest_fitting_instance(TABLE, "us-east-1", 0.5, 0.5) == "t3.medium"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 2, 6) == "m5.large"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 3, 6) == "c5.xlarge"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 2, 20) == "r5.xlarge"
    assert cheapest_fitting_instance(TABLE, "us-east-1", 64, 1) is None


def test_estimate_for_replicas_in_a_region():
    estimate = estimate_monthly_cost(spec(region="eu-west-1", replicas=3,
                                          resources={"requests": {"cpu": "1500m", "memory": "6Gi"}}), TABLE)
    assert estimate.problem is None
    assert estimate.cost["instanceType"] == "m5.large"
    assert estimate.cost["amount"] == pytest.approx(3 * 0.107 * 730, abs=0.01)
    assert estimate.cost["currency"] == "USD"
    assert "3 replicas x m5.large at 0.107 USD/h" in estimate.cost["basis"] and "as of" in estimate.cost["basis"]


def test_estimate_with_autoscaling_counts_the_minimum():
    estimate = estimate_monthly_cost(spec(region="us-east-1", autoscaling={"minReplicas": 2, "maxReplicas": 6}), TABLE)
    assert estimate.cost["amount"] == pytest.approx(2 * 0.0416 * 730, abs=0.01)
    assert "up to 6" in estimate.cost["basis"]


def test_limits_stand_in_for_missing_requests():
    estimate = estimate_monthly_cost(spec(region="us-east-1", resources={"limits": {"cpu": "3"}}), TABLE)
    assert estimate.cost["instanceType"] == "c5.xlarge"


def test_a_named_instance_type_is_used_when_it_fits():
    assert estimate_monthly_cost(spec(region="ap-southeast-1", instanceType="r5.large"), TABLE).cost["amount"] == \
        pytest.approx(0.152 * 730, abs=0.01)
    too_small = estimate_monthly_cost(spec(region="us-east-1", instanceType="t3.medium",
                                           resources={"requests": {"memory": "8Gi"}}), TABLE)
    assert too_small.cost is None and "cannot hold" in too_small.problem


def test_no_region_no_estimate_and_huge_requests_say_why():
    assert estimate_monthly_cost(spec(), TABLE).cost is None
    huge = estimate_monthly_cost(spec(region="us-east-1", resources={"requests": {"cpu": "96"}}), TABLE)
    assert huge.cost is None and "no instance type" in huge.problem


def test_zero_replicas_cost_nothing():
    assert estimate_monthly_cost(spec(region="us-east-1", replicas=0), TABLE).cost["amount"] == 0


@pytest.mark.parametrize(("table", "problem"), [
    ({}, "malformed"),
    ({"source": "s", "pricesAsOf": "x", "instanceTypes": {"a": {"vcpu": 1, "memoryGiB": 1}},
      "regions": {"r": {"b": 1.0}}}, "unknown instance types"),
    ({"source": "s", "pricesAsOf": "x", "instanceTypes": {"a": {"vcpu": 1, "memoryGiB": 1}},
      "regions": {"r": {"a": -1}}}, "negative"),
])
def test_malformed_tables_are_refused(table, problem):
    with pytest.raises(ValueError, match=problem):
        parse_price_table(table)
