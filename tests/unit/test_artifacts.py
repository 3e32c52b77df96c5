"""Model registry on fsspec: monotonic versions, per-run reuse, concurrency, immutability."""

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
        root, model, version, model_file=model_file, metrics={"accuracy": accuracy}, validated=validated,
        reasons=[] if validated else ["accuracy too low"], profile={"features": {}},
        lineage={"run": {"name": f"run-{version}"}, "version": version},
    )


def test_versions_are_monotonic_and_start_at_one(root: str) -> None:
    assert artifacts.list_versions(root, "iris") == []
    assert [artifacts.allocate_version(root, "iris") for _ in range(3)] == [1, 2, 3]
    assert artifacts.allocate_version(root, "wine") == 1  # per model
    assert artifacts.list_versions(root, "iris", include_incomplete=True) == [1, 2, 3]
    assert artifacts.list_versions(root, "iris") == []  # none complete yet


def test_run_name_reuses_its_version(root: str) -> None:
    first = artifacts.allocate_version(root, "iris", run_name="iris-r1")
    other = artifacts.allocate_version(root, "iris", run_name="iris-r2")
    again = artifacts.allocate_version(root, "iris", run_name="iris-r1")
    assert (first, other, again) == (1, 2, 1)
    assert artifacts.version_for_run(root, "iris", "iris-r2") == 2
    assert artifacts.version_for_run(root, "iris", "nope") is None


def test_publish_read_and_immutability(root: str, tmp_path: Path) -> None:
    version = artifacts.allocate_version(root, "iris", "r1")
    with pytest.raises(FileNotFoundError):
        artifacts.read_model_version(root, "iris", version)  # claimed, not complete
    info = publish(root, "iris", version, tmp_path)
    assert info["uri"] == artifacts.model_uri(root, "iris", 1) == f"{root}/models/iris/1"
    assert info["metrics"] == {"accuracy": 0.9} and info["validated"] and info["validationReasons"] == []
    assert info["profileUri"] == f"{root}/models/iris/1/profile.json" and info["run"] == "run-1"
    assert artifacts.read_json_uri(info["settingsUri"])["parameters"]["uri"] == "./model.joblib"
    assert artifacts.is_complete(root, "iris", 1) and artifacts.list_versions(root, "iris") == [1]
    with pytest.raises(artifacts.VersionImmutable):
        publish(root, "iris", version, tmp_path)


def test_latest_version_prefers_validated(root: str, tmp_path: Path) -> None:
    assert artifacts.latest_version(root, "iris") is None
    for validated in (True, False):
        publish(root, "iris", artifacts.allocate_version(root, "iris"), tmp_path, validated=validated)
    assert artifacts.latest_version(root, "iris")["version"] == 1
    assert artifacts.latest_version(root, "iris", validated_only=False)["version"] == 2
    # An incomplete newer version is not listed.
    artifacts.allocate_version(root, "iris")
    assert artifacts.list_versions(root, "iris") == [1, 2]


def test_allocation_skips_numbers_taken_concurrently(root: str) -> None:
    import fsspec

    fs, base = fsspec.core.url_to_fs(root)
    # Another writer claimed 1 and 2 after this caller listed the directory: simulate by claiming
    # ahead of it, then check the caller moves past them.
    for taken in (1, 2):
        fs.makedirs(f"{base}/models/iris/{taken}", exist_ok=True)
        fs.pipe(f"{base}/models/iris/{taken}/_CLAIM", json.dumps({"run": "other"}).encode())
    assert artifacts.allocate_version(root, "iris") == 3


def _allocate_many(args: tuple[str, int]) -> list[int]:
    root, count = args
    return [artifacts.allocate_version(root, "iris") for _ in range(count)]


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
    assert artifacts.allocate_version(str(tmp_path / "plain"), "iris") == 1  # a plain path works too
    for bad in ("", "Iris", "../etc", "a/b", "-x"):
        with pytest.raises(ValueError):
            artifacts.model_uri(root, bad, 1)
