"""Seldon request-logger sink: real HTTP posts of CloudEvents in, the inference log out."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import pytest_asyncio

from mlops_operator.backends import seldon_logger_sink as sink_module
from mlops_operator.backends.seldon_logger_sink import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SeldonLoggerSink,
    SinkSettings,
    logger_url,
    parse_message,
)
from mlops_operator.backends.serving_local.inference_log import read_window

T0 = datetime(2026, 3, 1, 10, 15, 0, tzinfo=UTC)
FEATURES = ["sl", "sw", "pl", "pw"]


def v2_request(rows, request_id=None) -> dict:
    body = {"inputs": [{"name": "predict", "shape": [len(rows), 4], "datatype": "FP64",
                        "data": [value for row in rows for value in row]}]}
    if request_id:
        body["id"] = request_id
    return body


def v2_response(predictions, request_id=None) -> dict:
    body = {"model_name": "iris", "outputs": [{"name": "predict", "shape": [len(predictions), 1],
                                               "datatype": "INT64", "data": list(predictions)}]}
    if request_id:
        body["id"] = request_id
    return body


def headers(event_type, request_id, moment=T0, **extra) -> dict:
    return {
        "Content-Type": "application/json",
        "Ce-Specversion": "1.0",
        "Ce-Type": event_type,
        "Ce-Id": f"event-{event_type[-8:]}-{request_id}",
        "Ce-Requestid": request_id,
        "Ce-Modelid": "iris",
        "Ce-Source": "http://executor:8000/",
        # Go's RFC 3339 with nanoseconds, as the executor writes it.
        "Ce-Time": moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        **extra,
    }


@pytest_asyncio.fixture
async def sink(tmp_path):
    server = SeldonLoggerSink(tmp_path.as_uri(), port=0, pair_timeout=0.4, flush_interval=0.05)
    await server.start()
    yield server
    await server.close()


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http, url, body, hdrs) -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(url, data=data, headers=hdrs) as response:
        return response.status


def read(tmp_path, deployment="iris", namespace="ml", **kwargs):
    return read_window(tmp_path.as_uri(), namespace, deployment, feature_names=FEATURES, **kwargs)


@pytest.mark.asyncio
async def test_request_and_response_pair_into_one_record(sink, http, tmp_path):
    url = sink.logger_url("ml", "iris", "stable", model_version="3")
    assert await post(http, url, v2_request([[5.1, 3.5, 1.4, 0.2]]), headers(REQUEST_TYPE, "r1")) == 202
    assert sink.written == 0, "a request waits for its response"
    later = T0 + timedelta(milliseconds=12)
    assert await post(http, url, v2_response([0]), headers(RESPONSE_TYPE, "r1", later)) == 202
    await sink.flush()
    frame = read(tmp_path)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row.request_id, row.predictor, row.model_version, bool(row.shadow), row.status) == (
        "r1", "stable", "3", False, 200)
    assert row.latency_ms == pytest.approx(12.0, abs=0.01)
    assert row.ts == T0
    assert [row[f] for f in FEATURES] == [5.1, 3.5, 1.4, 0.2]
    assert row.prediction == 0
    record = json.loads(next((tmp_path / "inference" / "ml" / "iris").rglob("*.jsonl")).read_text())
    assert set(record) == {"id", "ts", "model", "predictor", "modelVersion", "shadow", "status", "latencyMs",
                           "inputs", "outputs", "error"}
    assert record["model"] == "iris" and record["error"] is None


@pytest.mark.asyncio
async def test_the_record_keeps_the_callers_request_id(sink, http, tmp_path):
    """The executor's Ce-Requestid is its Seldon-Puid (generated when the caller sent none): the pair is
    matched by it, the record keeps the V2 body's id, the one ground-truth labels are keyed on."""
    url = sink.logger_url("ml", "iris", "stable", model_version="1")
    puid = "5f2b9c0e-7a43-4d0b-9f55-3c1d2e8a6b10"
    await post(http, url, v2_request([[5.1, 3.5, 1.4, 0.2]], request_id="client-7"), headers(REQUEST_TYPE, puid))
    await post(http, url, v2_response([0], request_id="client-7"), headers(RESPONSE_TYPE, puid))
    await post(http, url, v2_request([[5.1, 3.5, 1.4, 0.2]]), headers(REQUEST_TYPE, "no-body-id"))
    await post(http, url, v2_response([0]), headers(RESPONSE_TYPE, "no-body-id"))
    await sink.flush()
    assert sorted(read(tmp_path)["request_id"]) == ["client-7", "no-body-id"]
    assert sink.written == 2 and sink.orphaned == 0


