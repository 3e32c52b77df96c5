"""Object storage through the S3 API, against a real S3 server (MinIO, see tests/s3_support.py).

The model registry (immutable versions, race-free allocation across processes), the inference
log (written as objects, read back by the DriftMonitor's reader), and the local loop with
``MLOPS_ARTIFACT_ROOT=s3://…``: training publishes to S3, the local backend serves from S3, the
router's inference log lands on S3 and the DriftMonitor reads it there.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.backends import artifacts
from mlops_operator.backends.serving_local.inference_log import InferenceLogWriter, LogEntry, read_window

pytestmark = pytest.mark.slow

ALLOCATE = ("import sys; from mlops_operator.backends import artifacts; "
            "print(' '.join(str(artifacts.allocate_version(sys.argv[1], 'iris', f'{sys.argv[2]}-{i}')) "
            "for i in range(int(sys.argv[3]))))")


@pytest.fixture
def root(s3_env) -> str:
    """A fresh prefix in the S3 server's bucket."""
    return f"s3://{s3_env.bucket}/{uuid.uuid4().hex[:10]}"


def test_exclusive_create_is_enforced_by_the_server(root):
    """Version claims rest on the server refusing a second create of the same key (If-None-Match)."""
    fs, base = artifacts.open_fs(root)
    with fs.open(f"{base}/claim", "xb") as handle:
        handle.write(b"first")
    with pytest.raises(OSError) as refused:
        with fs.open(f"{base}/claim", "xb") as handle:
            handle.write(b"second")
    assert artifacts._already_exists(refused.value), refused.value
    assert fs.cat_file(f"{base}/claim") == b"first"


def test_concurrent_allocations_from_several_processes_never_share_a_version(root):
    processes, per_process = 3, 4
    children = [subprocess.Popen([sys.executable, "-c", ALLOCATE, root, f"p{n}", str(per_process)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for n in range(processes)]
    versions = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        versions += [int(v) for v in out.split()]
    assert sorted(versions) == list(range(1, processes * per_process + 1))
    # A run that already claimed a version gets the same one back.
    assert artifacts.allocate_version(root, "iris", "p2-3") in versions
    assert artifacts.list_versions(root, "iris", include_incomplete=True) == sorted(versions)


def test_published_versions_are_readable_and_immutable(root, tmp_path):
    model_file = tmp_path / "model.joblib"
    model_file.write_bytes(b"not really a model")
    version = artifacts.allocate_version(root, "iris", "run-a")
    info = artifacts.publish_model_version(
        root, "iris", version, model_file=model_file, metrics={"accuracy": 0.9}, validated=True, reasons=[],
        profile={"features": {}}, lineage={"run": {"name": "run-a"}})
    assert info["uri"] == f"{root}/models/iris/{version}" and info["validated"]
    assert artifacts.latest_version(root, "iris")["metrics"] == {"accuracy": 0.9}
    assert artifacts.read_json_uri(info["profileUri"]) == {"features": {}}
    with pytest.raises(artifacts.VersionImmutable):
        artifacts.publish_model_version(
            root, "iris", version, model_file=model_file, metrics={"accuracy": 0.1}, validated=True, reasons=[],
            profile={}, lineage={})
    assert artifacts.read_model_version(root, "iris", version)["metrics"] == {"accuracy": 0.9}


@pytest.mark.asyncio
async def test_the_inference_log_is_written_as_objects_and_read_back(root):
    start = datetime.now(UTC).replace(microsecond=0)
    writer = InferenceLogWriter(f"{root}/inference/ml/iris")
    writer.start()
    for batch in range(3):
        for i in range(4):
            n = batch * 4 + i
            writer.append(LogEntry(request_id=f"r{n}", ts=start + timedelta(milliseconds=n), model="iris",
                                   predictor="stable", model_version="1", shadow=False, status=200, latency_ms=1.0,
                                   request={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64",
                                                        "data": [n, n]}]},
                                   response_body=b'{"outputs":[{"name":"p","shape":[1],"datatype":"INT64","data":[0]}]}'))
        await writer.flush()
    await writer.close()
    assert (writer.written, writer.write_errors) == (12, 0)
    frame = read_window(root, "ml", "iris", feature_names=["a", "b"])
    assert list(frame.request_id) == [f"r{n}" for n in range(12)]
    assert list(frame.a) == list(range(12))
    fs, base = artifacts.open_fs(f"{root}/inference/ml/iris")
    assert len(fs.find(base)) == 3, "one object per flushed batch"
    assert len(read_window(root, "ml", "iris", max_rows=5)) == 5
