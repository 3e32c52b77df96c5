"""What a DriftMonitor check reads: profiles, dataset profiles, metrics, labels, the inference log."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from mlops_operator.backends import drift_data


def test_profiles_are_checked_and_model_version_profiles_cached(tmp_path):
    version = tmp_path / "models" / "iris" / "1"
    version.mkdir(parents=True)
    profile = {"formatVersion": 1, "rows": 3, "quantileCount": 2, "features": {}}
    (version / "profile.json").write_text(json.dumps(profile))
    uri = version.as_uri()
    assert drift_data.model_version_profile_uri(uri + "/") == f"{uri}/profile.json"
    assert drift_data.model_version_profile(uri) == profile
    (version / "profile.json").write_text("{}")
    assert drift_data.model_version_profile(uri) == profile, "a complete version never changes: cached"
    with pytest.raises(ValueError, match="not a data profile"):
        drift_data.read_profile(f"{uri}/profile.json")
    with pytest.raises(FileNotFoundError):
        drift_data.read_profile((tmp_path / "missing.json").as_uri())


def test_training_metrics_or_none(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    assert drift_data.read_training_metrics(tmp_path.as_uri()) == {"accuracy": 0.9}
    assert drift_data.read_training_metrics((tmp_path / "nope").as_uri()) is None


def test_dataset_profile_leaves_the_target_out_and_follows_file_changes(tmp_path):
    iris = drift_data.dataset_profile("sklearn://iris", "target")
    assert list(iris["features"]) == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                                      "petal width (cm)"]
    assert iris["rows"] == 150
    path = tmp_path / "ref.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "colour": ["red", "blue", "red"], "y": [0, 1, 0]}).to_csv(path, index=False)
    first = drift_data.dataset_profile(path.as_uri(), "y")
    assert {name: f["kind"] for name, f in first["features"].items()} == {"x": "numeric", "colour": "categorical"}
    time.sleep(0.01)
    pd.DataFrame({"x": [5.0, 6.0], "colour": ["red", "red"], "y": [0, 1]}).to_csv(path, index=False)
    assert drift_data.dataset_profile(path.as_uri(), "y")["rows"] == 2, "a rewritten file is read again"
    with pytest.raises(ValueError, match="no target column"):
        drift_data.dataset_profile(path.as_uri(), "label")


def test_labels_from_a_file_or_a_directory(tmp_path):
    pd.DataFrame({"id": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "part-1.csv", index=False)
    pd.DataFrame({"id": ["c"], "label": [2], "row": [0]}).to_parquet(tmp_path / "part-2.parquet")
    (tmp_path / "README.txt").write_text("not labels")
    labels = drift_data.read_labels(tmp_path.as_uri())
    assert labels["id"].tolist() == ["a", "b", "c"] and labels["label"].tolist() == [0, 1, 2]
    assert drift_data.read_labels((tmp_path / "part-1.csv").as_uri())["id"].tolist() == ["a", "b"]
    pd.DataFrame({"request": ["a"], "label": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="lack the column"):
        drift_data.read_labels((tmp_path / "bad.csv").as_uri())
    with pytest.raises(FileNotFoundError):
        drift_data.read_labels((tmp_path / "none.csv").as_uri())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CSV or Parquet"):
        drift_data.read_labels((tmp_path / "empty").as_uri())


def test_inference_log_exists_only_once_written(tmp_path):
    assert not drift_data.inference_log_exists(tmp_path.as_uri(), "ml", "iris")
    (tmp_path / "inference" / "ml" / "iris").mkdir(parents=True)
    assert drift_data.inference_log_exists(tmp_path.as_uri(), "ml", "iris")
    window = drift_data.read_inference_window(tmp_path.as_uri(), "ml", "iris", max_rows=10, since=None,
                                              feature_names=["a"])
    assert window.empty


def test_model_input_features_come_from_lineage_in_training_order(tmp_path):
    from mlops_operator.backends import drift_data

    version = tmp_path / "models" / "iris" / "1"
    version.mkdir(parents=True)
    order = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    (version / "lineage.json").write_text(json.dumps({"features": order}))
    assert drift_data.model_input_features(version.as_uri()) == tuple(order)
    assert drift_data.model_input_features((tmp_path / "missing").as_uri()) is None
