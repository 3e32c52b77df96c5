"""Placement advice (reconcile/placement.py): rank regions by cost under a latency budget.

The published case: the AWS Architecture Blog post "What to Consider when Selecting a Region for
your Workloads" (https://aws.amazon.com/blogs/architecture/what-to-consider-when-selecting-a-region-for-your-workloads/)
compares the same small web stack in three Regions for users in Pakistan. The figures below are as
issue #14 quotes them (monthly cost from the AWS Pricing Calculator, latency from users in
Pakistan); the stored copy of that page available here holds only its opening, so the figures are
cited from the issue, and the page is named as where they come from.
"""

from __future__ import annotations

import pytest

from mlops_operator.reconcile.placement import RegionOption, advise_placement

PUBLISHED_CASE = (
    RegionOption("us-east-2", 72.52, 255, "US East (Ohio)"),
    RegionOption("eu-central-1", 84.75, 186, "Europe (Frankfurt)"),
    RegionOption("ap-south-1", 85.39, 122, "Asia Pacific (Mumbai)"),
)


def test_the_published_case_under_a_150_ms_budget_is_mumbai_and_says_what_the_latency_costs():
    advice = advise_placement(PUBLISHED_CASE, latency_budget_ms=150)
    assert advice.choice.region == "ap-south-1"
    assert [o.region for o in advice.ranked] == ["ap-south-1", "eu-central-1", "us-east-2"]
    assert advice.within_budget == ("ap-south-1",)
    assert advice.latency_premium == pytest.approx(12.87)
    assert advice.message == (
        "Asia Pacific (Mumbai) (ap-south-1): $85.39/month at 122 ms, the cheapest within the 150 ms latency budget. "
        "The cheapest region, US East (Ohio) (us-east-2) at $72.52/month, is 255 ms away: meeting the budget costs "
        "$12.87/month (17.7%) more and saves 133 ms.")


def test_the_published_case_without_a_budget_is_ohio_and_says_what_the_fastest_would_cost():
    advice = advise_placement(PUBLISHED_CASE)
    assert advice.choice.region == "us-east-2"
    assert [o.region for o in advice.ranked] == ["us-east-2", "eu-central-1", "ap-south-1"]
    assert "the cheapest region (no latency budget)" in advice.message
    assert "The fastest, Asia Pacific (Mumbai) (ap-south-1) at 122 ms, costs $12.87/month (17.7%) more" in advice.message
    assert "$0.10 per month for each ms saved" in advice.message


def test_a_budget_that_frankfurt_meets_picks_frankfurt_and_one_nobody_meets_says_so():
    assert advise_placement(PUBLISHED_CASE, latency_budget_ms=200).choice.region == "eu-central-1"
    nobody = advise_placement(PUBLISHED_CASE, latency_budget_ms=100)
    assert nobody.choice is None and nobody.ranked[0].region == "ap-south-1"
    assert nobody.message.startswith("No region meets the 100 ms latency budget; the fastest is Asia Pacific (Mumbai)")


def test_when_the_cheapest_region_meets_the_budget_nothing_is_paid_for_latency():
    advice = advise_placement(PUBLISHED_CASE, latency_budget_ms=300)
    assert advice.choice.region == "us-east-2" and advice.latency_premium == 0
    assert "the cheapest region and within the 300 ms latency budget" in advice.message
    assert advise_placement([]).choice is None
