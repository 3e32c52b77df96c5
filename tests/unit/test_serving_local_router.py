"""The router's HTTP behaviour, in-process against fake V2 backends (fast; real MLServer is in the slow tests)."""

import asyncio
import json

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mlops_operator.backends.serving_local.inference_log import read_window
from mlops_operator.backends.serving_local.router import Router, parse_since
from mlops_operator.backends.serving_local.traffic import RouterConfig

pytestmark = pytest.mark.asyncio


class FakeBackend:
    """A V2 model server that answers with its own tag, or fails, or blocks until released."""

    def __init__(self, tag, *, status=200, model="iris"):
        self.tag = tag
        self.status = status
        self.model = model
        self.seen = []  # (path model name, request body)
        self.release = None  # an asyncio.Event to hold requests
        self.ready = True

    def app(self):
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        app.router.add_get("/v2/models/{model}", self.metadata)
        app.router.add_get("/v2/health/ready", self.health)
        return app

    async def infer(self, request):
        body = await request.json()
        self.seen.append((request.match_info["model"], body))
        if self.release is not None:
            await self.release.wait()
        if self.status != 200:
            return web.json_response({"error": f"{self.tag} failed"}, status=self.status)
        rows = body["inputs"][0]["shape"][0]
        return web.json_response({"model_name": self.model, "id": body.get("id"), "outputs": [
            {"name": "predict", "shape": [rows, 1], "datatype": "BYTES", "data": [self.tag] * rows}]})

    async def metadata(self, request):
        return web.json_response({"name": request.match_info["model"], "platform": self.tag})

    async def health(self, _request):
        return web.json_response({}, status=200 if self.ready else 503)


ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


@pytest_asyncio.fixture
async def backends():
    fakes = {name: FakeBackend(name, model=f"{name}-model") for name in ("stable", "canary", "shadow")}
    servers = {}
    for name, fake in fakes.items():
        servers[name] = TestServer(fake.app(), host="127.0.0.1")
        await servers[name].start_server()
    yield fakes, {name: str(s.make_url("")).rstrip("/") for name, s in servers.items()}
    for server in servers.values():
        await server.close()


def make_config(urls, stable=90, canary=10, shadow_percent=None):
    predictors = [{"name": "stable", "url": urls["stable"], "version": "1", "weight": stable, "modelName": "stable-model"}]
    if canary:
        predictors.append({"name": "canary", "url": urls["canary"], "version": "2", "weight": canary,
                           "modelName": "canary-model"})
    if shadow_percent is not None:
        predictors.append({"name": "shadow", "url": urls["shadow"], "version": "3", "shadow": True,
                           "mirrorPercent": shadow_percent, "modelName": "shadow-model"})
    return RouterConfig.model_validate({"model": "iris", "predictors": predictors})


@pytest_asyncio.fixture
async def router_client(tmp_path, backends):
    router = Router(tmp_path / "router", tmp_path / "inference" / "ns" / "iris", upstream_timeout=5.0)
    client = TestClient(TestServer(router.app(), host="127.0.0.1"))
    await client.start_server()
    yield router, client
    await client.close()


async def infer(client, body=ROW, model="iris"):
    resp = await client.post(f"/v2/models/{model}/infer", json=body)
    return resp, await resp.json()


async def test_weighted_split_rewrites_model_name_and_tags_responses(router_client, backends):
    router, client = router_client
    fakes, urls = backends
    router.set_config(make_config(urls, 90, 10))
    counts = {"stable": 0, "canary": 0}
    for _ in range(200):
        resp, body = await infer(client)
        assert resp.status == 200
        predictor = resp.headers["x-mlops-predictor"]
        counts[predictor] += 1
        assert body["outputs"][0]["data"] == [predictor]  # the answer came from the named predictor
        assert resp.headers["x-mlops-model-version"] == {"stable": "1", "canary": "2"}[predictor]
    assert counts == {"stable": 180, "canary": 20}  # smooth weighted round-robin is exact per 100
    assert {m for m, _ in fakes["stable"].seen} == {"stable-model"}
    assert {m for m, _ in fakes["canary"].seen} == {"canary-model"}