@pytest.mark.asyncio
async def test_response_before_request_and_multi_row_requests(sink, http, tmp_path):
    url = sink.logger_url("ml", "iris", "canary", model_version="4")
    rows = [[5.0, 3.0, 1.0, 0.1], [6.0, 3.0, 4.5, 1.5], [7.0, 3.0, 6.0, 2.0]]
    assert await post(http, url, v2_response([0, 1, 2]), headers(RESPONSE_TYPE, "r2")) == 202
    assert await post(http, url, v2_request(rows), headers(REQUEST_TYPE, "r2")) == 202
    await sink.flush()
    frame = read(tmp_path)
    assert frame["row"].tolist() == [0, 1, 2]
    assert frame["prediction"].tolist() == [0, 1, 2]
    assert frame["pl"].tolist() == [1.0, 4.5, 6.0]
    assert set(frame["predictor"]) == {"canary"}


@pytest.mark.asyncio
async def test_shadow_traffic_is_marked_and_left_out_of_windows(sink, http, tmp_path):
    url = sink.logger_url("ml", "iris", "shadow", model_version="5", shadow=True)
    await post(http, url, v2_request([[1, 2, 3, 4]]), headers(REQUEST_TYPE, "r3"))
    await post(http, url, v2_response([1]), headers(RESPONSE_TYPE, "r3"))
    await sink.flush()
    assert read(tmp_path).empty
    shadow = read(tmp_path, include_shadow=True)
    assert shadow["shadow"].tolist() == [True] and shadow["model_version"].tolist() == ["5"]


@pytest.mark.asyncio
async def test_headers_alone_name_the_deployment(sink, http, tmp_path):
    extra = {"Ce-Namespace": "prod", "Ce-Inferenceservicename": "fraud", "Ce-Endpoint": "main",
             "Authorization": f"Bearer {sink.token('prod')}"}
    await post(http, sink.url + "/", v2_request([[1, 2, 3, 4]]), headers(REQUEST_TYPE, "r4", **extra))
    await post(http, sink.url + "/", v2_response([1]), headers(RESPONSE_TYPE, "r4", **extra))
    await sink.flush()
    frame = read(tmp_path, deployment="fraud", namespace="prod")
    assert frame["predictor"].tolist() == ["main"] and frame["model_version"].tolist() == [""]


@pytest.mark.asyncio
async def test_request_id_falls_back_to_the_v2_id(sink, http, tmp_path):
    url = sink.logger_url("ml", "iris", "stable")
    plain = {k: v for k, v in headers(REQUEST_TYPE, "x").items() if k != "Ce-Requestid"}
    plain_response = {k: v for k, v in headers(RESPONSE_TYPE, "x").items() if k != "Ce-Requestid"}
    await post(http, url, v2_request([[1, 2, 3, 4]], request_id="v2-id"), plain)
    await post(http, url, v2_response([2], request_id="v2-id"), plain_response)
    await sink.flush()
    assert read(tmp_path)["request_id"].tolist() == ["v2-id"]


@pytest.mark.asyncio
async def test_structured_cloudevents_are_accepted(sink, http, tmp_path):
    url = sink.logger_url("ml", "iris", "stable", model_version="1")
    structured = {"Content-Type": "application/cloudevents+json"}
    request_event = {"specversion": "1.0", "type": REQUEST_TYPE, "id": "e1", "requestid": "r5",
                     "source": "x", "time": "2026-03-01T10:15:00Z", "data": v2_request([[1, 2, 3, 4]])}
    response_event = {"specversion": "1.0", "type": RESPONSE_TYPE, "id": "e2", "requestid": "r5",
                      "source": "x", "time": "2026-03-01T10:15:00.5Z",
                      "data_base64": base64.b64encode(json.dumps(v2_response([2])).encode()).decode()}
    assert await post(http, url, request_event, structured) == 202
    assert await post(http, url, response_event, structured) == 202
    await sink.flush()
    frame = read(tmp_path)
    assert frame["prediction"].tolist() == [2] and frame["latency_ms"].tolist() == [500.0]


