"""What a ModelDeployment's serving capacity costs per month, from a price table with sources.

The table holds on-demand $/hour per region and instance type; every price and every capacity
names its source (URL and date). The shipped table is ``mlops_operator/data/prices.yaml``; with
AWS credentials the operator builds one from the AWS Price List API instead
(``backends/prices_aws.py``). The estimate assumes one instance per replica: the given
``spec.instanceType``, or else the cheapest type in the region whose vCPU and memory hold the
replica's requests.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import yaml

from mlops_operator.api.modeldeployment import ModelDeploymentSpec

PRICES_RESOURCE = "prices.yaml"

# Kubernetes quantity suffixes. Written out here because reconcile/ may not import the kubernetes
# client (whose utils.quantity does the same).
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|([KMGTPE]i|[numkMGTPE]?))$")


@dataclass(frozen=True)
class Source:
    """Where figures come from: what it is, its URL and its date."""

    what: str
    url: str
    date: str

    def cite(self) -> str:
        return f"{self.what}, {self.url}, {self.date}"


@dataclass(frozen=True)
class InstanceType:
    """Capacity of one instance type."""

    name: str
    vcpu: float
    memory_gib: float
    source: str = ""
    """Key of its entry in :attr:`PriceTable.sources`."""


@dataclass(frozen=True)
class PriceTable:
    """On-demand prices per region and instance type, each with where it comes from."""

    currency: str
    hours_per_month: float
    instance_types: Mapping[str, InstanceType]
    regions: Mapping[str, Mapping[str, float]]
    """region -> instance type -> price per hour."""
    sources: Mapping[str, Source]
    price_sources: Mapping[str, Mapping[str, str]]
    """region -> instance type -> key of the price's source."""

    def instance_type_names(self) -> set[str]:
        """Every instance type with a capacity entry."""
        return set(self.instance_types)

    def price_source(self, region: str, instance: str) -> Source:
        """The source of one price."""
        return self.sources[self.price_sources[region][instance]]


def _source(data: Mapping[str, Any]) -> Source:
    source = Source(str(data["what"]).strip(), str(data["url"]), str(data["date"]))
    if not source.url.startswith("https://") or not source.date or not source.what:
        raise ValueError(f"a source needs what, an https URL and a date: {dict(data)}")
    return source


def parse_price_table(data: Mapping[str, Any]) -> PriceTable:
    """Check and convert the YAML document; raise ValueError naming what is wrong.

    Every instance type and every price must name a source that the document lists.
    """
    try:
        sources = {key: _source(value) for key, value in data["sources"].items()}
        types = {name: InstanceType(name, float(spec["vcpu"]), float(spec["memoryGiB"]), str(spec["source"]))
                 for name, spec in data["instanceTypes"].items()}
        regions = {region: {name: float(entry["usdPerHour"]) for name, entry in prices.items()}
                   for region, prices in data["regions"].items()}
        price_sources = {region: {name: str(entry["source"]) for name, entry in prices.items()}
                         for region, prices in data["regions"].items()}
        table = PriceTable(currency=str(data.get("currency", "USD")),
                           hours_per_month=float(data.get("hoursPerMonth", 730)),
                           instance_types=types, regions=regions, sources=sources, price_sources=price_sources)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"price table is malformed: {type(error).__name__}: {error}") from None
    for name, capacity in types.items():
        if capacity.source not in sources:
            raise ValueError(f"price table: instance type {name} names no known source ({capacity.source!r})")
    for region, prices in regions.items():
        unknown = sorted(set(prices) - set(types))
        if unknown:
            raise ValueError(f"price table: region {region} prices unknown instance types {unknown}")
        if any(price < 0 for price in prices.values()):
            raise ValueError(f"price table: region {region} has a negative price")
        unsourced = sorted(name for name, key in price_sources[region].items() if key not in sources)
        if unsourced:
            raise ValueError(f"price table: region {region} has prices with no known source: {unsourced}")
    return table