async def test_request_id_is_kept_or_stamped(router_client, backends):
    router, client = router_client
    fakes, urls = backends
    router.set_config(make_config(urls, 100, 0))
    resp, body = await infer(client, {**ROW, "id": "client-id"})
    assert resp.headers["x-request-id"] == "client-id" == body["id"]
    resp, body = await infer(client)
    stamped = resp.headers["x-request-id"]
    assert len(stamped) == 36 and body["id"] == stamped and fakes["stable"].seen[-1][1]["id"] == stamped


async def test_shadow_is_mirrored_but_never_answers_the_client(router_client, backends, tmp_path):
    router, client = router_client
    fakes, urls = backends
    router.set_config(make_config(urls, 100, 0, shadow_percent=100))
    fakes["shadow"].release = asyncio.Event()  # the shadow hangs until we let it go
    for i in range(5):
        # If the router waited for the shadow this would hang: fail fast instead.
        resp, body = await asyncio.wait_for(infer(client, {**ROW, "id": f"r{i}"}), timeout=10)
        assert resp.status == 200 and resp.headers["x-mlops-predictor"] == "stable"
        assert body["outputs"][0]["data"] == ["stable"]
    # All five client answers came back while every mirrored call is still held by the shadow.
    assert len(router._shadow_tasks) == 5
    fakes["shadow"].release.set()
    for _ in range(200):
        if not router._shadow_tasks:
            break
        await asyncio.sleep(0.01)
    assert [b["id"] for _, b in fakes["shadow"].seen] == [f"r{i}" for i in range(5)]
    assert {m for m, _ in fakes["shadow"].seen} == {"shadow-model"}
    await router.log_writer.flush()
    frame = read_window(tmp_path, "ns", "iris", include_shadow=True)
    assert sorted(zip(frame["request_id"], frame["predictor"], frame["shadow"])) == sorted(
        [(f"r{i}", "stable", False) for i in range(5)] + [(f"r{i}", "shadow", True) for i in range(5)])
    assert set(frame[frame.shadow]["prediction"]) == {"shadow"}


async def test_mirror_percent_and_shadow_overload_drop(router_client, backends):
    router, client = router_client
    fakes, urls = backends
    router.set_config(make_config(urls, 100, 0, shadow_percent=50))
    for _ in range(20):
        await infer(client)
    for _ in range(200):
        if not router._shadow_tasks:
            break
        await asyncio.sleep(0.01)
    assert len(fakes["shadow"].seen) == 10
    router.max_shadow_in_flight = 0
    await infer(client)
    await infer(client)
    assert router.shadow_dropped.labels("shadow")._value.get() == 1


async def test_stats_and_metrics_count_a_failing_canary(router_client, backends):
    router, client = router_client
    fakes, urls = backends
    fakes["canary"].status = 500
    router.set_config(make_config(urls, 50, 50))
    statuses = [(await infer(client))[0].status for _ in range(40)]
    assert statuses.count(500) == 20 and statuses.count(200) == 20
    stats = await (await client.get("/_mlops/stats")).json()
    assert stats["predictors"]["canary"]["errors"] == 20
    assert stats["predictors"]["canary"]["errorRate"] == 1.0
    assert stats["predictors"]["stable"] == {**stats["predictors"]["stable"], "requests": 20, "errors": 0, "errorRate": 0.0}
    assert stats["predictors"]["stable"]["p50Ms"] > 0 and stats["complete"] is True
    later = await (await client.get("/_mlops/stats", params={"since": str(stats["until"] + 1)})).json()
    assert later["predictors"]["canary"]["requests"] == 0 and later["predictors"]["canary"]["p99Ms"] is None
    text = await (await client.get("/metrics")).text()
    assert 'mlops_router_requests_total{code="500",predictor="canary"} 20.0' in text
    assert 'mlops_router_request_errors_total{predictor="canary"} 20.0' in text
    assert 'mlops_router_request_duration_seconds_count{predictor="stable"} 20.0' in text


async def test_unreachable_backend_is_a_502_and_an_error(router_client, backends):
    router, client = router_client
    _, urls = backends
    config = make_config(urls, 100, 0).model_dump(by_alias=True)
    config["predictors"][0]["url"] = "http://127.0.0.1:9"  # discard port: nothing listens
    router.set_config(RouterConfig.model_validate(config))
    resp, body = await infer(client)
    assert resp.status == 502 and "unreachable" in body["error"]
    assert router.windows["stable"].stats(0).errors == 1


