"""A real V2 client (tritonclient.http) against the real router and a real MLServer.

The model directory is written the way the export step writes it (``model-settings.json`` with the
signature from the training schema), so metadata, versioned routes and the router's checks are the
ones a user meets. Client mistakes must come back as 4xx with a V2 ``{"error": ...}`` body that
tritonclient decodes, and must never count as predictor errors.
"""

import asyncio
import json
import time

import numpy as np
import pandas as pd
import pytest
import requests
import tritonclient.http as triton
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from mlops_operator.backends import artifacts
from mlops_operator.backends.serving_local import LocalServingManager
from mlops_operator.components.export import model_signature

pytestmark = pytest.mark.slow

NS, DEP, MODEL = "ns", "iris-v2", "iris"
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2client")
    X, y = load_iris(return_X_y=True)
    model_dir = root / "models" / MODEL / "1"
    model_dir.mkdir(parents=True)
    import joblib

    joblib.dump(LogisticRegression(max_iter=1000).fit(X, y), model_dir / "model.joblib")
    schema = {"features": FEATURES, "numeric": FEATURES, "categorical": [], "target": "target",
              "task": "classification"}
    settings = artifacts.mlserver_model_settings(MODEL, 1, model_signature(schema, pd.Series(y)))
    (model_dir / "model-settings.json").write_text(json.dumps(settings))
    manager = LocalServingManager(root, ready_timeout=90)

    async def start():
        await manager.ensure_predictor(NS, DEP, "stable", model_dir, "1")
        return await manager.ensure_router(NS, DEP, MODEL, [{"name": "stable", "version": "1", "weight": 100}])

    router = asyncio.run(start())
    url = router.endpoint_url
    yield {"manager": manager, "url": url, "client": triton.InferenceServerClient(url.removeprefix("http://")),
           "X": X}
    asyncio.run(manager.stop_deployment(NS, DEP))


def tensor(array, datatype="FP64", binary=True, name="input-0"):
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def refused(client, *inputs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, list(inputs))
    return caught.value


def test_metadata_readiness_and_versioned_routes(served):
    client = served["client"]
    assert client.is_server_ready() and client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "7")
    meta = client.get_model_metadata(MODEL, "1")
    assert meta["name"] == MODEL and meta["platform"] == "sklearn" and meta["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"], i["parameters"]["features"]) for i in meta["inputs"]] == \
        [("input-0", "FP64", [-1, 4], FEATURES)]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("predict", "INT64", [-1, 1])]
    assert client.get_model_metadata(MODEL)["inputs"] == meta["inputs"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-extension", "json"])
def test_well_formed_requests_are_answered(served, binary):
    client, X = served["client"], served["X"]
    rows = X[[0, 60, 120]]
    result = client.infer(MODEL, [tensor(rows, binary=binary)])
    assert result.as_numpy("predict").ravel().tolist() == [0, 1, 2]
    pinned = client.infer(MODEL, [tensor(rows.astype(np.float32), "FP32", binary=binary)], model_version="1")
    assert pinned.as_numpy("predict").ravel().tolist() == [0, 1, 2]


def test_client_mistakes_are_4xx_with_a_message_and_never_predictor_errors(served):
    client, X, url = served["client"], served["X"], served["url"]
    since = time.time()
    cases = {
        "wrong shape": refused(client, tensor(X[0])),  # [4], not [rows, 4]
        "wrong datatype": refused(client, tensor(np.array([["a", "b", "c", "d"]], dtype=object), "BYTES")),
        "wrong feature count": refused(client, tensor(X[:2, :3])),
        "two inputs": refused(client, tensor(X[:1]), tensor(X[:1], name="input-1")),
    }
    messages = {name: (error.status(), error.message()) for name, error in cases.items()}
    assert all(status == "400" for status, _ in messages.values()), messages
    assert "does not match the model's [-1, 4]" in messages["wrong shape"][1]
    assert "does not fit the model's FP64" in messages["wrong datatype"][1]
    assert "takes 4 features per row, got 3" in messages["wrong feature count"][1]
    assert "petal width (cm)" in messages["wrong feature count"][1]  # the feature names help the user
    assert "one input tensor" in messages["two inputs"][1]

    # Oversized body (tritonclient's binary extension, 72 MB) and a wrong method: V2 bodies too.
    big = refused(client, tensor(np.zeros((2_250_000, 4))))
    assert big.status() == "413" and "larger than the router's limit" in big.message()
    resp = requests.get(f"{url}/v2/models/{MODEL}/infer", timeout=10)
    assert resp.status_code == 405 and "POST" in resp.json()["error"]
    resp = requests.post(f"{url}/v2/models/{MODEL}/infer", data=b"{", headers={"Content-Type": "application/json"},
                         timeout=10)
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]

    # The model keeps answering, and the router's numbers judge it on well-formed requests only.
    client.infer(MODEL, [tensor(X[:1])])
    stats = asyncio.run(served["manager"].router_stats(NS, DEP, since=since)).predictors["stable"]
    assert stats.client_errors == 5 and stats.errors == 0 and stats.error_rate == 0.0
    assert stats.requests - stats.client_errors == 1
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert 'mlops_router_request_client_errors_total{predictor="stable"} 5.0' in metrics
    assert 'mlops_router_request_errors_total{predictor="stable"}' not in metrics