@pytest.mark.asyncio
async def test_unpaired_messages_expire(sink, http, tmp_path):
    url = sink.logger_url("ml", "iris", "stable")
    await post(http, url, v2_request([[1, 2, 3, 4]]), headers(REQUEST_TYPE, "lonely"))
    await post(http, url, v2_response([1]), headers(RESPONSE_TYPE, "orphan"))

    async def expired():
        while sink.expired < 1 or sink.orphaned < 1:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(expired(), timeout=5)
    await sink.flush()
    assert read(tmp_path).empty, "a request without a response is not a served request"
    failed = read(tmp_path, include_errors=True)
    assert failed["request_id"].tolist() == ["lonely"] and failed["status"].tolist() == [504]
    assert sink.written == 1


@pytest.mark.asyncio
async def test_unusable_events_are_rejected(sink, http):
    url = sink.logger_url("ml", "iris", "stable")
    assert await post(http, url, v2_request([[1, 2, 3, 4]]), headers("io.seldon.serving.inference.outlier", "r")) == 400
    traversal = {**headers(REQUEST_TYPE, "r"), "Ce-Namespace": "..", "Ce-Inferenceservicename": "x",
                 "Authorization": f"Bearer {sink.token('..')}"}
    assert await post(http, sink.url + "/", v2_request([[1, 2, 3, 4]]), traversal) == 400
    nameless = {k: v for k, v in headers(REQUEST_TYPE, "r").items() if k not in ("Ce-Requestid", "Ce-Id")}
    assert await post(http, url, b"not json", nameless) == 400
    assert sink.rejected == 3 and sink.received == 0
    async with http.get(sink.url + "/healthz") as response:
        assert (await response.json())["rejected"] == 3


@pytest.mark.asyncio
async def test_close_writes_waiting_requests(tmp_path, http):
    server = SeldonLoggerSink(tmp_path, port=0, pair_timeout=60)
    await server.start()
    await post(http, server.logger_url("ml", "iris", "stable"), v2_request([[1, 2, 3, 4]]),
               headers(REQUEST_TYPE, "pending"))
    await server.close()
    assert read(tmp_path, include_errors=True)["status"].tolist() == [504]


@pytest.mark.asyncio
async def test_callers_must_present_their_namespaces_token(sink, http, tmp_path):
    tokenless = sink.logger_url("ml", "iris", "stable", model_version="1").replace(f"ml:{sink.token('ml')}@", "")
    assert "@" not in tokenless
    body = v2_request([[1, 2, 3, 4]])
    async with http.post(tokenless, data=json.dumps(body).encode(), headers=headers(REQUEST_TYPE, "u1")) as response:
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
        assert sink.token("ml") not in await response.text()
    # Another namespace's token, a wrong token, or the right token under another namespace's name: refused.
    for authorization in (f"Bearer {sink.token('other')}", "Bearer 0123", "Bearer ",
                          "Basic " + base64.b64encode(f"other:{sink.token('ml')}".encode()).decode(),
                          "Basic not-base64!"):
        assert await post(http, tokenless, body, {**headers(REQUEST_TYPE, "u1"), "Authorization": authorization}) == 401
    assert sink.unauthorized == 6 and sink.received == 0

    # What the executor sends for a logger URL with user info (Go's net/http: Basic), and Bearer.
    assert sink.logger_url("ml", "iris", "stable", model_version="1").startswith(f"http://ml:{sink.token('ml')}@")
    basic = "Basic " + base64.b64encode(f"ml:{sink.token('ml')}".encode()).decode()
    assert await post(http, tokenless, body, {**headers(REQUEST_TYPE, "u1"), "Authorization": basic}) == 202
    assert await post(http, tokenless, v2_response([2]),
                      {**headers(RESPONSE_TYPE, "u1"), "Authorization": f"Bearer {sink.token('ml')}"}) == 202
    await sink.flush()
    assert read(tmp_path)["request_id"].tolist() == ["u1"]


