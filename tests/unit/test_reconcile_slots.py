"""handlers/common.reconcile_object: a kind's reconciliations take turns (settings.max_concurrent_reconciles
at a time, first come first served), so a burst of objects neither holds all of them in memory at once nor
finishes them all at the end. The status writes and events (kube I/O) are recorded, not sent."""

from __future__ import annotations

import asyncio
from typing import Any

from mlops_operator.handlers import common


def test_a_kinds_reconciliations_take_turns_first_come_first_served(monkeypatch):
    written: list[str] = []
    monkeypatch.setattr(common.kube, "patch_status", _record(written))
    monkeypatch.setattr(common.kube, "post_event", lambda *_args, **_kw: None)
    limit = common.get_settings().max_concurrent_reconciles
    objects = limit * 3
    started: list[str] = []
    running = peak = 0
    gate = asyncio.Event()

    async def reconciler(obj: dict[str, Any]) -> dict[str, Any]:
        nonlocal running, peak
        started.append(obj["metadata"]["name"])
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return {"phase": "Ready"}

    async def burst() -> None:
        tasks = [asyncio.create_task(common.reconcile_object(
            "Thing", "things", "ns", f"t{i}", reconciler, body=_body(f"t{i}"), conditions=("Ready",),
            summary_condition="Ready", from_change=True, requeue=lambda *_: None)) for i in range(objects)]
        # Another kind is not held up by this one's turns.
        other = asyncio.create_task(common.reconcile_object(
            "Other", "others", "ns", "o", _ready, body=_body("o"), conditions=("Ready",), summary_condition="Ready",
            from_change=True, requeue=lambda *_: None))
        await asyncio.wait_for(other, timeout=10)
        for _ in range(20):
            await asyncio.sleep(0)
        assert started == [f"t{i}" for i in range(limit)] and peak == limit
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)

    try:
        asyncio.run(burst())
    finally:
        for i in range(objects):
            common.forget("things", "ns", f"t{i}")
        common.forget("others", "ns", "o")
    assert started == [f"t{i}" for i in range(objects)] and peak == limit
    assert sorted(written) == sorted(["o", *(f"t{i}" for i in range(objects))])


def _record(written: list[str]):
    async def patch_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        written.append(name)
    return patch_status


async def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return {"phase": "Ready"}


def _body(name: str) -> dict[str, Any]:
    return {"apiVersion": "mlops.dev/v1alpha1", "kind": "Thing", "spec": {}, "status": {},
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-11-30T00:00:00Z"}}
