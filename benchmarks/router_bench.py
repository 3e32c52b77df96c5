"""Latency and throughput the local router adds over calling MLServer directly.

Starts one MLServer (iris LogisticRegression) and a router in front of it (100 % to that server,
inference log on), all on 127.0.0.1, then in one run measures:

* sequential latency (one request at a time, keep-alive client): p50 and p99, direct vs router,
  in interleaved blocks so background load hits both alike;
* throughput with N concurrent clients: requests per second, direct vs router.

Prints absolute figures and ratios against the direct baseline. Bounded request counts; stops
everything it started. Usage: ``python benchmarks/router_bench.py [--requests 2000] [--concurrency 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from mlops_operator.backends.serving_local import LocalServingManager  # noqa: E402

NS, DEP, MODEL = "bench", "iris", "iris"


def write_model(root: Path) -> Path:
    X, y = load_iris(return_X_y=True)
    model_dir = root / "models" / MODEL / "1"
    model_dir.mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=1000).fit(X, y), model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"}}))
    return model_dir


BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                               "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
HEADERS = {"Content-Type": "application/json"}


async def one(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.post(url, data=BODY, headers=HEADERS) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
    return time.perf_counter() - started


async def sequential(urls: dict[str, str], total: int, block: int = 50) -> dict[str, np.ndarray]:
    samples: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        for name, url in urls.items():  # warm up connections and code paths
            for _ in range(50):
                await one(session, url)
        for _ in range(total // block):
            for name, url in urls.items():
                for _ in range(block):
                    samples[name].append(await one(session, url))
    return {name: np.asarray(values) * 1000.0 for name, values in samples.items()}


async def throughput(url: str, total: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        remaining = iter(range(total))

        async def worker():
            for _ in remaining:
                await one(session, url)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def run(requests: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        root = Path(tmp)
        model_dir = write_model(root)
        manager = LocalServingManager(root, ready_timeout=120)
        try:
            started = time.monotonic()
            server = await manager.ensure_predictor(NS, DEP, "stable", model_dir, "1")
            mlserver_start = time.monotonic() - started
            started = time.monotonic()
            router = await manager.ensure_router(NS, DEP, MODEL, [{"name": "stable", "version": "1", "weight": 100}])
            router_start = time.monotonic() - started
            if not (server.ready and router.ready):
                raise SystemExit(f"not ready: {server.phase} / {router.phase}: {server.last_error or router.last_error}")
            urls = {"direct": f"{server.url}/v2/models/{MODEL}/infer",
                    "router": f"{router.endpoint_url}/v2/models/{MODEL}/infer"}

            latency = await sequential(urls, requests)
            rps = {}
            for name in ("direct", "router", "direct", "router"):  # twice each, keep the better run
                rps[name] = max(rps.get(name, 0.0), await throughput(urls[name], requests, concurrency))
        finally:
            await manager.stop_deployment(NS, DEP)

    p = {name: (np.percentile(v, 50), np.percentile(v, 99)) for name, v in latency.items()}
    print(f"start-up: MLServer ready in {mlserver_start:.1f}s, router ready in {router_start:.1f}s")
    print(f"sequential latency over {requests} requests each (ms):")
    for name in ("direct", "router"):
        print(f"  {name:7s} p50 {p[name][0]:7.3f}  p99 {p[name][1]:7.3f}")
    print(f"  added   p50 {p['router'][0] - p['direct'][0]:+7.3f}  p99 {p['router'][1] - p['direct'][1]:+7.3f}")
    print(f"  ratio   p50 {p['router'][0] / p['direct'][0]:7.2f}x p99 {p['router'][1] / p['direct'][1]:7.2f}x")
    print(f"throughput, {concurrency} concurrent clients, {requests} requests (req/s):")
    print(f"  direct {rps['direct']:8.0f}  router {rps['router']:8.0f}  ratio {rps['router'] / rps['direct']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(min(args.requests, 20000), min(args.concurrency, 64)))


if __name__ == "__main__":
    main()
