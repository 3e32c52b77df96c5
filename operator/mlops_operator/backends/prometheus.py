"""Rollout analysis through Prometheus' HTTP query API (``GET /api/v1/query``)."""

from __future__ import annotations

import asyncio
import math

import aiohttp

from mlops_operator.reconcile.modeldeployment import RequestStats


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered with an error."""


async def instant_query(session: aiohttp.ClientSession, url: str, query: str) -> float | None:
    """The value of a query that yields one scalar or a one-element vector (None: no data or NaN)."""
    try:
        async with session.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query}) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
        raise PrometheusUnavailable(f"Prometheus at {url}: {type(error).__name__}: {error}") from None
    if body.get("status") != "success":
        raise PrometheusUnavailable(f"Prometheus at {url} refused {query!r}: {body.get('error', body)}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar":
        raw = result[1] if result else None
    elif result:
        raw = result[0]["value"][1]
    else:
        return None
    value = float(raw) if raw is not None else math.nan
    return None if math.isnan(value) or math.isinf(value) else value


async def candidate_stats(url: str, queries: dict[str, str], timeout: float = 10.0) -> RequestStats:
    """Requests, errors and p99 latency of the candidate from the queries of
    the serving backend's ``prometheus_queries`` (``backends.serving.ServingBackend``)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        requests, errors, p99 = await asyncio.gather(
            instant_query(session, url, queries["requests"]),
            instant_query(session, url, queries["errors"]),
            instant_query(session, url, queries["p99"]),
        )
    # increase() extrapolates to fractions; requests are whole.
    total = int(round(requests or 0))
    failed = min(int(round(errors or 0)), total)
    scale = 1000.0 if queries.get("p99_unit", "seconds") == "seconds" else 1.0
    return RequestStats(requests=total, errors=failed, error_rate=(failed / total) if total else None,
                        p99_ms=p99 * scale if p99 is not None else None, source="prometheus")