async def test_wrong_model_unconfigured_and_pinned_version(router_client, backends):
    router, client = router_client
    _, urls = backends
    resp, body = await infer(client)
    assert resp.status == 503
    router.set_config(make_config(urls, 90, 10))
    resp, body = await infer(client, model="other")
    assert resp.status == 404
    for _ in range(5):
        resp = await client.post("/v2/models/iris/versions/2/infer", json=ROW)
        assert resp.headers["x-mlops-predictor"] == "canary"
    resp = await client.post("/v2/models/iris/versions/9/infer", json=ROW)
    assert resp.status == 404


async def test_metadata_and_readiness_come_from_backends(router_client, backends):
    router, client = router_client
    fakes, urls = backends
    router.set_config(make_config(urls, 90, 10))
    resp = await client.get("/v2/models/iris")
    meta = await resp.json()
    assert meta == {"name": "iris", "platform": "stable", "versions": ["1", "2"]}
    assert resp.headers["x-mlops-predictor"] == "stable"
    resp = await client.get("/v2/models/iris/versions/2")
    assert resp.status == 200 and resp.headers["x-mlops-predictor"] == "canary"
    resp = await client.get("/v2/models/iris/versions/9")
    assert resp.status == 404 and (await resp.json())["error"] == "Model iris version 9 not found"
    assert (await client.get("/v2/health/live")).status == 200
    assert (await client.get("/v2/health/ready")).status == 200
    fakes["canary"].ready = False
    resp = await client.get("/v2/health/ready")
    assert resp.status == 503 and (await resp.json())["notReady"] == ["canary"]


async def test_config_put_validates_swaps_and_persists(router_client, backends, tmp_path):
    router, client = router_client
    _, urls = backends
    good = make_config(urls, 90, 10).to_json_dict()
    resp = await client.put("/_mlops/config", json=good)
    assert resp.status == 200 and (await resp.json())["generation"] == 1
    bad = {**good, "predictors": [{**good["predictors"][0], "weight": 50}]}
    resp = await client.put("/_mlops/config", json=bad)
    assert resp.status == 400 and "sum to 100" in (await resp.json())["detail"]
    assert (await (await client.get("/_mlops/config")).json())["config"] == good  # the bad one changed nothing
    restarted = Router(tmp_path / "router", None)
    assert restarted.routing.config == RouterConfig.model_validate(good)
    assert restarted.routing.generation == 1


async def test_parse_since_accepts_unix_seconds_and_rfc3339():
    assert parse_since("1700000000.5", 0) == 1700000000.5
    assert parse_since("2023-11-14T22:13:20Z", 0) == 1700000000.0
    assert parse_since(None, 42.0) == 42.0
    with pytest.raises(ValueError):
        parse_since("yesterday", 0)


async def test_config_file_is_json_with_generation(tmp_path, backends):
    _, urls = backends
    router = Router(tmp_path, None)
    router.set_config(make_config(urls, 100, 0))
    router.set_config(make_config(urls, 90, 10))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["generation"] == 2 and saved["config"]["predictors"][1]["weight"] == 10


IRIS_INPUTS = ({"name": "input-0", "datatype": "FP64", "shape": [-1, 4],
                "parameters": {"features": ["sepal length", "sepal width", "petal length", "petal width"]}},)

MALFORMED = [
    # (body, status, words the message must contain)
    (b"not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"inputs": []}).encode(), 400, "non-empty list"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64"}]}).encode(), 400, "has no data"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3]}]}).encode(),
     400, "holds 4 elements but data has 3"),
    (json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1] * 4}]}).encode(),
     400, "holds 8 elements"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FLOAT", "data": [1] * 4}]}).encode(),
     400, "not a V2 datatype"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ["a", 1, 2, 3]}]}).encode(),
     400, "needs numbers"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}).encode(),
     400, "does not fit the model's FP64"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}).encode(),
     400, "takes 4 features per row, got 3"),
    (json.dumps({"inputs": [{"name": "x", "shape": [4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}).encode(),
     400, "does not match the model's [-1, 4]"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, -4], "datatype": "FP64", "data": [1] * 4}]}).encode(),
     400, "non-negative integers"),
    (json.dumps({"inputs": [ROW["inputs"][0], {**ROW["inputs"][0], "name": "y"}]}).encode(), 400, "one input tensor"),
    (json.dumps({**ROW, "id": 7}).encode(), 400, "id must be a string"),
]


