"""The request-logger sink's authentication against the client the Seldon executor really uses.

seldon-core v1.17.1's executor posts request logs with cloudevents sdk-go v1.2.0's HTTP transport to
the predictor's ``graph.logger.url`` and cannot add headers (``executor/logger/worker.go``). The
operator therefore puts the namespace's token in that URL as user info, which Go's ``net/http`` sends
as ``Authorization: Basic``. ``seldon_executor_logger/main.go`` is that client code (same library
and version, same calls), built with the Go toolchain; a real executor needs a node and Seldon's
images, which tests/e2e/test_seldon.py uses.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mlops_operator.backends.seldon_logger_sink import REQUEST_TYPE, RESPONSE_TYPE, SeldonLoggerSink
from mlops_operator.backends.serving_local.inference_log import read_window

CLIENT = Path(__file__).parent / "seldon_executor_logger"


@pytest.fixture(scope="module")
def executor_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The executor's CloudEvents client, built (the first build downloads sdk-go from the Go module proxy)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("the Go toolchain is not installed (needed to build the executor's CloudEvents client)")
    binary = tmp_path_factory.mktemp("executor-client") / "executor-logger"
    print(f"building {CLIENT} with {go} (downloads sdk-go v1.2.0 on first use)...", flush=True)
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=CLIENT, check=True, timeout=600)
    return binary


async def send(client: Path, url: str, event_type: str, request_id: str, body: dict) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(str(client), url, event_type, request_id, json.dumps(body),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, out.decode()


@pytest.mark.asyncio
async def test_the_executors_client_authenticates_with_the_token_in_the_logger_url(executor_client, tmp_path):
    sink = SeldonLoggerSink(tmp_path, port=0, pair_timeout=60, token_key="contract-key")
    await sink.start()
    try:
        url = sink.logger_url("ml", "iris", "stable", model_version="7")
        assert url.startswith(f"http://ml:{sink.token('ml')}@127.0.0.1:")
        request = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
        response = {"outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [0]}]}

        # Without the token (a URL without user info, or another namespace's): refused, nothing written.
        bare = url.replace(f"ml:{sink.token('ml')}@", "")
        code, out = await send(executor_client, bare, REQUEST_TYPE, "r0", request)
        assert code != 0 and "401" in out, out
        other = url.replace(f"ml:{sink.token('ml')}@", f"ml:{sink.token('other')}@")
        code, out = await send(executor_client, other, REQUEST_TYPE, "r0", request)
        assert code != 0 and "401" in out, out
        assert sink.unauthorized == 2 and sink.received == 0

        for event_type, body in ((REQUEST_TYPE, request), (RESPONSE_TYPE, response)):
            code, out = await send(executor_client, url, event_type, "r1", body)
            assert code == 0, out
        await sink.flush()
    finally:
        await sink.close()
    frame = read_window(tmp_path.as_uri(), "ml", "iris", feature_names=["sl", "sw", "pl", "pw"])
    assert frame["request_id"].tolist() == ["r1"] and frame["model_version"].tolist() == ["7"]
    assert frame["prediction"].tolist() == [0]
