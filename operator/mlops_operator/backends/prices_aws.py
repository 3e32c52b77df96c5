"""Prices from the AWS Price List API (boto3 ``pricing`` client, ``get_products``), cached on disk.

Used instead of the shipped table (``data/prices.yaml``) when AWS credentials exist. One query per
region and instance type (Linux, shared tenancy, no pre-installed software, on-demand), whose
answer carries the price, the instance's vCPU and memory, and the price's effective date; every
figure in the resulting table cites the API, the query and that date. The cache (JSON, under the
data dir) is reused until it is older than its time-to-live, so the API is asked at most daily.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlops_operator.reconcile.cost import PriceTable, default_price_table, parse_price_table

log = logging.getLogger("mlops_operator.prices")

# The Price List query API answers in these regions only; us-east-1 serves every region's prices.
PRICING_REGION = "us-east-1"
PRICING_ENDPOINT = "https://api.pricing.us-east-1.amazonaws.com"
# Where the client asks without AWS_ENDPOINT_URL_PRICING (the figures' cited source stays PRICING_ENDPOINT).
DEFAULT_ENDPOINT = PRICING_ENDPOINT
CACHE_TTL_SECONDS = 24 * 3600
_MEMORY = re.compile(r"^([0-9.,]+)\s*GiB$")


class PriceListUnavailable(Exception):
    """The Price List API could not be asked or gave nothing usable."""


_credentials: tuple[float, bool] | None = None
CREDENTIALS_RECHECK_SECONDS = 600.0
# When the Price List API last failed (monotonic), and how long the shipped table is used before it is asked again.
_unavailable: float | None = None
UNAVAILABLE_RETRY_SECONDS = 600.0


def has_credentials() -> bool:
    """Whether boto3 finds AWS credentials (environment, config files, instance role, IRSA)."""
    import boto3  # on first use: a second of start-up for deployments that never price anything
    import botocore.exceptions

    try:
        return boto3.Session().get_credentials() is not None
    except botocore.exceptions.BotoCoreError:
        return False


def _has_credentials_cached() -> bool:
    # Looking may ask the instance metadata service (with timeouts): at most every 10 minutes.
    global _credentials
    now = time.monotonic()
    if _credentials is None or now - _credentials[0] > CREDENTIALS_RECHECK_SECONDS:
        _credentials = (now, has_credentials())
    return _credentials[1]


def pricing_endpoint() -> str:
    """The Price List API's endpoint: ``AWS_ENDPOINT_URL_PRICING`` if set, else AWS's.

    Never the global ``AWS_ENDPOINT_URL``, which botocore would otherwise apply to every service: on a
    cluster it points at the S3-compatible server of the artifact root (MinIO), which has no Price List
    API (the operator asked MinIO for prices at every observation).
    """
    return os.environ.get("AWS_ENDPOINT_URL_PRICING") or DEFAULT_ENDPOINT


def _filters(region: str, instance_type: str) -> list[dict[str, str]]:
    terms = {"regionCode": region, "instanceType": instance_type, "operatingSystem": "Linux", "tenancy": "Shared",
             "preInstalledSw": "NA", "capacitystatus": "Used"}
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in terms.items()]


def _on_demand(product: dict[str, Any]) -> tuple[float, str] | None:
    """(USD per hour, effective date) of a product's on-demand term."""
    for term in (product.get("terms", {}).get("OnDemand") or {}).values():
        for dimension in (term.get("priceDimensions") or {}).values():
            price = (dimension.get("pricePerUnit") or {}).get("USD")
            if dimension.get("unit") == "Hrs" and price is not None:
                return float(price), str(term.get("effectiveDate", ""))[:10]
    return None


