"""The rollout analysis (backends/prometheus.py) against a real Prometheus that scrapes a real
router: PromQL per predictor from reconcile.modeldeployment.router_queries gives request
counts, error rate and p99 as the router counted them.

The router runs in-process in front of two V2 peers on loopback (a healthy stable, a failing
canary); Prometheus scrapes its /metrics every second with the target labels the operator's
scrape config gives (namespace, deployment).
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from mlops_operator.backends import prometheus
from mlops_operator.backends.serving_local.router import Router
from mlops_operator.backends.serving_local.traffic import RouterConfig
from mlops_operator.reconcile.modeldeployment import router_queries
from prometheus_support import PrometheusServer, prometheus_binary

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
PER_PREDICTOR = 40


def v2_peer(status: int) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        await request.json()
        if status != 200:
            return web.json_response({"error": "model failed"}, status=status)
        return web.json_response({"model_name": "iris", "outputs": [
            {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [0]}]})

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    return app


@pytest_asyncio.fixture
async def scraped_router(tmp_path):
    peers = {name: TestServer(v2_peer(status), host="127.0.0.1") for name, status in (("stable", 200),
                                                                                      ("canary", 500))}
    for server in peers.values():
        await server.start_server()
    router = Router(tmp_path / "router", None, upstream_timeout=5.0)
    front = TestServer(router.app(), host="127.0.0.1")
    await front.start_server()
    router.set_config(RouterConfig.model_validate({"model": "iris", "predictors": [
        {"name": name, "url": str(server.make_url("")).rstrip("/"), "version": str(i + 1), "weight": 50,
         "modelName": "iris"} for i, (name, server) in enumerate(peers.items())]}))
    binary = await asyncio.to_thread(prometheus_binary)
    server = PrometheusServer(binary, tmp_path / "prometheus",
                              [(f"127.0.0.1:{front.port}", {"namespace": "ml", "deployment": "iris"})])
    await asyncio.to_thread(server.start)
    try:
        yield str(front.make_url("")).rstrip("/"), server
    finally:
        await asyncio.to_thread(server.stop)
        await front.close()
        for peer in peers.values():
            await peer.close()


async def send(url: str, count: int) -> None:
    async with ClientSession() as session:
        for _ in range(count):
            async with session.post(f"{url}/v2/models/iris/infer", json=ROW) as response:
                await response.read()


async def wait_for(probe, timeout: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {value!r}")
        await asyncio.sleep(0.5)


async def test_error_rate_p99_and_request_count_per_predictor_from_prometheus(scraped_router):
    url, server = scraped_router
    # Counters appear with their first request; increase() needs a scraped value before the traffic.
    await send(url, 2)
    series = 'mlops_router_requests_total{namespace="ml",deployment="iris"}'

    async def both_series_scraped():
        async with ClientSession() as session:
            return await prometheus.instant_query(session, server.url, f"count({series})") == 2

    await wait_for(both_series_scraped, 90, "the router's first scrape")
    await asyncio.sleep(2)  # two more scrapes of the baseline
    await send(url, 2 * PER_PREDICTOR)

    async def stats(predictor):
        return await prometheus.candidate_stats(server.url, router_queries("ml", "iris", predictor, 120))

    async def settled():
        stable, canary = await stats("stable"), await stats("canary")
        return (stable, canary) if stable.requests >= PER_PREDICTOR and canary.requests >= PER_PREDICTOR else None

    stable, canary = await wait_for(settled, 60, "the traffic in Prometheus")
    # increase() extrapolates past the first scrape of a young series (measured here: 44 and 45 for 40),
    # never below the truth: a stated tolerance of +25%. The error rates are exact.
    for stats in (stable, canary):
        assert PER_PREDICTOR <= stats.requests <= PER_PREDICTOR * 1.25, (stable, canary)
    assert stable.errors == 0 and stable.error_rate == 0.0
    assert canary.errors == canary.requests and canary.error_rate == 1.0
    assert stable.p99_ms is not None and 0 < stable.p99_ms < 5000 and stable.source == "prometheus"
