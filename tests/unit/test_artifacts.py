"""Model registry on fsspec: per namespace, monotonic versions, per-run reuse, concurrency, immutability."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path

import pytest

from mlops_operator.backends import artifacts


@pytest.fixture(params=["memory", "file"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://registry-{uuid.uuid4().hex}"
    return (tmp_path / "artifacts").as_uri()


def publish(root: str, model: str, version: int, tmp_path: Path, validated: bool = True, accuracy: float = 0.9) -> dict:
    model_file = tmp_path / f"m-{uuid.uuid4().hex}.joblib"
    model_file.write_bytes(b"model-bytes")
    return artifacts.publish_model_version(
        root, "ml", model, version, model_file=model_file, metrics={"accuracy": accuracy}, validated=validated,
        reasons=[] if validated else ["accuracy too low"], profile={"features": {}},
        lineage={"run": {"name": f"run-{version}"}, "version": version},
    )


def test_versions_are_monotonic_and_start_at_one(root: str) -> None:
    assert artifacts.list_versions(root, "ml", "iris") == []
    assert [artifacts.allocate_version(root, "ml", "iris") for _ in range(3)] == [1, 2, 3]
    assert artifacts.allocate_version(root, "ml", "wine") == 1  # per model
    assert artifacts.list_versions(root, "ml", "iris", include_incomplete=True) == [1, 2, 3]
    assert artifacts.list_versions(root, "ml", "iris") == []  # none complete yet


def test_run_name_reuses_its_version(root: str) -> None:
    first = artifacts.allocate_version(root, "ml", "iris", run_name="iris-r1")
    other = artifacts.allocate_version(root, "ml", "iris", run_name="iris-r2")
    again = artifacts.allocate_version(root, "ml", "iris", run_name="iris-r1")
    assert (first, other, again) == (1, 2, 1)
    assert artifacts.version_for_run(root, "ml", "iris", "iris-r2") == 2
    assert artifacts.version_for_run(root, "ml", "iris", "nope") is None


def test_publish_read_and_immutability(root: str, tmp_path: Path) -> None:
    version = artifacts.allocate_version(root, "ml", "iris", "r1")
    with pytest.raises(FileNotFoundError):
        artifacts.read_model_version(root, "ml", "iris", version)  # claimed, not complete
    info = publish(root, "iris", version, tmp_path)
    assert info["uri"] == artifacts.model_uri(root, "ml", "iris", 1) == f"{root}/models/ml/iris/1"
    assert info["metrics"] == {"accuracy": 0.9} and info["validated"] and info["validationReasons"] == []
    assert info["profileUri"] == f"{root}/models/ml/iris/1/profile.json" and info["run"] == "run-1"
    assert artifacts.read_json_uri(info["settingsUri"])["parameters"]["uri"] == "./model.joblib"
    assert artifacts.is_complete(root, "ml", "iris", 1) and artifacts.list_versions(root, "ml", "iris") == [1]
    with pytest.raises(artifacts.VersionImmutable):
        publish(root, "iris", version, tmp_path)


def test_latest_version_prefers_validated(root: str, tmp_path: Path) -> None:
    assert artifacts.latest_version(root, "ml", "iris") is None
    for validated in (True, False):
        publish(root, "iris", artifacts.allocate_version(root, "ml", "iris"), tmp_path, validated=validated)
    assert artifacts.latest_version(root, "ml", "iris")["version"] == 1
    assert artifacts.latest_version(root, "ml", "iris", validated_only=False)["version"] == 2
    # An incomplete newer version is not listed.
    artifacts.allocate_version(root, "ml", "iris")
    assert artifacts.list_versions(root, "ml", "iris") == [1, 2]


def test_allocation_skips_numbers_taken_concurrently(root: str) -> None:
    import fsspec

    fs, base = fsspec.core.url_to_fs(root)
    # Another writer claimed 1 and 2 after this caller listed the directory: simulate by claiming
    # ahead of it, then check the caller moves past them.
    for taken in (1, 2):
        fs.makedirs(f"{base}/models/ml/iris/{taken}", exist_ok=True)
        fs.pipe(f"{base}/models/ml/iris/{taken}/_CLAIM", json.dumps({"run": "other"}).encode())
    assert artifacts.allocate_version(root, "ml", "iris") == 3


def _allocate_many(args: tuple[str, int]) -> list[int]:
    root, count = args
    return [artifacts.allocate_version(root, "ml", "iris") for _ in range(count)]


def test_concurrent_processes_never_share_a_version(tmp_path: Path) -> None:
    root = (tmp_path / "artifacts").as_uri()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_allocate_many, [(root, 10)] * 4)
    versions = sorted(v for chunk in results for v in chunk)
    assert versions == list(range(1, 41))
    for chunk in results:
        assert chunk == sorted(chunk)  # each caller sees its versions increase


def test_default_root_and_names(tmp_path: Path) -> None:
    root = artifacts.default_artifact_root(tmp_path)
    assert root == (tmp_path / "artifacts").resolve().as_uri() and root.startswith("file:///")
    assert artifacts.allocate_version(str(tmp_path / "plain"), "ml", "iris") == 1  # a plain path works too
    for bad in ("", "Iris", "../etc", "a/b", "-x"):
        with pytest.raises(ValueError):
            artifacts.model_uri(root, "ml", bad, 1)
    for bad in ("", "ML", "..", "a/b", "-x", "a.b"):
        with pytest.raises(ValueError):
            artifacts.model_uri(root, bad, "iris", 1)


def test_namespaces_have_separate_models_of_the_same_name(root: str, tmp_path: Path) -> None:
    """Two namespaces training a model called iris get their own version sequences and directories;
    neither lists, reads or claims the other's versions."""
    for _ in range(2):
        publish(root, "iris", artifacts.allocate_version(root, "ml", "iris"), tmp_path, accuracy=0.9)
    model_file = tmp_path / "team-b.joblib"
    model_file.write_bytes(b"team-b's model")
    other = artifacts.publish_model_version(
        root, "team-b", "iris", artifacts.allocate_version(root, "team-b", "iris", run_name="run-1"),
        model_file=model_file, metrics={"accuracy": 0.5}, validated=True, reasons=[], profile={"features": {}},
        lineage={"run": {"name": "run-1"}})
    assert artifacts.list_versions(root, "ml", "iris") == [1, 2]
    assert artifacts.list_versions(root, "team-b", "iris") == [1]
    assert other["uri"] == f"{root}/models/team-b/iris/1" != artifacts.model_uri(root, "ml", "iris", 1)
    assert artifacts.read_model_version(root, "ml", "iris", 1)["metrics"] == {"accuracy": 0.9}
    assert artifacts.latest_version(root, "team-b", "iris")["metrics"] == {"accuracy": 0.5}
    assert artifacts.version_for_run(root, "ml", "iris", "run-1") is None  # team-b's run, not ml's
    with pytest.raises(FileNotFoundError):
        artifacts.read_model_version(root, "team-b", "iris", 2)
