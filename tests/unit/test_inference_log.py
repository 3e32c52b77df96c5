"""Inference log: record format, buffered hourly writer, and the tensor → DataFrame reader."""

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_operator.backends.serving_local.inference_log import (
    META_COLUMNS,
    InferenceLogWriter,
    LogEntry,
    build_record,
    hour_file,
    inference_log_dir,
    read_window,
    records_to_frame,
    request_id_of,
    tensors_to_columns,
)

T0 = datetime(2026, 3, 1, 10, 15, 0, tzinfo=timezone.utc)


def v2_request(rows, name="input-0", request_id=None):
    rows = np.asarray(rows, dtype=float)
    req = {"inputs": [{"name": name, "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    if request_id:
        req["id"] = request_id
    return req


def v2_response(predictions):
    return json.dumps({"model_name": "iris", "outputs": [
        {"name": "predict", "shape": [len(predictions), 1], "datatype": "INT64", "data": list(predictions)}]}).encode()


def entry(ts, *, rows=((5.1, 3.5, 1.4, 0.2),), predictor="stable", version="1", shadow=False, status=200,
          request_id=None, response=None):
    request = v2_request(rows, request_id=request_id)
    if response is None and status == 200:
        response = v2_response([0] * len(rows))
    return LogEntry(request_id=request_id or request_id_of(request), ts=ts, model="iris", predictor=predictor,
                    model_version=version, shadow=shadow, status=status, latency_ms=1.5, request=request,
                    response_body=response)


def write(directory, entries):
    InferenceLogWriter(directory).write_batch(entries)


# ---------------------------------------------------------------- record format


def test_record_has_every_documented_field():
    record = build_record(entry(T0, request_id="req-1"))
    assert set(record) == {"id", "ts", "model", "predictor", "modelVersion", "shadow", "status", "latencyMs",
                           "inputs", "outputs", "error"}
    assert record["id"] == "req-1"
    assert record["ts"] == "2026-03-01T10:15:00.000000Z"
    assert record["inputs"][0]["shape"] == [1, 4]
    assert record["outputs"][0]["data"] == [0]
    assert record["error"] is None


def test_record_of_failed_request_carries_the_error():
    failed = entry(T0, status=500, response=b'{"error":"shapes (1,4) and (3,) not aligned"}')
    record = build_record(failed)
    assert record["status"] == 500 and record["outputs"] is None
    assert "not aligned" in record["error"]
    unreachable = entry(T0, status=502, response=b"")
    unreachable.error = "predictor canary unreachable"
    assert build_record(unreachable)["error"] == "predictor canary unreachable"


def test_request_id_taken_from_v2_id_or_generated():
    assert request_id_of({"id": "abc"}) == "abc"
    generated = {request_id_of({}) for _ in range(3)}
    assert len(generated) == 3 and all(len(g) == 36 for g in generated)


def test_hour_file_layout_is_utc():
    local = datetime(2026, 3, 1, 23, 59, tzinfo=timezone(timedelta(hours=-2)))
    assert hour_file("/log", local) == Path("/log/2026/03/02/01.jsonl")
    assert inference_log_dir("/data/", "ns", "iris") == "/data/inference/ns/iris"


# ---------------------------------------------------------------- writer


def test_writer_buffers_flushes_by_count_and_on_close(tmp_path):
    async def scenario():
        writer = InferenceLogWriter(tmp_path, flush_every=10, flush_interval=3600)
        writer.start()
        for i in range(9):
            writer.append(entry(T0 + timedelta(seconds=i)))
        await asyncio.sleep(0.05)
        assert not list(tmp_path.rglob("*.jsonl"))  # below flush_every, before the interval: nothing yet
        writer.append(entry(T0 + timedelta(seconds=9)))
        for _ in range(100):
            if writer.written == 10:
                break
            await asyncio.sleep(0.01)
        assert writer.written == 10
        for i in range(3):
            writer.append(entry(T0 + timedelta(seconds=20 + i)))
        await writer.close()
        return writer

    writer = asyncio.run(scenario())
    lines = (tmp_path / "2026/03/01/10.jsonl").read_text().splitlines()
    assert len(lines) == 13 == writer.written
    assert [json.loads(x)["ts"][17:19] for x in lines] == [f"{s:02d}" for s in list(range(10)) + [20, 21, 22]]


def test_writer_flushes_on_interval(tmp_path):
    async def scenario():
        writer = InferenceLogWriter(tmp_path, flush_every=1000, flush_interval=0.05)
        writer.start()
        writer.append(entry(T0))
        for _ in range(200):
            if writer.written:
                break
            await asyncio.sleep(0.01)
        written = writer.written
        await writer.close()
        return written

    assert asyncio.run(scenario()) == 1


def test_writer_splits_records_into_hourly_files(tmp_path):
    write(tmp_path, [entry(T0), entry(T0 + timedelta(hours=1)), entry(T0 + timedelta(days=1))])
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl"))
    assert files == ["2026/03/01/10.jsonl", "2026/03/01/11.jsonl", "2026/03/02/10.jsonl"]


def test_writer_drops_when_buffer_is_full_instead_of_growing(tmp_path):
    writer = InferenceLogWriter(tmp_path, flush_every=10**9, max_buffered=5)
    for _ in range(8):
        writer.append(entry(T0))
    assert writer.dropped == 3


# ---------------------------------------------------------------- tensors → columns


def test_single_2d_tensor_gets_positional_or_given_names():
    tensors = v2_request([[1, 2, 3], [4, 5, 6]])["inputs"]
    columns, rows = tensors_to_columns(tensors)
    assert rows == 2 and list(columns) == ["f0", "f1", "f2"]
    assert columns["f1"].tolist() == [2, 5]
    named, _ = tensors_to_columns(tensors, single_tensor_names=["a", "b", "c"])
    assert list(named) == ["a", "b", "c"]
    mismatched, _ = tensors_to_columns(tensors, single_tensor_names=["a", "b"])
    assert list(mismatched) == ["f0", "f1", "f2"]


def test_pandas_codec_style_tensors_become_named_columns():
    tensors = [
        {"name": "age", "shape": [3, 1], "datatype": "INT64", "data": [30, 40, 50]},
        {"name": "city", "shape": [3], "datatype": "BYTES", "data": ["a", "b", "c"]},
        {"name": "emb", "shape": [3, 2], "datatype": "FP32", "data": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]},
    ]
    columns, rows = tensors_to_columns(tensors)
    assert rows == 3
    assert list(columns) == ["age", "city", "emb_0", "emb_1"]
    assert columns["city"].tolist() == ["a", "b", "c"]
    assert columns["emb_1"].tolist() == pytest.approx([0.2, 0.4, 0.6])


def test_single_1d_tensor_keeps_its_name():
    columns, rows = tensors_to_columns([{"name": "x", "shape": [4], "datatype": "FP64", "data": [1, 2, 3, 4]}])
    assert rows == 4 and list(columns) == ["x"]


@pytest.mark.parametrize("tensors", [
    [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4]}],
    [{"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 2]},
     {"name": "b", "shape": [3], "datatype": "FP64", "data": [1, 2, 3]}],
])
def test_malformed_tensors_raise(tensors):
    with pytest.raises(ValueError):
        tensors_to_columns(tensors)


def test_records_to_frame_one_row_per_input_row_with_predictions():
    records = [build_record(entry(T0, rows=[[1, 2, 3, 4], [5, 6, 7, 8]], request_id="r1")),
               build_record(entry(T0 + timedelta(seconds=1), request_id="r2", predictor="canary", version="2"))]
    records.append({**records[0], "id": "bad", "inputs": [{"name": "x", "shape": [2, 4], "data": [1]}]})
    frame = records_to_frame(records, feature_names=["sl", "sw", "pl", "pw"])
    assert list(frame.columns) == list(META_COLUMNS) + ["sl", "sw", "pl", "pw", "prediction"]
    assert frame["request_id"].tolist() == ["r1", "r1", "r2"]
    assert frame["row"].tolist() == [0, 1, 0]
    assert frame["pw"].tolist() == [4, 8, 0.2]
    assert frame["model_version"].tolist() == ["1", "1", "2"]
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"
    assert frame.attrs == {"feature_columns": ["sl", "sw", "pl", "pw"], "prediction_columns": ["prediction"],
                           "skipped_records": 1}


def test_several_outputs_get_prefixed_prediction_columns():
    record = build_record(entry(T0, rows=[[1, 2, 3, 4]]))
    record["outputs"] = [
        {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [2]},
        {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64", "data": [0.1, 0.2, 0.7]},
    ]
    frame = records_to_frame([record])
    assert frame.attrs["prediction_columns"] == ["prediction_predict", "prediction_predict_proba_0",
                                                 "prediction_predict_proba_1", "prediction_predict_proba_2"]
    assert frame["prediction_predict_proba_2"].iloc[0] == pytest.approx(0.7)


def test_empty_frame_has_meta_columns():
    frame = records_to_frame([])
    assert list(frame.columns) == list(META_COLUMNS) and len(frame) == 0


# ---------------------------------------------------------------- read_window


def log_dir(root):
    return Path(inference_log_dir(root, "ns", "iris"))


def test_read_window_filters_shadow_errors_and_since(tmp_path):
    write(log_dir(tmp_path), [
        entry(T0, request_id="a"),
        entry(T0 + timedelta(seconds=1), request_id="a", predictor="shadow", version="3", shadow=True),
        entry(T0 + timedelta(seconds=2), request_id="b", status=500, response=b'{"error":"boom"}'),
        entry(T0 + timedelta(hours=2), request_id="c", predictor="canary", version="2"),
    ])
    assert read_window(tmp_path, "ns", "iris")["request_id"].tolist() == ["a", "c"]
    with_shadow = read_window(tmp_path, "ns", "iris", include_shadow=True)
    assert with_shadow["request_id"].tolist() == ["a", "a", "c"]
    assert with_shadow["shadow"].tolist() == [False, True, False]
    assert read_window(tmp_path, "ns", "iris", include_errors=True)["request_id"].tolist() == ["a", "b", "c"]
    since = read_window(tmp_path, "ns", "iris", since=T0 + timedelta(seconds=1))
    assert since["request_id"].tolist() == ["c"]
    assert read_window(tmp_path, "ns", "iris", since="2026-03-01T12:15:00Z")["request_id"].tolist() == ["c"]


def test_read_window_max_rows_keeps_newest_rows(tmp_path):
    write(log_dir(tmp_path), [entry(T0 + timedelta(minutes=i), request_id=f"r{i:02d}", rows=[[i, 0, 0, 0]] * 2)
                              for i in range(30)])
    frame = read_window(tmp_path, "ns", "iris", max_rows=5)
    assert len(frame) == 5
    assert frame["request_id"].tolist() == ["r27", "r28", "r28", "r29", "r29"]
    assert frame["f0"].tolist() == [27, 28, 28, 29, 29]
    assert frame.attrs["feature_columns"] == ["f0", "f1", "f2", "f3"]


def test_read_window_opens_only_the_newest_files_needed(tmp_path):
    directory = log_dir(tmp_path)
    write(directory, [entry(T0 - timedelta(days=40) + timedelta(hours=h), request_id=f"old{h}") for h in range(3)])
    write(directory, [entry(T0 + timedelta(hours=h, minutes=m), request_id=f"h{h}m{m}")
                      for h in range(3) for m in range(10)])
    # Poison the old files: a directory in a file's place makes any attempt to open it raise
    # (bad JSON would just be skipped, so it could not tell).
    for old in (directory / "2026/01").rglob("*.jsonl"):
        old.unlink()
        old.mkdir()
    frame = read_window(tmp_path, "ns", "iris", max_rows=15)
    assert len(frame) == 15 and frame["request_id"].iloc[-1] == "h2m9"
    frame = read_window(tmp_path, "ns", "iris", since=T0 + timedelta(minutes=30))
    assert len(frame) == 20
    with pytest.raises(OSError):
        read_window(tmp_path, "ns", "iris")  # a full read does reach the poisoned files


def test_read_window_of_missing_log_is_empty(tmp_path):
    frame = read_window(tmp_path, "ns", "nothing-here")
    assert isinstance(frame, pd.DataFrame) and frame.empty


def test_read_window_skips_torn_last_line(tmp_path):
    write(log_dir(tmp_path), [entry(T0, request_id="whole")])
    with open(hour_file(log_dir(tmp_path), T0), "a") as fh:
        fh.write('{"id": "torn", "ts": "2026-03')
    assert read_window(tmp_path, "ns", "iris")["request_id"].tolist() == ["whole"]
