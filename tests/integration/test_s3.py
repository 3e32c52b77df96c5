"""Object storage through the S3 API, against a real S3 server (MinIO, see tests/s3_support.py).

The model registry (immutable versions, race-free allocation across processes), the inference
log (written as objects, read back by the DriftMonitor's reader), and the local loop with
``MLOPS_ARTIFACT_ROOT=s3://…``: training publishes to S3, the local backend serves from S3, the
router's inference log lands on S3 and the DriftMonitor reads it there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kube_support import load_demo
from mlops_operator.backends import artifacts
from mlops_operator.backends.serving_local.inference_log import InferenceLogWriter, LogEntry, read_window

pytestmark = pytest.mark.slow

ALLOCATE = ("import sys; from mlops_operator.backends import artifacts; "
            "print(' '.join(str(artifacts.allocate_version(sys.argv[1], 'ml', 'iris', f'{sys.argv[2]}-{i}')) "
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
    assert artifacts.allocate_version(root, "ml", "iris", "p2-3") in versions
    assert artifacts.list_versions(root, "ml", "iris", include_incomplete=True) == sorted(versions)


def test_published_versions_are_readable_and_immutable(root, tmp_path):
    model_file = tmp_path / "model.joblib"
    model_file.write_bytes(b"not really a model")
    version = artifacts.allocate_version(root, "ml", "iris", "run-a")
    info = artifacts.publish_model_version(
        root, "ml", "iris", version, model_file=model_file, metrics={"accuracy": 0.9}, validated=True, reasons=[],
        profile={"features": {}}, lineage={"run": {"name": "run-a"}})
    assert info["uri"] == f"{root}/models/ml/iris/{version}" and info["validated"]
    assert artifacts.latest_version(root, "ml", "iris")["metrics"] == {"accuracy": 0.9}
    assert artifacts.read_json_uri(info["profileUri"]) == {"features": {}}
    with pytest.raises(artifacts.VersionImmutable):
        artifacts.publish_model_version(
            root, "ml", "iris", version, model_file=model_file, metrics={"accuracy": 0.1}, validated=True, reasons=[],
            profile={}, lineage={})
    assert artifacts.read_model_version(root, "ml", "iris", version)["metrics"] == {"accuracy": 0.9}


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


# ---------------------------------------------------------------- the local loop on S3


def run_operator(kubeconfig, namespace, objects, data_dir, env):
    """The operator as a real process (started with a generous deadline: its imports take long on a
    busy machine); afterwards the test's objects are deleted while it still runs."""
    from kube_support import OperatorProcess, wait_until

    process = OperatorProcess(kubeconfig, namespace, data_dir, env=env).start(timeout=240)
    yield process
    if process.process is not None and process.process.poll() is None:
        remaining = objects.delete_all()
        wait_until(lambda: not objects.list_all(), timeout=180, what=f"deletion of {remaining}")
    process.stop()


@pytest.fixture
def s3_operator(s3_env, kubeconfig, namespace, crds, objects, tmp_path):
    """The operator with ``MLOPS_ARTIFACT_ROOT=s3://…`` and the S3 server's credentials in its
    environment (as the chart's operator.s3 values give them)."""
    root = f"s3://{s3_env.bucket}/{namespace}"
    for process in run_operator(kubeconfig, namespace, objects, tmp_path / "operator",
                                {**s3_env.env(), "MLOPS_ARTIFACT_ROOT": root}):
        process.artifact_root = root
        yield process


@pytest.fixture
def plain_operator(s3_server, kubeconfig, namespace, crds, objects, tmp_path):
    """The operator with a local artifact root and no S3 credentials of its own."""
    yield from run_operator(kubeconfig, namespace, objects, tmp_path / "operator", {})