def fetch_price_document(regions: Iterable[str], instance_types: Iterable[str], *, client: Any = None,
                         now: float | None = None) -> dict[str, Any]:
    """Ask the Price List API and return a price document in the shape of ``data/prices.yaml``.

    Raises :class:`PriceListUnavailable` when the API cannot be asked or prices nothing asked for.
    """
    import boto3
    import botocore.exceptions

    client = client or boto3.client("pricing", region_name=PRICING_REGION, endpoint_url=pricing_endpoint())
    fetched = time.strftime("%Y-%m-%d", time.gmtime(now if now is not None else time.time()))
    document: dict[str, Any] = {"currency": "USD", "hoursPerMonth": 730, "sources": {}, "instanceTypes": {},
                                "regions": {}}
    paginator = client.get_paginator("get_products")
    for region in regions:
        for instance_type in instance_types:
            try:
                pages = paginator.paginate(ServiceCode="AmazonEC2", Filters=_filters(region, instance_type),
                                           FormatVersion="aws_v1")
                products = [json.loads(item) for page in pages for item in page.get("PriceList", [])]
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
                raise PriceListUnavailable(f"AWS Price List API: {error}") from None
            for product in products:
                attributes = product.get("product", {}).get("attributes", {})
                price = _on_demand(product)
                memory = _MEMORY.match(str(attributes.get("memory", "")))
                if price is None or not memory or not str(attributes.get("vcpu", "")).isdigit():
                    continue
                hourly, effective = price
                key = f"price-list-{region}-{effective or fetched}"
                document["sources"][key] = {
                    "what": f"AWS Price List API, pricing.get_products(ServiceCode=AmazonEC2, regionCode={region}, "
                            f"Linux, Shared, on-demand), fetched {fetched}",
                    "url": PRICING_ENDPOINT, "date": f"effective {effective or 'unknown'}, fetched {fetched}"}
                document["instanceTypes"][instance_type] = {
                    "vcpu": int(attributes["vcpu"]), "memoryGiB": float(memory.group(1).replace(",", "")),
                    "source": key}
                document["regions"].setdefault(region, {})[instance_type] = {"usdPerHour": hourly, "source": key}
                break
    if not document["regions"]:
        raise PriceListUnavailable("AWS Price List API priced none of the regions and instance types asked for")
    return document


def cached_price_table(cache: Path, regions: Iterable[str], instance_types: Iterable[str], *, client: Any = None,
                       ttl: float = CACHE_TTL_SECONDS, now: float | None = None) -> PriceTable:
    """The Price List table from ``cache`` when it is fresh and covers the query, else fetched and cached."""
    now = time.time() if now is None else now
    regions, instance_types = sorted(set(regions)), sorted(set(instance_types))
    try:
        cached = json.loads(cache.read_text())
        if (now - float(cached["fetchedAt"]) < ttl and cached["regions"] == regions
                and cached["instanceTypes"] == instance_types):
            return parse_price_table(cached["document"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    document = fetch_price_document(regions, instance_types, client=client, now=now)
    table = parse_price_table(document)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".tmp")
    partial.write_text(json.dumps({"fetchedAt": now, "regions": regions, "instanceTypes": instance_types,
                                   "document": document}))
    os.replace(partial, cache)
    return table


def price_table(data_dir: Path, regions: Iterable[str], extra_instance_types: Iterable[str] = ()) -> PriceTable:
    """The table to estimate with: the Price List API's (cached) with AWS credentials, else the shipped one.

    Blocking (boto3): call it off the event loop.
    """
    shipped = default_price_table()
    regions = set(regions)
    if not regions or not _has_credentials_cached():
        return shipped
    global _unavailable
    now = time.monotonic()
    if _unavailable is not None and now - _unavailable < UNAVAILABLE_RETRY_SECONDS:
        return shipped
    try:
        table = cached_price_table(data_dir / "cache" / "aws-prices.json", regions,
                                   set(shipped.instance_type_names()) | set(extra_instance_types))
    except PriceListUnavailable as error:
        # Asked again after a while, not at every observation of every deployment (one warning each time).
        _unavailable = now
        log.warning("using the shipped price table for %.0f minutes: %s", UNAVAILABLE_RETRY_SECONDS / 60, error)
        return shipped
    _unavailable = None
    return table
