"""The tabular-training steps as plain functions: sklearn://iris, a tiny CSV, failures, the gate, export."""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import joblib
import numpy as np
import pandas as pd
import pytest

from mlops_operator.backends import artifacts, datasets
from mlops_operator.components import errors, evaluate, export, extract, gate, split, train, validate_data


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    """60 rows: numeric, integer, categorical (with gaps) features and a yes/no label."""
    rng = np.random.default_rng(0)
    n = 60
    age = rng.integers(18, 80, n)
    income = rng.normal(50_000, 15_000, n).round(2)
    income[[3, 17]] = np.nan
    city = rng.choice(["berlin", "paris", "rome"], n).astype(object)
    city[5] = None
    label = np.where(age + rng.normal(0, 5, n) > 45, "yes", "no")
    path = tmp_path / "customers.csv"
    pd.DataFrame({"age": age, "income": income, "city": city, "label": label}).to_csv(path, index=False)
    return path


@pytest.fixture
def error_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "step-error.json"
    monkeypatch.setenv(errors.STEP_ERROR_FILE_ENV, str(path))
    return path


def test_extract_sklearn_iris_is_deterministic(tmp_path: Path) -> None:
    first = extract.run_extract("sklearn://iris", "", str(tmp_path / "a.parquet"))
    second = extract.run_extract("sklearn://iris", "auto", str(tmp_path / "b.parquet"))
    assert first["rows"] == 150 and first["digest"] == second["digest"]
    frame = pd.read_parquet(tmp_path / "a.parquet")
    assert "target" in frame.columns and frame.shape == (150, 5)
    # Different bundled datasets have different digests.
    assert datasets.load_dataset("sklearn://wine")[1] != first["digest"]


@pytest.mark.parametrize("name", datasets.SKLEARN_DATASETS)
def test_extract_every_bundled_dataset_loads_offline(name: str) -> None:
    frame, digest = datasets.load_dataset(f"sklearn://{name}")
    assert len(frame) > 100 and "target" in frame.columns and len(digest) == 64


def test_extract_csv_by_path_and_file_uri_digests_source_bytes(tiny_csv: Path, tmp_path: Path) -> None:
    expected = hashlib.sha256(tiny_csv.read_bytes()).hexdigest()
    by_path = extract.run_extract(str(tiny_csv), "", str(tmp_path / "p.parquet"))
    by_uri = extract.run_extract(tiny_csv.as_uri(), "csv", str(tmp_path / "u.parquet"))
    assert by_path["digest"] == by_uri["digest"] == expected
    assert by_path["rows"] == 60
    assert pd.read_parquet(tmp_path / "p.parquet")["city"].isna().sum() == 1


def test_extract_parquet_gzip_csv_and_memory_uri(tiny_csv: Path, tmp_path: Path) -> None:
    import fsspec

    frame = pd.read_csv(tiny_csv)
    frame.to_parquet(tmp_path / "data.pq", index=False)
    assert datasets.load_dataset(str(tmp_path / "data.pq"))[0].shape == frame.shape
    (tmp_path / "data.csv.gz").write_bytes(gzip.compress(tiny_csv.read_bytes()))
    assert datasets.load_dataset(str(tmp_path / "data.csv.gz"))[0].shape == frame.shape
    uri = f"memory://datasets-{uuid.uuid4().hex}/data.bin"
    with fsspec.open(uri, "wb") as handle:
        handle.write(tiny_csv.read_bytes())
    assert datasets.load_dataset(uri, "csv")[0].shape == frame.shape


def test_extract_missing_dataset_is_dataset_unavailable(tmp_path: Path, error_file: Path) -> None:
    with pytest.raises(errors.DatasetUnavailable) as caught:
        extract.run_extract(str(tmp_path / "nope.csv"), "", str(tmp_path / "out.parquet"))
    assert str(caught.value).startswith("DatasetUnavailable: ")
    record = json.loads(error_file.read_text())
    assert record["reason"] == "DatasetUnavailable" and record["step"] == "extract"
    assert "nope.csv" in record["message"]


