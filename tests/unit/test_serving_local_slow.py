"""The local serving backend for real: MLServer processes with trained iris models behind the router.

Processes are started once for the module (MLServer needs a few seconds each) and the tests run
in file order against them, ending with ``stop_deployment``.
"""

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import joblib
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from mlops_operator.backends.serving_local import LocalServingManager, Phase, read_window
from mlops_operator.backends.serving_local.processes import read_cmdline

pytestmark = pytest.mark.slow

NS, DEP, MODEL = "ns", "iris", "iris"
X, Y = load_iris(return_X_y=True)


def save_model(root: Path, version: str, estimator, features: int) -> Path:
    model_dir = root / "models" / MODEL / version
    model_dir.mkdir(parents=True)
    joblib.dump(estimator.fit(X[:, :features], Y), model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version}}))
    return model_dir


def v2_body(i: int, request_id: str) -> dict:
    row = X[i % len(X)]
    return {"id": request_id, "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row.tolist()}]}


async def send_many(url: str, prefix: str, n: int, concurrency: int = 8) -> list[tuple[int, dict, dict]]:
    """POST n requests with ids ``<prefix>-<i>``; returns (status, headers, body) in request order."""
    results: list = [None] * n
    queue = iter(range(n))
    async with aiohttp.ClientSession() as session:
        async def worker():
            for i in queue:
                async with session.post(f"{url}/v2/models/{MODEL}/infer", json=v2_body(i, f"{prefix}-{i}")) as resp:
                    results[i] = (resp.status, dict(resp.headers), await resp.json(content_type=None))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def logged(root: Path, prefix: str, expected: int, **kwargs):
    """The inference-log rows of one test (ids starting with prefix), polled until ``expected`` arrive."""
    deadline = time.monotonic() + 10
    while True:
        frame = read_window(root, NS, DEP, include_shadow=True, include_errors=True, **kwargs)
        mine = frame[frame["request_id"].str.startswith(f"{prefix}-")]
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    models = {
        "1": save_model(root, "1", LogisticRegression(max_iter=1000), 4),
        "2": save_model(root, "2", DecisionTreeClassifier(max_depth=3, random_state=0), 4),
        # Trained on 3 features: every 4-feature request makes MLServer answer with an error.
        "3": save_model(root, "3", LogisticRegression(max_iter=1000), 3),
    }
    manager = LocalServingManager(root, ready_timeout=90)

    async def start():
        started = time.monotonic()
        states = await asyncio.gather(
            manager.ensure_predictor(NS, DEP, "stable", models["1"], "1"),
            manager.ensure_predictor(NS, DEP, "canary", models["2"], "2"),
            manager.ensure_predictor(NS, DEP, "broken", models["3"], "3"),
        )
        elapsed = time.monotonic() - started
        router = await manager.ensure_router(NS, DEP, MODEL, [{"name": "stable", "version": "1", "weight": 100}])
        return states, elapsed, router

    states, elapsed, router = asyncio.run(start())
    print(f"\n3 MLServer processes ready in {elapsed:.1f}s (started concurrently)")
    yield {"root": root, "manager": manager, "models": models, "states": {s.predictor: s for s in states},
           "router": router}
    asyncio.run(manager.stop_deployment(NS, DEP))


def test_predictors_and_router_are_ready(served):
    for state in served["states"].values():
        assert state.phase == Phase.READY, state
        assert state.url.startswith("http://127.0.0.1:") and state.restarts == 0
        assert (state.workdir / "pid").read_text().strip() == str(state.pid)
        settings = json.loads((state.workdir / "settings.json").read_text())
        assert settings["host"] == "127.0.0.1" and settings["parallel_workers"] == 0
    router = served["router"]
    assert router.phase == Phase.READY and router.endpoint_url == f"http://127.0.0.1:{router.port}"


def test_split_between_two_versions(served):
    manager, url = served["manager"], served["router"].endpoint_url
    asyncio.run(manager.set_traffic(NS, DEP, [
        {"name": "stable", "version": "1", "weight": 90}, {"name": "canary", "version": "2", "weight": 10}]))
    n = 1000
    results = asyncio.run(send_many(url, "split", n))
    assert all(status == 200 for status, _, _ in results)
    by_predictor = {}
    for _, headers, body in results:
        predictor = headers["x-mlops-predictor"]
        by_predictor[predictor] = by_predictor.get(predictor, 0) + 1
        # The header names the version that really answered.
        assert body["model_version"] == headers["x-mlops-model-version"] == {"stable": "1", "canary": "2"}[predictor]
    # Tolerance: a random 10 % split over 1000 requests has binomial std sqrt(1000*0.1*0.9) = 9.5,
    # so ±3 std = ±28 requests. The router's smooth weighted round-robin is exact per 100 requests
    # (picks are made one at a time on the event loop even with 8 concurrent clients), so ±1 holds.
    assert abs(by_predictor["canary"] - 100) <= 1 and by_predictor["canary"] + by_predictor["stable"] == n

    frame = logged(served["root"], "split", n)
    assert len(frame) == n and frame["request_id"].nunique() == n  # every request is in the log, once
    assert (frame["predictor"] == "canary").sum() == by_predictor["canary"]
    assert frame.attrs["feature_columns"] == ["f0", "f1", "f2", "f3"]
    first = frame[frame["request_id"] == "split-0"].iloc[0]
    assert [first[f"f{j}"] for j in range(4)] == pytest.approx(X[0].tolist())
    assert first["prediction"] == results[0][2]["outputs"][0]["data"][0]


def test_shadow_is_mirrored_and_client_sees_only_stable(served):
    manager, url = served["manager"], served["router"].endpoint_url
    canary_url = served["states"]["canary"].url
    router = asyncio.run(manager.ensure_router(NS, DEP, MODEL, [
        {"name": "stable", "version": "1", "weight": 100},
        {"name": "shadow", "version": "2", "url": canary_url, "shadow": True, "mirrorPercent": 100}]))
    assert [p.name for p in router.config.predictors] == ["stable", "shadow"]  # applied to the live router
    n = 50
    results = asyncio.run(send_many(url, "shadow", n))
    assert {(s, h["x-mlops-predictor"], b["model_version"]) for s, h, b in results} == {(200, "stable", "1")}
    frame = logged(served["root"], "shadow", 2 * n)
    shadow = frame[frame["shadow"]]
    assert len(shadow) == n and set(shadow["predictor"]) == {"shadow"} and set(shadow["model_version"]) == {"2"}
    assert set(shadow["request_id"]) == set(frame[~frame["shadow"]]["request_id"]) == {f"shadow-{i}" for i in range(n)}
    # And read_window leaves shadow traffic out unless asked.
    plain = read_window(served["root"], NS, DEP)
    assert not plain["shadow"].any()


def test_stats_report_errors_of_a_failing_candidate(served):
    manager, url = served["manager"], served["router"].endpoint_url
    asyncio.run(manager.set_traffic(NS, DEP, [
        {"name": "stable", "version": "1", "weight": 50}, {"name": "broken", "version": "3", "weight": 50}]))
    since = time.time()
    results = asyncio.run(send_many(url, "broken", 100))
    failed = [h["x-mlops-predictor"] for s, h, _ in results if s != 200]
    assert len(failed) == 50 and set(failed) == {"broken"}
    stats = asyncio.run(manager.router_stats(NS, DEP, since=since))
    assert stats.predictors["broken"].requests == 50 and stats.predictors["broken"].errors == 50
    assert stats.predictors["broken"].error_rate == 1.0
    assert stats.predictors["stable"].errors == 0 and stats.predictors["stable"].requests == 50
    assert 0 < stats.predictors["stable"].p50_ms <= stats.predictors["stable"].p99_ms
    frame = logged(served["root"], "broken", 100)
    errors = frame[frame["status"] >= 500]
    assert len(errors) == 50 and set(errors["predictor"]) == {"broken"}
    with open(next(served["root"].glob("inference/ns/iris/*/*/*/*.jsonl"))) as fh:
        records = [json.loads(line) for line in fh]
    failed_record = next(r for r in records if r["id"].startswith("broken-") and r["status"] >= 500)
    assert failed_record["error"] and failed_record["outputs"] is None and failed_record["inputs"]


def test_killed_mlserver_is_restarted_on_the_same_url(served):
    manager, url = served["manager"], served["router"].endpoint_url
    asyncio.run(manager.set_traffic(NS, DEP, [{"name": "stable", "version": "1", "weight": 100}]))
    before = served["states"]["stable"]
    os.kill(before.pid, signal.SIGKILL)
    started = time.monotonic()
    after = asyncio.run(manager.ensure_predictor(NS, DEP, "stable", served["models"]["1"], "1"))
    print(f"\nMLServer restart after SIGKILL: ready in {time.monotonic() - started:.1f}s")
    assert after.phase == Phase.READY and after.pid != before.pid
    assert after.restarts == 1 and after.url == before.url
    assert read_cmdline(before.pid) is None
    results = asyncio.run(send_many(url, "after-kill", 20))
    assert all(status == 200 for status, _, _ in results)
    # Same dir, same version, live process: ensure_predictor reuses it.
    again = asyncio.run(manager.ensure_predictor(NS, DEP, "stable", served["models"]["1"], "1", wait=0))
    assert again.pid == after.pid and again.restarts == 1


def test_router_restart_and_adoption_keep_the_split(served):
    manager = served["manager"]
    router = asyncio.run(manager.ensure_router(NS, DEP))
    os.kill(router.pid, signal.SIGKILL)
    revived = asyncio.run(manager.ensure_router(NS, DEP))
    assert revived.phase == Phase.READY and revived.pid != router.pid
    assert revived.endpoint_url == router.endpoint_url and revived.config == router.config
    assert asyncio.run(send_many(revived.endpoint_url, "revived", 5))[0][0] == 200

    fresh = LocalServingManager(served["root"])  # as after an operator restart
    adopted = asyncio.run(fresh.adopt_all(existing={(NS, DEP)}))
    assert {(a.kind, a.name, a.phase, a.orphan) for a in adopted} == {
        ("router", "router", Phase.READY, False), ("mlserver", "stable", Phase.READY, False),
        ("mlserver", "canary", Phase.READY, False), ("mlserver", "broken", Phase.READY, False)}
    orphans = asyncio.run(fresh.adopt_all(existing=set()))
    assert all(a.orphan for a in orphans) and len(orphans) == 4


def test_stop_deployment_leaves_no_process(served):
    manager = served["manager"]
    states = asyncio.run(manager.predictor_states(NS, DEP))
    assert {(s.predictor, s.version, s.phase) for s in states} == {
        ("stable", "1", Phase.READY), ("canary", "2", Phase.READY), ("broken", "3", Phase.READY)}
    pids = [s.pid for s in states]
    assert sorted(p.desired_spec["version"] for p in manager.predictors(NS, DEP)) == ["1", "2", "3"]
    router = asyncio.run(manager.ensure_router(NS, DEP))
    pids.append(router.pid)
    assert all(pids) and len(set(pids)) == 4
    asyncio.run(manager.stop_deployment(NS, DEP))
    assert all(read_cmdline(pid) is None for pid in pids)
    root = str(served["root"])
    leftovers = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
                 and any(root in arg for arg in (read_cmdline(int(p.name)) or []))]
    assert leftovers == []
    assert not (served["root"] / "serving" / NS / DEP).exists()
    assert any((served["root"] / "inference" / NS / DEP).rglob("*.jsonl"))  # the log stays
