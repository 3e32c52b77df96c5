"""Cost and latency-aware placement advice, pure: rank candidate regions by cost under a latency budget.

Each candidate is a region with the monthly cost of running the deployment there and the latency
from its users (declared or measured). Regions within the budget rank first, cheapest first (ties:
lower latency); then the others, by how far they miss the budget. The advice names the choice and
says what the latency costs: how much more per month the budget makes you pay than the cheapest
region, or, without a budget, what the fastest region would cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RegionOption:
    """One candidate region."""

    region: str
    monthly_cost: float
    latency_ms: float
    label: str | None = None
    """A human name (e.g. "US East (Ohio)"); the region code is used without one."""

    @property
    def name(self) -> str:
        return f"{self.label} ({self.region})" if self.label else self.region


@dataclass(frozen=True)
class PlacementAdvice:
    """The ranking and the sentence that explains it."""

    ranked: tuple[RegionOption, ...]
    choice: RegionOption | None
    """The cheapest region within the budget (None: none meets it)."""
    within_budget: tuple[str, ...]
    message: str
    latency_premium: float | None = None
    """What meeting the budget costs per month over the cheapest region (0 when the cheapest meets it)."""


def _money(amount: float, currency: str) -> str:
    return f"${amount:,.2f}" if currency == "USD" else f"{amount:,.2f} {currency}"


def advise_placement(options: Sequence[RegionOption], latency_budget_ms: float | None = None,
                     currency: str = "USD") -> PlacementAdvice:
    """Rank ``options`` by monthly cost under ``latency_budget_ms`` (None: no budget) and explain the choice."""
    if not options:
        return PlacementAdvice((), None, (), "No candidate regions to compare.")
    money = lambda amount: _money(amount, currency)  # noqa: E731
    budget = latency_budget_ms if latency_budget_ms is not None else float("inf")
    within = sorted((o for o in options if o.latency_ms <= budget), key=lambda o: (o.monthly_cost, o.latency_ms))
    outside = sorted((o for o in options if o.latency_ms > budget), key=lambda o: (o.latency_ms - budget,
                                                                                    o.monthly_cost))
    ranked = tuple(within + outside)
    cheapest = min(options, key=lambda o: (o.monthly_cost, o.latency_ms))
    fastest = min(options, key=lambda o: (o.latency_ms, o.monthly_cost))

    if not within:
        message = (f"No region meets the {latency_budget_ms:g} ms latency budget; the fastest is {fastest.name} at "
                   f"{fastest.latency_ms:g} ms for {money(fastest.monthly_cost)}/month, and the cheapest "
                   f"{cheapest.name} at {cheapest.latency_ms:g} ms for {money(cheapest.monthly_cost)}/month.")
        return PlacementAdvice(ranked, None, (), message)

    choice = within[0]
    premium = choice.monthly_cost - cheapest.monthly_cost
    lead = f"{choice.name}: {money(choice.monthly_cost)}/month at {choice.latency_ms:g} ms"
    if latency_budget_ms is not None:
        if choice is cheapest or premium <= 0:
            message = (f"{lead}, the cheapest region and within the {latency_budget_ms:g} ms latency budget.")
        else:
            message = (f"{lead}, the cheapest within the {latency_budget_ms:g} ms latency budget. The cheapest region, "
                       f"{cheapest.name} at {money(cheapest.monthly_cost)}/month, is {cheapest.latency_ms:g} ms away: "
                       f"meeting the budget costs {money(premium)}/month ({premium / cheapest.monthly_cost:.1%}) more "
                       f"and saves {cheapest.latency_ms - choice.latency_ms:g} ms.")
    else:
        extra = fastest.monthly_cost - choice.monthly_cost
        if fastest is choice or extra <= 0:
            message = f"{lead}, the cheapest and the fastest region."
        else:
            message = (f"{lead}, the cheapest region (no latency budget). The fastest, {fastest.name} at "
                       f"{fastest.latency_ms:g} ms, costs {money(extra)}/month ({extra / choice.monthly_cost:.1%}) "
                       f"more: {money(extra / (choice.latency_ms - fastest.latency_ms))} per month for each ms "
                       f"saved.")
    return PlacementAdvice(ranked, choice, tuple(o.region for o in within), message,
                           premium if latency_budget_ms is not None else 0.0)