def test_extract_unreadable_dataset_is_dataset_unavailable(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(errors.DatasetUnavailable, match="not readable as parquet"):
        datasets.load_dataset(str(tmp_path / "broken.parquet"))


@pytest.mark.parametrize("uri, fmt", [("sklearn://california_housing", ""), ("/data/table.xlsx", ""), ("/d/x.csv", "feather")])
def test_extract_bad_names_and_formats_are_invalid_spec(uri: str, fmt: str) -> None:
    with pytest.raises(errors.InvalidSpec):
        datasets.load_dataset(uri, fmt)


# --- validate data ---------------------------------------------------------------------------

IRIS_CHECKS = {
    "minRows": 100,
    "maxMissingFraction": 0.0,
    "columns": [
        {"name": "sepal length (cm)", "type": "numeric", "min": 0, "max": 10},
        {"name": "target", "type": "integer", "allowedValues": ["0", "1", "2"]},
    ],
}


def iris_parquet(tmp_path: Path) -> str:
    path = str(tmp_path / "iris.parquet")
    extract.run_extract("sklearn://iris", "", path)
    return path


def test_validate_data_passes_on_iris(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = validate_data.run_validate_data(iris_parquet(tmp_path), "target", IRIS_CHECKS, [], str(report_path))
    assert result["passed"] and result["failed"] == 0
    report = json.loads(report_path.read_text())
    assert report["passed"] and all(r["passed"] for r in report["results"])


def test_validate_data_lists_every_failing_check(tmp_path: Path, tiny_csv: Path, error_file: Path) -> None:
    data = str(tmp_path / "tiny.parquet")
    extract.run_extract(str(tiny_csv), "", data)
    checks = {
        "min_rows": 1000,
        "max_missing_fraction": 0.01,
        "columns": {
            "age": {"type": "integer", "min": 30, "max": 60},
            "city": {"allowed_values": ["berlin", "paris"], "type": "categorical"},
            "income": {"type": "categorical"},
            "zip": {},
        },
    }
    with pytest.raises(errors.DataValidationFailed) as caught:
        validate_data.run_validate_data(data, "churned", checks, ["age"], str(tmp_path / "report.json"))
    message = str(caught.value)
    assert message.startswith("DataValidationFailed: ")
    for expected in ("target column 'churned' missing", "rows 60 < min_rows 1000", "column 'income' missing fraction",
                     "column 'age'", "values below min 30", "values above max 60", "['rome']",
                     "column 'zip' missing", "is not categorical"):
        assert expected in message, expected
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["passed"] and report["failed"] == 8
    assert json.loads(error_file.read_text())["reason"] == "DataValidationFailed"


def test_column_types() -> None:
    assert validate_data.column_has_type(pd.Series([1.0, 2.0, None]), "integer")
    assert not validate_data.column_has_type(pd.Series([1.5, 2.0]), "integer")
    assert validate_data.column_has_type(pd.Series([True, False]), "boolean")
    assert not validate_data.column_has_type(pd.Series([True, False]), "numeric")
    assert validate_data.column_has_type(pd.Series(["a", "b"]), "string")
    with pytest.raises(errors.InvalidSpec):
        validate_data.column_has_type(pd.Series([1]), "complex")


# --- split ----------------------------------------------------------------------------------

def test_split_is_seeded_and_stratified(tmp_path: Path) -> None:
    frame, _ = datasets.load_dataset("sklearn://iris")
    train_a, test_a, schema = split.split_dataset(frame, "target", "auto", 0.2, 7)
    train_b, test_b, _ = split.split_dataset(frame, "target", "auto", 0.2, 7)
    _, test_c, _ = split.split_dataset(frame, "target", "auto", 0.2, 8)
    pd.testing.assert_frame_equal(test_a, test_b)
    assert not test_a.equals(test_c)
    assert schema["task"] == "classification" and schema["classes"] == [0, 1, 2]
    assert len(test_a) == 30 and test_a["target"].value_counts().tolist() == [10, 10, 10]
    assert schema["numeric"] == schema["features"] and schema["categorical"] == []


def test_split_infers_regression_and_drops_unlabelled() -> None:
    frame, _ = datasets.load_dataset("sklearn://diabetes")
    frame.loc[:9, "target"] = np.nan
    train_, test_, schema = split.split_dataset(frame, "target", "auto", 0.25, 0)
    assert schema["task"] == "regression"
    assert len(train_) + len(test_) == len(frame) - 10 and schema["rows"]["dropped_unlabelled"] == 10


def test_split_task_from_estimator_and_feature_subset(tiny_csv: Path) -> None:
    frame = pd.read_csv(tiny_csv)
    _, _, schema = split.split_dataset(frame, "age", "auto", 0.25, 0, features=["income", "city"],
                                       estimator="GradientBoostingRegressor")
    assert schema["task"] == "regression" and schema["features"] == ["income", "city"]
    assert schema["categorical"] == ["city"]
    with pytest.raises(errors.InvalidSpec):
        split.split_dataset(frame, "label", "auto", 1.5, 0)
    with pytest.raises(errors.InvalidSpec):
        split.split_dataset(frame, "label", "clustering", 0.25, 0)
    with pytest.raises(errors.InvalidSpec, match="not in the dataset"):
        split.split_dataset(frame, "label", "auto", 0.25, 0, features=["height"])


# --- train + evaluate -------------------------------------------------------------------------

def fit_iris(tmp_path: Path, estimator: str = "", params: object = None) -> tuple[Path, Path, dict]:
    frame, _ = datasets.load_dataset("sklearn://iris")
    train_, test_, schema = split.split_dataset(frame, "target", "auto", 0.25, 42)
    train_.to_parquet(tmp_path / "train.parquet")
    test_.to_parquet(tmp_path / "test.parquet")
    model_path = tmp_path / "model.joblib"
    train.run_train(str(tmp_path / "train.parquet"), schema, estimator, params, 42, str(model_path))
    return model_path, tmp_path / "test.parquet", schema


# MLServer sends plain arrays to a model fitted on a DataFrame; sklearn warns, once.
@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_train_and_evaluate_iris(tmp_path: Path) -> None:
    model_path, test_path, schema = fit_iris(tmp_path, "LogisticRegression", '{"C": 1, "max_iter": 500}')
    scores = evaluate.run_evaluate(str(model_path), str(test_path), schema, str(tmp_path / "metrics.json"))
    assert set(scores) == {"accuracy", "f1", "rocAuc"}
    assert scores["accuracy"] > 0.85 and scores["rocAuc"] > 0.95
    assert json.loads((tmp_path / "metrics.json").read_text()) == scores
    model = joblib.load(model_path)
    rows = pd.read_parquet(test_path)[schema["features"]]
    # The model takes a DataFrame or a plain array with the features in order (MLServer sends arrays).
    assert (model.predict(rows) == model.predict(rows.to_numpy())).all()


def test_train_seeds_the_estimator(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, test_path, schema = fit_iris(tmp_path / "a")
    b, _, _ = fit_iris(tmp_path / "b")
    rows = pd.read_parquet(test_path)[schema["features"]]
    assert (joblib.load(a).predict_proba(rows) == joblib.load(b).predict_proba(rows)).all()
    assert joblib.load(a).named_steps["estimator"].random_state == 42


def test_train_handles_categorical_csv(tmp_path: Path, tiny_csv: Path) -> None:
    train_, test_, schema = split.split_dataset(pd.read_csv(tiny_csv), "label", "auto", 0.25, 1)
    model, info = train.train_model(train_, schema, "RandomForestClassifier", {"n_estimators": 20}, 1)
    assert info["params"] == {"n_estimators": 20, "random_state": 1}
    scores = evaluate.evaluate_model(model, test_, schema)
    assert 0 <= scores["accuracy"] <= 1 and "rocAuc" in scores
    unseen = pd.DataFrame({"age": [30], "income": [None], "city": ["tokyo"]})
    assert model.predict(unseen)[0] in {"yes", "no"}


def test_regression_metrics(tmp_path: Path) -> None:
    frame, _ = datasets.load_dataset("sklearn://diabetes")
    train_, test_, schema = split.split_dataset(frame, "target", "regression", 0.25, 0)
    model, _ = train.train_model(train_, schema, "Ridge", {}, 0)
    scores = evaluate.evaluate_model(model, test_, schema)
    assert set(scores) == {"rmse", "mae", "r2"} and 30 < scores["rmse"] < 80 and scores["r2"] > 0.3


@pytest.mark.parametrize("name, params, match", [
    ("RandomForestClassifer", {}, "did you mean RandomForestClassifier"),
    ("RandomForestClassifier", {"n_trees": 3}, r"does not take parameters \['n_trees'\]"),
    ("RandomForestClassifier", {"max_depth": -3}, "max_depth"),
    ("GradientBoostingRegressor", {}, "is for regression, but the task is classification"),
    ("XGBClassifier", {}, "needs the 'xgboost' package"),
    ("LGBMClassifier", {}, "needs the 'lightgbm' package"),
    ("os.system", {}, "dotted names must be inside"),
    ("sklearn.ensemble.NoSuchForest", {}, "has no 'NoSuchForest'"),
])
def test_train_bad_estimator_is_invalid_spec(tmp_path: Path, error_file: Path, name: str, params: dict, match: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=match) as caught:
        fit_iris(tmp_path, name, params)
    assert str(caught.value).startswith("InvalidSpec: ")
    assert json.loads(error_file.read_text())["reason"] == "InvalidSpec"


def test_estimator_params_json_keeps_int_versus_float() -> None:
    assert train.parse_params('{"max_features": 1.0, "n_estimators": 5}') == {"max_features": 1.0, "n_estimators": 5}
    assert isinstance(train.parse_params('{"n_estimators": 5}')["n_estimators"], int)
    assert train.parse_params("") == {} and train.parse_params({"a": 1}) == {"a": 1}
    with pytest.raises(errors.InvalidSpec):
        train.parse_params("{nope")
    with pytest.raises(errors.InvalidSpec):
        train.parse_params("[1, 2]")


def test_dotted_estimator_name(tmp_path: Path) -> None:
    model_path, _, _ = fit_iris(tmp_path, "sklearn.tree.DecisionTreeClassifier", {"max_depth": 3})
    assert type(joblib.load(model_path).named_steps["estimator"]).__name__ == "DecisionTreeClassifier"


# --- gate -------------------------------------------------------------------------------------

def test_gate_passes_when_thresholds_met() -> None:
    assert gate.evaluate_gate({"accuracy": 0.95, "f1": 0.9}, {"accuracy": {"min": 0.9}, "f1": 0.85}) == (True, [])
    assert gate.evaluate_gate({"rmse": 50.0}, {"rmse": {"max": 60}}) == (True, [])
    assert gate.evaluate_gate({"accuracy": 0.5}) == (True, [])


def test_gate_fails_with_reasons() -> None:
    validated, reasons = gate.evaluate_gate(
        {"accuracy": 0.85, "rmse": 70.0}, {"accuracy": {"min": 0.9}, "rmse": 60, "rocAuc": {"min": 0.8}}
    )
    assert not validated
    assert reasons == [
        "accuracy 0.85 is below the minimum 0.9",
        "rmse 70 is above the maximum 60",
        "rocAuc was not computed for this model, so its threshold cannot be met",
    ]


def test_gate_regression_against_baseline() -> None:
    baseline = {"accuracy": 0.95, "rmse": 50.0, "r2": 0.5}
    # Within the allowed regression: absolute for scores, relative (of the baseline) for errors.
    assert gate.evaluate_gate({"accuracy": 0.94, "rmse": 50.9, "r2": 0.49}, None, baseline, 0.02)[0]
    validated, reasons = gate.evaluate_gate({"accuracy": 0.90, "rmse": 51.5, "r2": 0.6}, None, baseline, 0.02)
    assert not validated and len(reasons) == 2
    assert "accuracy 0.9 is worse than the validated model's 0.95 by more than 0.02" in reasons
    assert "rmse 51.5 is worse than the validated model's 50 by more than 2%" in reasons
    # Per metric, "*" for the rest; better-than-baseline always passes.
    assert gate.evaluate_gate({"accuracy": 0.90, "rmse": 45.0}, None, baseline, {"accuracy": 0.1, "*": 0})[0]
    assert not gate.evaluate_gate({"accuracy": 0.90}, None, baseline, {"*": 0.01})[0]
    # No max_regression: the baseline is not compared.
    assert gate.evaluate_gate({"accuracy": 0.5}, None, baseline, None)[0]
    assert gate.evaluate_gate({"accuracy": 0.5}, None, baseline, {})[0]


def test_gate_step_never_raises_on_failure_and_rejects_bad_thresholds() -> None:
    assert gate.run_gate({"accuracy": 0.1}, {"accuracy": {"min": 0.9}}, {}, {}) == {
        "validated": False, "reasons": ["accuracy 0.1 is below the minimum 0.9"]}
    with pytest.raises(errors.InvalidSpec):
        gate.run_gate({"accuracy": 0.1}, {"accuracy": "high"}, {}, {})


# --- export -----------------------------------------------------------------------------------

def run_export(tmp_path: Path, root: str, run_name: str, validated: bool = True) -> dict:
    model_path, test_path, schema = fit_iris(tmp_path)
    scores = evaluate.run_evaluate(str(model_path), str(test_path), schema)
    return export.run_export(
        model_path=str(model_path), train_path=str(tmp_path / "train.parquet"), schema=schema,
        metrics=scores, validated=validated, reasons=[] if validated else ["accuracy too low"],
        artifact_root=root, model_namespace="ml", model_name="iris", run_name=run_name, run_id="job-1",
        dataset={"uri": "sklearn://iris", "format": "auto", "digest": "abc", "rows": 150},
        estimator={"name": "RandomForestClassifier", "params": {"random_state": 42}},
        split={"testSize": 0.25, "seed": 42}, pipeline_digest="d1g", started_at="2026-01-01T00:00:00Z",
    )


def test_export_publishes_a_complete_version(tmp_path: Path) -> None:
    from mlserver.settings import ModelSettings

    root = (tmp_path / "artifacts").as_uri()
    result = run_export(tmp_path, root, "run-a")
    assert result == {"model_version": 1, "model_uri": f"{root}/models/ml/iris/1",
                      "profile_uri": f"{root}/models/ml/iris/1/profile.json", "validated": True, "reused": False}
    version_dir = tmp_path / "artifacts" / "models" / "ml" / "iris" / "1"
    assert {p.name for p in version_dir.iterdir()} >= {
        "model.joblib", "model-settings.json", "metrics.json", "validation.json", "profile.json", "lineage.json", "_COMPLETE"}
    settings = json.loads((version_dir / "model-settings.json").read_text())
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert settings["parameters"] == {"uri": "./model.joblib", "version": "1"}
    ModelSettings.model_validate(settings)  # MLServer accepts it
    lineage = json.loads((version_dir / "lineage.json").read_text())
    assert lineage["dataset"]["digest"] == "abc" and lineage["pipeline"] == {"name": "tabular-training", "digest": "d1g"}
    assert lineage["operatorVersion"] == "0.1.0" and lineage["run"] == {"name": "run-a", "id": "job-1"}
    assert lineage["started"] == "2026-01-01T00:00:00Z" and lineage["finished"]
    profile = json.loads((version_dir / "profile.json").read_text())
    assert set(profile["features"]) == {"sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"}


def test_export_reuses_the_version_of_the_same_run(tmp_path: Path) -> None:
    root = f"memory://registry-{uuid.uuid4().hex}"
    first = run_export(tmp_path, root, "run-a", validated=False)
    again = run_export(tmp_path, root, "run-a", validated=True)  # a re-executed export
    other = run_export(tmp_path, root, "run-b")
    assert first["model_version"] == again["model_version"] == 1 and again["reused"]
    assert again["validated"] is False  # the complete version is not rewritten
    assert other["model_version"] == 2
    info = artifacts.read_model_version(root, "ml", "iris", 1)
    assert info["validated"] is False and info["validationReasons"] == ["accuracy too low"]


# --- stages: the two tasks of the pipeline ----------------------------------------------------

def prepare_iris(tmp_path: Path, **overrides: object) -> dict:
    from mlops_operator.components import stages

    arguments = dict(dataset_uri="sklearn://iris", dataset_format="auto", target="target", features=[],
                     production_data={}, checks=IRIS_CHECKS, task="auto", test_size=0.25, seed=42,
                     estimator="RandomForestClassifier", mix={})
    arguments.update(overrides)
    files = {name: SimpleNamespace(path=str(tmp_path / name)) for name in
             ("dataset", "production", "report", "production_valid", "train", "test")}
    return stages.run_prepare_data({**arguments, **files})


def test_stages_run_the_seven_steps_with_their_files_and_lineage(tmp_path: Path) -> None:
    from mlops_operator.components import stages

    prepared = prepare_iris(tmp_path)
    assert prepared["rows"] == 150 and prepared["schema"]["task"] == "classification"
    assert prepared["sources"] == [{"name": "base", "uri": "sklearn://iris", "rows": 150, "digest": prepared["digest"]}]
    assert json.loads((tmp_path / "report").read_text())["passed"] is True  # the validation report is kept
    assert len(pd.read_parquet(tmp_path / "train")) + len(pd.read_parquet(tmp_path / "test")) == 150
    root = (tmp_path / "artifacts").as_uri()
    files = {name: SimpleNamespace(path=str(tmp_path / name)) for name in ("train", "test", "model")}
    trained = stages.run_train_model(dict(
        **files, schema=prepared["schema"], estimator="RandomForestClassifier",
        estimator_params='{"n_estimators": 20}', seed=42, champion_model_uri="", baseline_metrics={},
        gate={"accuracy": {"min": 0.99}}, max_regression={}, artifact_root=root, model_namespace="ml",
        model_name="iris", run_name="run-a", job_name="ignored", job_id="job-1", dataset_uri="sklearn://iris",
        dataset_format="auto", dataset_digest=prepared.digest, dataset_rows=prepared.rows, test_size=0.25,
        pipeline_digest="d1g", started_at=prepared.started_at, sources=prepared.sources, retrain_window={}))
    assert trained["model_version"] == 1 and trained["model_uri"] == f"{root}/models/ml/iris/1"
    assert trained["validated"] is False and trained["reasons"] and "accuracy" in trained["reasons"][0]
    assert trained["comparison"]["challenger"] == trained["metrics"]
    assert joblib.load(tmp_path / "model").named_steps["estimator"].n_estimators == 20
    info = artifacts.read_model_version(root, "ml", "iris", 1)
    assert info["metrics"] == trained["metrics"] and info["validationReasons"] == trained["reasons"]
    lineage = info["lineage"]
    assert lineage["estimator"]["params"] == {"n_estimators": 20, "random_state": 42}
    assert lineage["sources"] == prepared["sources"] and lineage["split"] == {"testSize": 0.25, "seed": 42}


def test_a_stage_reports_the_failing_step(tmp_path: Path, error_file: Path) -> None:
    with pytest.raises(errors.DataValidationFailed, match="rows 150 < min_rows 1000"):
        prepare_iris(tmp_path, checks={"min_rows": 1000})
    assert json.loads(error_file.read_text())["step"] == "validate-data"
    with pytest.raises(errors.InvalidSpec, match="unknown task"):
        prepare_iris(tmp_path, task="clustering")
    assert json.loads(error_file.read_text())["step"] == "split"