@pytest.mark.cluster
@pytest.mark.timeout(1200)  # training, serving and two drift checks; minutes on a busy 2-core machine
def test_the_loop_with_an_s3_artifact_root(s3_operator, s3_env, objects, kubeconfig, kube_api, namespace, tmp_path):
    """ModelTraining reads its dataset from S3 through a Secret (spec.dataset.credentialsSecretRef, as a
    tenant does) and publishes version 1 to S3 → the local backend serves it → the router's inference log
    lands on S3 → the DriftMonitor reads it there: no drift, then drift. Afterwards no value of the Secret
    is in any status, event or the operator's log (tests/secret_scan.py)."""
    import fsspec
    from kubernetes import client
    from sklearn.datasets import load_iris

    from secret_scan import assert_no_secrets

    demo = load_demo()
    cluster = demo.Cluster(kubeconfig, namespace)
    root = s3_operator.artifact_root
    dataset = f"s3://{s3_env.bucket}/datasets/{namespace}/iris.csv"
    with fsspec.open(dataset, "wt", **s3_env.storage_options()) as handle:
        load_iris(as_frame=True).frame.to_csv(handle, index=False)
    credentials = {"AWS_ACCESS_KEY_ID": s3_env.access_key, "AWS_SECRET_ACCESS_KEY": s3_env.secret_key}
    client.CoreV1Api(kube_api).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="dataset-s3"),
        string_data={**credentials, "AWS_ENDPOINT_URL": s3_env.endpoint_url, "AWS_REGION": "us-east-1"}))
    training = demo.example("training.yaml")
    training["spec"]["dataset"] = {"uri": dataset, "target": "target", "credentialsSecretRef": {"name": "dataset-s3"}}
    cluster.apply(training)
    mt = objects.wait("ModelTraining", "iris",
                      lambda o: (o.get("status", {}).get("latestValidatedModel") or {}).get("version") == 1,
                      timeout=480)
    assert mt["status"]["latestValidatedModel"]["uri"] == f"{root}/models/{namespace}/iris/1"
    assert artifacts.read_model_version(root, namespace, "iris", 1)["validated"]

    deployment = demo.example("deployment.yaml")
    deployment["spec"]["rollout"] = {"strategy": "direct"}
    cluster.apply(deployment)
    md = objects.wait("ModelDeployment", "iris",
                      lambda o: o.get("status", {}).get("phase") == "Ready" and o["status"].get("endpoint"),
                      timeout=180)
    traffic = demo.Traffic(md["status"]["endpoint"], "iris", tmp_path / "labels")
    traffic.burst(200)
    assert traffic.failed == 0

    monitor = demo.example("driftmonitor.yaml")
    monitor["spec"].pop("onDrift")
    monitor["spec"].pop("performance", None)  # data drift is enough here; labels are test_driftmonitor's
    monitor["spec"]["interval"] = "5s"
    cluster.apply(monitor)
    dm = objects.wait("DriftMonitor", "iris", lambda o: o.get("status", {}).get("phase") == "NoDrift", timeout=120)
    assert dm["status"]["sampleSize"] >= 100
    fs, base = artifacts.open_fs(f"{root}/inference/{namespace}/iris")
    logged = fs.find(base)
    assert logged and all(".jsonl" in path for path in logged), logged
    assert not (s3_operator.data_dir / "artifacts").exists(), "nothing is written under the data dir"

    traffic.burst(200, shift=2.0)
    dm = objects.wait("DriftMonitor", "iris",
                      lambda o: any(c["type"] == "DriftDetected" and c["status"] == "True"
                                    for c in o.get("status", {}).get("conditions", [])), timeout=120)
    assert traffic.failed == 0
    lineage = artifacts.read_model_version(root, namespace, "iris", 1)["lineage"]
    assert lineage["dataset"]["uri"] == dataset  # read with the Secret's keys (here also the operator's own)
    # The endpoint and region are configuration, not secrets: the keys are what must go nowhere.
    assert_no_secrets(kube_api, namespace, credentials.values(), logs={"operator": s3_operator.log_path})


@pytest.mark.cluster
def test_a_dataset_is_read_with_the_referenced_secret_whose_value_goes_nowhere(
        s3_server, plain_operator, objects, kube_api, namespace):
    """The operator has no S3 credentials of its own here: training can only read the dataset
    through spec.dataset.credentialsSecretRef. Afterwards no secret value is in the status, the
    events, the operator's log or the run's files."""
    import fsspec
    from kubernetes import client
    from sklearn.datasets import load_iris

    assert "AWS_SECRET_ACCESS_KEY" not in plain_operator.env
    dataset = f"s3://{s3_server.bucket}/datasets/{namespace}/iris.csv"
    with fsspec.open(dataset, "wt", **s3_server.storage_options()) as handle:
        load_iris(as_frame=True).frame.to_csv(handle, index=False)
    client.CoreV1Api(kube_api).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="dataset-s3"),
        string_data={"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                     "AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_REGION": "us-east-1"}))
    objects.create({"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining", "metadata": {"name": "iris"},
                    "spec": {"model": "iris", "dataset": {"uri": dataset, "target": "target",
                                                          "credentialsSecretRef": {"name": "dataset-s3"}},
                             "training": {"estimator": "LogisticRegression", "parameters": {"max_iter": 300}}}})
    mt = objects.wait("ModelTraining", "iris",
                      lambda o: (o.get("status", {}).get("latestRun") or {}).get("state") in ("Succeeded", "Failed"),
                      timeout=480)
    assert mt["status"]["latestRun"]["state"] == "Succeeded", mt["status"]["latestRun"]

    from secret_scan import assert_no_secrets, scan

    secrets = [s3_server.access_key, s3_server.secret_key]
    assert_no_secrets(kube_api, namespace, secrets, logs={"operator": plain_operator.log_path})
    places = {"spec": json.dumps(mt["spec"])}
    run_dir = plain_operator.data_dir / "runs" / namespace
    for path in run_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            places[str(path.relative_to(run_dir))] = path.read_text(errors="replace")
    assert any(name.endswith("request.json") for name in places) and any(n.endswith("runner.log") for n in places)
    assert not scan(places, secrets), f"the Secret's value appears in {scan(places, secrets)}"