def test_tokens_are_per_namespace_and_stable_under_one_key(tmp_path):
    first = SeldonLoggerSink(tmp_path, token_key="k")
    assert first.token("a") == SeldonLoggerSink(tmp_path, token_key="k").token("a") != first.token("b")
    assert first.token("a") != SeldonLoggerSink(tmp_path, token_key="other").token("a")
    assert SeldonLoggerSink(tmp_path).token("a") != SeldonLoggerSink(tmp_path).token("a")  # random key without one


def test_logger_url_quotes_and_carries_version_and_shadow():
    assert logger_url("http://op:9180/", "ml", "iris", "stable", "3") == "http://op:9180/v1/log/ml/iris/stable?version=3"
    assert logger_url("http://op:9180", "ml", "iris", "a b", None, shadow=True) == (
        "http://op:9180/v1/log/ml/iris/a%20b?shadow=true")
    assert logger_url("http://op:9180", "ml", "iris", "stable", "3", token="t0k") == (
        "http://ml:t0k@op:9180/v1/log/ml/iris/stable?version=3")


def test_parse_message_reads_go_timestamps_and_defaults_to_arrival_time():
    message = parse_message(headers(REQUEST_TYPE, "r"), b"{}", {"namespace": "ml", "deployment": "iris"}, {},
                            arrived=1.0, now=T0 + timedelta(hours=1))
    assert message.time == T0 and message.type == "request" and message.model == "iris"
    no_time = {k: v for k, v in headers(RESPONSE_TYPE, "r").items() if k != "Ce-Time"}
    message = parse_message(no_time, b"{}", {"namespace": "ml", "deployment": "iris"}, {}, arrived=1.0,
                            now=T0 + timedelta(hours=1))
    assert message.time == T0 + timedelta(hours=1) and message.type == "response"


def test_settings(monkeypatch):
    monkeypatch.setenv("MLOPS_SELDON_LOGGER_MODE", "always")
    monkeypatch.setenv("MLOPS_SELDON_LOGGER_PORT", "0")
    settings = SinkSettings()
    assert (settings.mode, settings.port, settings.host) == ("always", 0, "127.0.0.1")


@pytest.mark.asyncio
async def test_a_remote_root_gets_the_log_as_objects(http):
    """A non-local root (here fsspec's memory store; tests/integration/test_s3.py uses a real S3
    server) gets one object per flushed batch, which read_window reads like a local log."""
    import fsspec

    root = "memory://sink-remote-root"
    server = SeldonLoggerSink(root, port=0, pair_timeout=5, flush_interval=3600)
    await server.start()
    try:
        url = server.logger_url("ml", "iris", "stable", model_version="3")
        for i in range(2):
            await post(http, url, v2_request([[5.1, 3.5, 1.4, 0.2]]), headers(REQUEST_TYPE, f"r{i}"))
            await post(http, url, v2_response([0]), headers(RESPONSE_TYPE, f"r{i}"))
            await server.flush()
    finally:
        await server.close()
    frame = read_window(root, "ml", "iris", feature_names=FEATURES)
    assert list(frame.request_id) == ["r0", "r1"]
    objects = fsspec.filesystem("memory").find("/sink-remote-root/inference/ml/iris")
    assert len(objects) == 2 and all(o.endswith(".jsonl") and "/2026/" in o for o in objects), objects


@pytest.mark.asyncio
async def test_the_operators_sink_starts_once_and_stops(tmp_path, http):
    settings = SinkSettings(port=0, advertised_url="http://mlops-operator.mlops-system:9180", token_key="key")
    first = await sink_module.ensure_running(tmp_path.as_uri(), settings)
    try:
        assert await sink_module.ensure_running(tmp_path.as_uri(), settings) is first
        assert sink_module.running() is first
        assert first.logger_url("ml", "iris", "stable", "2") == (
            f"http://ml:{sink_module.namespace_token('key', 'ml')}@mlops-operator.mlops-system:9180"
            "/v1/log/ml/iris/stable?version=2")
        async with http.get(f"http://127.0.0.1:{first.port}/healthz") as response:
            assert response.status == 200
    finally:
        await sink_module.stop_running()
    assert sink_module.running() is None
