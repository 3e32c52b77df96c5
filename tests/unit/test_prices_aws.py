"""Prices from the AWS Price List API (backends/prices_aws.py), against a local HTTP server that
implements the API's published contract.

No real Price List service can be reached here, and moto (5.2.5) has no ``pricing`` backend. So the
server below speaks the contract botocore itself ships (the ``pricing`` service model, protocol
``json`` 1.1, target ``AWSPriceListService.GetProducts``): it checks each request against that
model (required members, filter types) and the SigV4 signature's service name, pages its answers
with ``NextToken``, and returns ``PriceList`` entries as JSON strings in the documented product
format. The figures it serves are test data, not prices.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import botocore.session
import pytest

from mlops_operator.backends import prices_aws
from mlops_operator.reconcile.cost import estimate_monthly_cost
from mlops_operator.api.modeldeployment import ModelDeploymentSpec

MODEL = botocore.session.get_session().get_service_model("pricing")
OPERATION = MODEL.operation_model("GetProducts")
FILTER_TYPES = set(MODEL.shape_for("FilterType").enum)

# (region, instance type) -> (USD per hour, vcpu, memory)
CATALOGUE = {("us-east-1", "m5.large"): ("0.1000000000", "2", "8 GiB"),
             ("eu-west-1", "m5.large"): ("0.1100000000", "2", "8 GiB"),
             ("eu-west-1", "r5.large"): ("0.1400000000", "2", "16 GiB")}


def product(region: str, instance: str) -> str:
    price, vcpu, memory = CATALOGUE[(region, instance)]
    sku = f"SKU{abs(hash((region, instance))) % 10**8:08d}"
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": sku,
                    "attributes": {"instanceType": instance, "regionCode": region, "vcpu": vcpu, "memory": memory,
                                   "operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA",
                                   "capacitystatus": "Used", "servicecode": "AmazonEC2"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {
            "sku": sku, "offerTermCode": "JRTCKXETXF", "effectiveDate": "2026-11-01T00:00:00Z",
            "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs", "pricePerUnit": {"USD": price}, "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                "description": f"${price} per On Demand Linux {instance} Instance Hour"}}}}},
    })


class PriceListHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *_args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        problems = []
        if self.headers.get("X-Amz-Target") != f"{MODEL.metadata['targetPrefix']}.GetProducts":
            problems.append(f"target {self.headers.get('X-Amz-Target')}")
        if "/pricing/aws4_request" not in (self.headers.get("Authorization") or ""):
            problems.append("not signed for the pricing service")
        for member in OPERATION.input_shape.required_members:
            if member not in body:
                problems.append(f"missing {member}")
        unknown = set(body) - set(OPERATION.input_shape.members)
        if unknown:
            problems.append(f"unknown members {sorted(unknown)}")
        for item in body.get("Filters", []):
            if item.get("Type") not in FILTER_TYPES or not item.get("Field") or "Value" not in item:
                problems.append(f"bad filter {item}")
        if problems:
            self._answer(400, {"__type": "InvalidParameterException", "Message": "; ".join(problems)})
            return
        PriceListHandler.requests.append(body)
        terms = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
        found = [] if (terms.get("regionCode"), terms.get("instanceType")) not in CATALOGUE else [
            product(terms["regionCode"], terms["instanceType"])]
        # Page: the first answer is empty with a NextToken, as the API may do.
        if "NextToken" not in body:
            self._answer(200, {"FormatVersion": "aws_v1", "PriceList": [], "NextToken": "page-2"})
        else:
            self._answer(200, {"FormatVersion": "aws_v1", "PriceList": found})

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def price_list_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), PriceListHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    PriceListHandler.requests = []
    client = boto3.client("pricing", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{server.server_port}",
                          aws_access_key_id="AKIDTEST", aws_secret_access_key="secret")
    yield client
    server.shutdown()
    server.server_close()


def test_prices_come_from_the_api_with_their_source_and_are_cached(price_list_api, tmp_path):
    cache = tmp_path / "aws-prices.json"
    table = prices_aws.cached_price_table(cache, ["us-east-1", "eu-west-1"], ["m5.large", "r5.large"],
                                          client=price_list_api, now=1_800_000_000)
    assert table.regions == {"us-east-1": {"m5.large": 0.1}, "eu-west-1": {"m5.large": 0.11, "r5.large": 0.14}}
    assert table.instance_types["r5.large"].memory_gib == 16 and table.instance_types["r5.large"].vcpu == 2
    source = table.price_source("eu-west-1", "r5.large")
    assert "pricing.get_products" in source.what and "regionCode=eu-west-1" in source.what
    assert source.url == prices_aws.PRICING_ENDPOINT and "effective 2026-11-01" in source.date
    # One query per region and instance type, each followed to its second page.
    assert len(PriceListHandler.requests) == 8
    assert all(r["ServiceCode"] == "AmazonEC2" and r["FormatVersion"] == "aws_v1" for r in PriceListHandler.requests)

    estimate = estimate_monthly_cost(ModelDeploymentSpec.model_validate(
        {"model": {"fromTraining": "iris"}, "region": "eu-west-1", "resources": {"requests": {"memory": "12Gi"}}}),
        table)
    assert estimate.cost["instanceType"] == "r5.large" and estimate.cost["amount"] == pytest.approx(0.14 * 730)
    assert "AWS Price List API" in estimate.cost["basis"]

    # Within the time-to-live the cache answers; the API is not asked again.
    again = prices_aws.cached_price_table(cache, ["eu-west-1", "us-east-1"], ["r5.large", "m5.large"],
                                          client=price_list_api, now=1_800_000_000 + 3600)
    assert again.regions == table.regions and len(PriceListHandler.requests) == 8
    # After it, the API is asked again.
    prices_aws.cached_price_table(cache, ["us-east-1", "eu-west-1"], ["m5.large", "r5.large"],
                                  client=price_list_api, now=1_800_000_000 + 2 * prices_aws.CACHE_TTL_SECONDS)
    assert len(PriceListHandler.requests) == 16


def test_an_api_that_prices_nothing_or_refuses_is_unavailable(price_list_api, tmp_path):
    with pytest.raises(prices_aws.PriceListUnavailable, match="priced none"):
        prices_aws.cached_price_table(tmp_path / "c.json", ["ap-south-1"], ["m5.large"], client=price_list_api)
    unsigned = boto3.client("pricing", region_name="us-east-1", endpoint_url=price_list_api.meta.endpoint_url,
                            aws_access_key_id="AKIDTEST", aws_secret_access_key="secret")
    unsigned.meta.events.register("before-sign.*.*", lambda request, **_: request.headers.__setitem__(
        "X-Amz-Target", "AWSPriceListService.Other"))
    with pytest.raises(prices_aws.PriceListUnavailable, match="target"):
        prices_aws.fetch_price_document(["us-east-1"], ["m5.large"], client=unsigned)


def test_without_credentials_the_shipped_table_is_used(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert not prices_aws.has_credentials()
    table = prices_aws.price_table(tmp_path, ["us-east-1"])
    assert "karpenter-prices" in table.sources and not (tmp_path / "cache").exists()


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials in the environment, the module's caches reset."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(prices_aws, "_credentials", None)
    monkeypatch.setattr(prices_aws, "_unavailable", None)
    return monkeypatch


def test_the_global_endpoint_of_an_s3_server_is_not_asked_for_prices(price_list_api, aws_env, tmp_path):
    """AWS_ENDPOINT_URL points at the artifact root's S3-compatible server on a cluster (MinIO): the
    Price List API is asked at AWS_ENDPOINT_URL_PRICING, or AWS's own endpoint, never there."""
    s3_requests = []

    class S3Server(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

        def do_POST(self) -> None:
            s3_requests.append(self.path)
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

    s3 = ThreadingHTTPServer(("127.0.0.1", 0), S3Server)
    threading.Thread(target=s3.serve_forever, daemon=True).start()
    try:
        aws_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3.server_port}")
        aws_env.delenv("AWS_ENDPOINT_URL_PRICING", raising=False)
        # The local Price List server stands in for AWS's endpoint (none is reachable here).
        aws_env.setattr(prices_aws, "DEFAULT_ENDPOINT", price_list_api.meta.endpoint_url)
        table = prices_aws.price_table(tmp_path / "aws", ["us-east-1"])
        assert any(key.startswith("price-list-us-east-1") for key in table.sources), table.sources
        assert not s3_requests and PriceListHandler.requests
        # AWS_ENDPOINT_URL_PRICING, when set, is where prices are asked.
        aws_env.setenv("AWS_ENDPOINT_URL_PRICING", f"http://127.0.0.1:{s3.server_port}")
        aws_env.setattr(prices_aws, "_unavailable", None)
        assert "karpenter-prices" in prices_aws.price_table(tmp_path / "other", ["us-east-1"]).sources
        assert s3_requests
    finally:
        s3.shutdown()
        s3.server_close()


def test_an_unavailable_price_list_is_asked_again_only_after_a_while(price_list_api, aws_env, tmp_path, caplog):
    """A Price List API that prices nothing: the shipped table, and no new question (nor warning) at every
    observation until UNAVAILABLE_RETRY_SECONDS have passed."""
    aws_env.setenv("AWS_ENDPOINT_URL_PRICING", price_list_api.meta.endpoint_url)
    for _ in range(3):
        table = prices_aws.price_table(tmp_path, ["ap-south-1"])  # not in the catalogue
        assert "karpenter-prices" in table.sources
    asked = len(PriceListHandler.requests)
    assert asked > 0 and len([r for r in caplog.records if "shipped price table" in r.getMessage()]) == 1
    aws_env.setattr(prices_aws, "_unavailable", prices_aws._unavailable - prices_aws.UNAVAILABLE_RETRY_SECONDS)
    prices_aws.price_table(tmp_path, ["ap-south-1"])
    assert len(PriceListHandler.requests) > asked
