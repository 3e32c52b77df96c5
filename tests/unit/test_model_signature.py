"""The model's V2 signature written at export, served by MLServer's own sklearn runtime (in-process)."""

import asyncio
import json

import joblib
import pandas as pd
import pytest
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest
from mlserver_sklearn import SKLearnModel
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlops_operator.backends import artifacts
from mlops_operator.backends.serving_local.v2_protocol import (
    ClientError,
    check_signature,
    declared_inputs,
    in_declared_order,
    parse_request,
)
from mlops_operator.components.export import model_signature
from mlops_operator.components.train import build_model

FRAME = pd.DataFrame({"size": [1.0, 2, 3, 4, 5, 6, 7, 8], "color": list("rgbrgbrg"),
                      "label": list("abababab"), "price": [1.0, 2, 3, 4, 5, 6, 7, 8.5]})


def serve(tmp_path, model, schema, target):
    """MLServer's SKLearnModel loaded from the model-settings.json export writes."""
    joblib.dump(model, tmp_path / "model.joblib")
    settings = artifacts.mlserver_model_settings("toy", 3, model_signature(schema, target))
    (tmp_path / "model-settings.json").write_text(json.dumps(settings))
    settings["parameters"]["uri"] = str(tmp_path / "model.joblib")
    runtime = SKLearnModel(ModelSettings.model_validate({**settings, "implementation": SKLearnModel}))
    asyncio.run(runtime.load())
    return settings, runtime


def predict(runtime, body: dict) -> list:
    response = asyncio.run(runtime.predict(InferenceRequest.model_validate(body)))
    return response.outputs[0].data.root


def test_numeric_model_declares_one_tensor_in_training_order(tmp_path):
    schema = {"features": ["size", "price"], "numeric": ["size", "price"], "categorical": [], "target": "label",
              "task": "classification"}
    model = build_model(LogisticRegression(), schema).fit(FRAME[["size", "price"]], FRAME["label"])
    settings, runtime = serve(tmp_path, model, schema, FRAME["label"])
    assert settings["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 2],
                                   "parameters": {"features": ["size", "price"]}}]
    assert settings["outputs"][0] == {"name": "predict", "datatype": "BYTES", "shape": [-1, 1],
                                      "parameters": {"target": "label"}}
    assert settings["platform"] == "sklearn" and settings["versions"] == ["3"]
    metadata = asyncio.run(runtime.metadata())
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("input-0", "FP64", [-1, 2])]
    body = {"inputs": [{"name": "anything", "shape": [2, 2], "datatype": "FP64", "data": [1, 1, 8, 8.5]}]}
    check_signature(parse_request(json.dumps(body).encode()), declared_inputs(settings))
    assert predict(runtime, body) == ["a", "b"]


def test_regression_output_is_fp64():
    schema = {"features": ["size"], "numeric": ["size"], "categorical": [], "target": "price", "task": "regression"}
    assert model_signature(schema, FRAME["price"])["outputs"][0]["datatype"] == "FP64"
    schema["task"] = "classification"
    assert model_signature(schema, pd.Series([0, 1, 2]))["outputs"][0]["datatype"] == "INT64"


def test_categorical_model_takes_a_table_in_any_input_order(tmp_path):
    schema = {"features": ["size", "color"], "numeric": ["size"], "categorical": ["color"], "target": "label",
              "task": "classification"}
    model = build_model(LogisticRegression(), schema).fit(FRAME[["size", "color"]], FRAME["label"])
    settings, runtime = serve(tmp_path, model, schema, FRAME["label"])
    inputs = declared_inputs(settings)
    assert [(t["name"], t["datatype"], t["shape"]) for t in inputs] == [("size", "FP64", [-1]), ("color", "BYTES", [-1])]
    # Columns sent in another order are put back in training order (the model reads them by position).
    body = {"inputs": [{"name": "color", "shape": [2], "datatype": "BYTES", "data": ["r", "g"]},
                       {"name": "size", "shape": [2], "datatype": "FP64", "data": [1.0, 8.0]}]}
    request = parse_request(json.dumps(body).encode())
    check_signature(request, inputs)
    assert in_declared_order(request, inputs) and [t["name"] for t in request["inputs"]] == ["size", "color"]
    assert predict(runtime, request) == ["a", "b"]
    with pytest.raises(ClientError, match=r"missing \['color'\]"):
        check_signature(parse_request(json.dumps({"inputs": [body["inputs"][1]]}).encode()), inputs)
    with pytest.raises(ClientError, match="datatype FP64 does not fit the model's BYTES"):
        check_signature(parse_request(json.dumps({"inputs": [
            {**body["inputs"][0], "datatype": "FP64", "data": [1, 2]}, body["inputs"][1]]}).encode()), inputs)


def test_linear_regression_signature_roundtrip(tmp_path):
    schema = {"features": ["size"], "numeric": ["size"], "categorical": [], "target": "price", "task": "regression"}
    model = build_model(LinearRegression(), schema).fit(FRAME[["size"]], FRAME["price"])
    _, runtime = serve(tmp_path, model, schema, FRAME["price"])
    out = predict(runtime, {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [2.0]}]})
    assert out[0] == pytest.approx(2.0, abs=0.3)


def test_declared_inputs_ignores_malformed_declarations():
    assert declared_inputs({}) == []
    assert declared_inputs({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}, "junk",
                                       {"name": "y", "datatype": "FP64", "shape": [-1, 2]}]}) == [
        {"name": "y", "datatype": "FP64", "shape": [-1, 2]}]