@pytest.mark.parametrize("body,status,words", MALFORMED, ids=[m[2] for m in MALFORMED])
async def test_client_mistakes_are_v2_400s_never_predictor_errors(router_client, backends, body, status, words):
    router, client = router_client
    fakes, urls = backends
    config = make_config(urls, 50, 50).model_dump(by_alias=True)
    for predictor in config["predictors"]:
        predictor["inputs"] = IRIS_INPUTS
    router.set_config(RouterConfig.model_validate(config))
    for _ in range(4):  # both predictors get some
        resp = await client.post("/v2/models/iris/infer", data=body, headers={"Content-Type": "application/json"})
        answer = await resp.json()
        assert resp.status == status and set(answer) == {"error"} and words in answer["error"], answer
    assert not fakes["stable"].seen and not fakes["canary"].seen  # no model server was bothered
    stats = (await (await client.get("/_mlops/stats")).json())["predictors"]
    for name in ("stable", "canary"):
        assert stats[name]["requests"] == 2 and stats[name]["clientErrors"] == 2
        assert stats[name]["errors"] == 0 and stats[name]["errorRate"] == 0.0 and stats[name]["p99Ms"] is None
    text = await (await client.get("/metrics")).text()
    assert 'mlops_router_request_client_errors_total{predictor="canary"} 2.0' in text
    assert 'mlops_router_request_errors_total{predictor="canary"}' not in text
    # A well-formed request still goes through, and the error rate is over well-formed requests only.
    resp, _ = await infer(client)
    assert resp.status == 200


async def test_numeric_datatypes_fit_a_numeric_model_and_integers_are_checked(router_client, backends):
    router, client = router_client
    _, urls = backends
    config = make_config(urls, 100, 0).model_dump(by_alias=True)
    config["predictors"][0]["inputs"] = IRIS_INPUTS
    router.set_config(RouterConfig.model_validate(config))
    resp, _ = await infer(client, {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT32", "data": [5, 3, 1, 0]}]})
    assert resp.status == 200
    resp, body = await infer(client, {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT8", "data": [500, 3, 1, 0]}]})
    assert resp.status == 400 and "-128..127" in body["error"]
    resp, body = await infer(client, {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64",
                                                  "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}]})
    assert resp.status == 200  # nested data is row-major V2 JSON too


async def test_wrong_method_oversized_body_and_unknown_path_are_v2_errors(router_client, backends):
    router, client = router_client
    _, urls = backends
    router.set_config(make_config(urls, 100, 0))
    resp = await client.get("/v2/models/iris/infer")
    assert resp.status == 405 and "method GET is not allowed" in (await resp.json())["error"]
    assert "POST" in resp.headers["Allow"]
    resp = await client.post("/v2/models/iris/infer", data=b"x" * (64 * 1024 * 1024 + 1),
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413 and "larger than" in (await resp.json())["error"]
    resp = await client.get("/v2/nothing")
    assert resp.status == 404 and set(await resp.json()) == {"error"}


async def test_backend_validation_errors_become_v2_error_bodies(router_client, backends):
    router, client = router_client
    fakes, urls = backends
    router.set_config(make_config(urls, 100, 0))

    async def fastapi_like(request):
        return web.json_response({"detail": [{"loc": ["body", "inputs", 0, "shape"], "msg": "field required"}]},
                                 status=422)
    server = TestServer(_one_route_app(fastapi_like), host="127.0.0.1")
    await server.start_server()
    try:
        config = make_config(urls, 100, 0).model_dump(by_alias=True)
        config["predictors"][0]["url"] = str(server.make_url("")).rstrip("/")
        router.set_config(RouterConfig.model_validate(config))
        resp, body = await infer(client)
        assert resp.status == 422 and body == {"error": "body.inputs.0.shape: field required"}
        assert router.windows["stable"].stats(0).client_errors == 1 and router.windows["stable"].stats(0).errors == 0
    finally:
        await server.close()


def _one_route_app(handler):
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", handler)
    return app
