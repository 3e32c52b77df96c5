"""Where a ModelDeployment's model comes from (backends/model_source.py), without a cluster."""

from __future__ import annotations

import asyncio
import json

import fsspec
import pytest

from mlops_operator.api.modeldeployment import ModelSource
from mlops_operator.backends import kube, model_source
from mlops_operator.reconcile.modeldeployment import ModelRef


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "models" / "iris" / "3"
    directory.mkdir(parents=True)
    (directory / "model-settings.json").write_text(json.dumps({"name": "iris"}))
    (directory / "model.joblib").write_bytes(b"not really a model")
    (directory / "metrics.json").write_text(json.dumps({"accuracy": 0.97, "note": "ignored"}))
    return directory


def test_an_explicit_uri_is_checked_and_its_metrics_read(model_dir):
    source = ModelSource.model_validate({"uri": model_dir.as_uri() + "/", "version": "3"})
    ref = asyncio.run(model_source.resolve_model(source, "ns"))
    assert ref == ModelRef("3", model_dir.as_uri()) and ref.metrics == {"accuracy": 0.97}


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(parents=True), "holds neither model-settings.json nor model.joblib"),
])
def test_missing_models_are_unavailable(tmp_path, setup, message):
    missing = tmp_path / "gone"
    setup(missing)
    with pytest.raises(model_source.ModelUnavailable, match=message):
        model_source.check_model_uri(missing.as_uri())


def test_from_training_follows_the_latest_validated_model(model_dir, monkeypatch):
    trainings = {"iris": {"status": {"latestValidatedModel": {"version": 3, "uri": model_dir.as_uri(),
                                                                "metrics": {"accuracy": 0.9}}}},
                 "fresh": {"status": {}}}

    async def get_object(plural, namespace, name, *args):
        assert plural == "modeltrainings" and namespace == "ns"
        return trainings.get(name)

    monkeypatch.setattr(kube, "get_object", get_object)
    ref = asyncio.run(model_source.resolve_model(ModelSource(from_training="iris"), "ns"))
    assert ref == ModelRef("3", model_dir.as_uri()) and ref.metrics == {"accuracy": 0.9}
    with pytest.raises(model_source.WaitingForModel, match="has not validated a model yet"):
        asyncio.run(model_source.resolve_model(ModelSource(from_training="fresh"), "ns"))
    with pytest.raises(model_source.WaitingForModel, match="does not exist"):
        asyncio.run(model_source.resolve_model(ModelSource(from_training="other"), "ns"))


def test_local_copies_of_remote_models(tmp_path, model_dir):
    assert model_source.local_model_dir(model_dir.as_uri(), tmp_path / "cache") == model_dir
    fs = fsspec.filesystem("memory")
    fs.pipe("/remote/iris/4/model-settings.json", b"{}")
    fs.pipe("/remote/iris/4/model.joblib", b"bytes")
    copy = model_source.local_model_dir("memory://remote/iris/4", tmp_path / "cache")
    assert (copy / "model.joblib").read_bytes() == b"bytes" and (copy / "model-settings.json").exists()
    fs.rm("/remote/iris/4", recursive=True)  # versions are immutable: the copy is reused
    assert model_source.local_model_dir("memory://remote/iris/4", tmp_path / "cache") == copy
    with pytest.raises(model_source.ModelUnavailable, match="cannot copy"):
        model_source.local_model_dir("memory://remote/iris/5", tmp_path / "cache")