@functools.cache
def default_price_table() -> PriceTable:
    """The price table shipped with the operator (read once)."""
    text = resources.files("mlops_operator").joinpath("data", PRICES_RESOURCE).read_text()
    return parse_price_table(yaml.safe_load(text))


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2``, ``512Mi``, ``1e9``) as a number."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"invalid quantity {value!r}")
    number, exponent, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"invalid quantity {value!r}") from None
    if exponent:
        return base * Decimal(10) ** int(exponent[1:])
    suffix = suffix or ""
    return base * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def cpu_cores(value: str | None) -> float:
    """CPU quantity in cores (0 when unset)."""
    return float(parse_quantity(value)) if value else 0.0


def memory_gib(value: str | None) -> float:
    """Memory quantity in GiB (0 when unset)."""
    return float(parse_quantity(value)) / 2**30 if value else 0.0


def cheapest_fitting_instance(table: PriceTable, region: str, cpu: float, memory: float) -> str | None:
    """The cheapest instance type priced in ``region`` whose capacity holds ``cpu`` cores and ``memory`` GiB."""
    fitting = [(price, table.instance_types[name].vcpu, name) for name, price in table.regions.get(region, {}).items()
               if table.instance_types[name].vcpu >= cpu and table.instance_types[name].memory_gib >= memory]
    return min(fitting)[2] if fitting else None


@dataclass(frozen=True)
class CostEstimate:
    """status.estimatedMonthlyCost, or why there is none."""

    cost: dict[str, Any] | None
    problem: str | None = None


def estimate_monthly_cost(spec: ModelDeploymentSpec, table: PriceTable) -> CostEstimate:
    """The monthly cost of the spec's replicas in ``spec.region`` (no region: no estimate)."""
    if not spec.region:
        return CostEstimate(None)
    requests = spec.resources.requests
    # Without requests the limits are what the scheduler would reserve; without either, nothing.
    cpu = cpu_cores(requests.cpu or spec.resources.limits.cpu)
    memory = memory_gib(requests.memory or spec.resources.limits.memory)
    prices = table.regions.get(spec.region)
    if prices is None:
        return CostEstimate(None, f"the price table has no sourced prices for region {spec.region} (with AWS "
                                  f"credentials the operator reads them from the AWS Price List API)")
    if spec.instance_type:
        instance = spec.instance_type
        if instance not in prices:
            return CostEstimate(None, f"the price table has no price for {instance} in {spec.region}")
        capacity = table.instance_types[instance]
        if capacity.vcpu < cpu or capacity.memory_gib < memory:
            return CostEstimate(None, f"{instance} ({capacity.vcpu:g} vCPU, {capacity.memory_gib:g} GiB) cannot hold "
                                      f"the requests ({cpu:g} CPU, {memory:g} GiB)")
    else:
        found = cheapest_fitting_instance(table, spec.region, cpu, memory)
        if found is None:
            return CostEstimate(None, f"no instance type in the price table holds the requests ({cpu:g} CPU, "
                                      f"{memory:g} GiB) in {spec.region}")
        instance = found
    if spec.autoscaling:
        replicas = spec.autoscaling.min_replicas
        scaling = f"{replicas} replicas (autoscaling minimum; up to {spec.autoscaling.max_replicas})"
    else:
        replicas = 1 if spec.replicas is None else spec.replicas
        scaling = f"{replicas} replica{'s' if replicas != 1 else ''}"
    hourly = prices[instance]
    amount = math.floor(replicas * hourly * table.hours_per_month * 100 + 0.5) / 100
    source = table.price_source(spec.region, instance)
    basis = (f"{scaling} x {instance} at {hourly:g} {table.currency}/h x {table.hours_per_month:g} h/month, one "
             f"instance per replica, on-demand in {spec.region}; price from {source.cite()}")[:1024]
    return CostEstimate({"amount": amount, "currency": table.currency, "instanceType": instance, "basis": basis})


def cost_per_thousand_predictions(monthly_amount: float, requests_per_second: float, hours_per_month: float = 730
                                  ) -> float | None:
    """What 1,000 predictions cost at the observed request rate (None without traffic)."""
    if requests_per_second <= 0:
        return None
    per_month = requests_per_second * 3600 * hours_per_month
    return monthly_amount / per_month * 1000
