"""Training data that grows: newest-object dataset URIs, labelled production rows, their row
checks, the train/holdout mix, champion versus challenger on the same holdout, and the retrain
window a DriftMonitor hands to a ModelTraining."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from mlops_operator.api.annotations import RETRAIN_ANNOTATION, RETRAIN_WINDOW_ANNOTATION
from mlops_operator.api.driftmonitor import DriftMonitorStatus
from mlops_operator.api.modeltraining import ModelTrainingSpec, ModelTrainingStatus, RetrainWindow
from mlops_operator.backends import training_data as td
from mlops_operator.components.evaluate import run_evaluate_against
from mlops_operator.components.split import split_sources
from mlops_operator.components.train import build_model
from mlops_operator.reconcile import driftmonitor, modeltraining

FEATURES = ["a", "b"]


# --- newest data ---------------------------------------------------------------------------------

def test_glob_and_prefix_resolve_to_the_newest_object_by_name(tmp_path):
    for day in ("2026-03-01", "2026-03-03", "2026-03-02"):
        (tmp_path / f"dt={day}").mkdir()
        (tmp_path / f"dt={day}" / "part.csv").write_text("a,b\n1,2\n")
    (tmp_path / "dt=2026-03-03" / "_SUCCESS").write_text("")
    assert td.resolve_dataset_uri(f"file://{tmp_path}/dt=*/part.csv") == f"file://{tmp_path}/dt=2026-03-03/part.csv"
    assert td.resolve_dataset_uri(f"file://{tmp_path}/") == f"file://{tmp_path}/dt=2026-03-03/part.csv"
    assert td.resolve_dataset_uri("sklearn://iris") == "sklearn://iris"
    single = f"file://{tmp_path}/dt=2026-03-01/part.csv"
    assert td.resolve_dataset_uri(single) == single
    with pytest.raises(td.NoData, match="no CSV or Parquet object matches"):
        td.resolve_dataset_uri(f"file://{tmp_path}/nothing-*.csv")
    from mlops_operator.api.errors import InvalidSpec

    for listing in ("https://data.example.com/dt=*/part.csv", "http://data.example.com/daily/",
                    "https://data.example.com/dt={date:%Y-%m-%d}.csv"):
        with pytest.raises(InvalidSpec, match="needs a store that can be listed"):  # no HTTP listing past the policy
            td.resolve_dataset_uri(listing)


def test_date_template_takes_the_newest_partition_not_after_the_run(tmp_path):
    for day in ("2026-03-01", "2026-03-02", "2026-03-09", "not-a-date"):
        (tmp_path / f"dt={day}").mkdir()
        (tmp_path / f"dt={day}" / "part.parquet").write_bytes(b"x")
    uri = f"file://{tmp_path}/dt={{date:%Y-%m-%d}}/part.parquet"
    now = datetime(2026, 3, 5, 12, tzinfo=UTC)
    assert td.resolve_dataset_uri(uri, now) == f"file://{tmp_path}/dt=2026-03-02/part.parquet"
    with pytest.raises(td.NoData, match="with a date up to 2026-02-01"):
        td.resolve_dataset_uri(uri, datetime(2026, 2, 1, tzinfo=UTC))


# --- labelled production rows ----------------------------------------------------------------------

def write_log(root, records):
    directory = root / "inference" / "default" / "dep" / "2026" / "03" / "01"
    directory.mkdir(parents=True)
    lines = []
    for i, (ts, row, status) in enumerate(records):
        lines.append(json.dumps({
            "id": f"r{i}", "ts": ts, "model": "m", "predictor": "stable", "modelVersion": "1", "shadow": False,
            "status": status, "latencyMs": 1.0,
            "inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": row}],
            "outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [0]}],
            "error": None}))
    (directory / "10.jsonl").write_text("\n".join(lines) + "\n")


def test_served_rows_joined_with_labels_unlabelled_counted(tmp_path):
    records = [(f"2026-03-01T10:00:{i:02d}.000000Z", [float(i), 1.0], 200) for i in range(6)]
    records.append(("2026-03-01T10:00:30.000000Z", [9.0, 9.0], 500))  # failed: never training data
    write_log(tmp_path, records)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nr0,0\nr1,1\nr2,0\nr3,1\nr6,1\n")
    frame, info = td.read_labelled_production(
        root=f"file://{tmp_path}", namespace="default", deployment="dep", labels_uri=str(labels),
        features=FEATURES, target="y", since=datetime(2026, 3, 1, 10, 0, 1, tzinfo=UTC), until=None, max_rows=2.0)  # as KFP passes it
    assert info["served"] == 5 and info["unlabelled"] == 2  # r1..r5 in the range; r4, r5 without label
    assert list(frame.columns) == ["a", "b", "y", td.TIME_COLUMN]
    assert frame["a"].tolist() == [2.0, 3.0] and frame["y"].tolist() == [0, 1]  # the newest two
    assert info["labelled"] == 2 and len(info["digest"]) == 64
    assert info["first"].startswith("2026-03-01T10:00:02")


def test_no_log_or_no_labels_yet_is_an_empty_source_with_a_message(tmp_path):
    kwargs = dict(root=f"file://{tmp_path}", namespace="default", deployment="dep", features=FEATURES, target="y",
                  since=None, until=None, max_rows=None)
    frame, info = td.read_labelled_production(labels_uri=str(tmp_path / "l.csv"), **kwargs)
    assert frame.empty and "no inference log yet" in info["message"]
    write_log(tmp_path, [("2026-03-01T10:00:00.000000Z", [1.0, 2.0], 200)])
    frame, info = td.read_labelled_production(labels_uri=str(tmp_path / "l.csv"), **kwargs)
    assert frame.empty and info["unlabelled"] == 1 and "no ground-truth labels yet" in info["message"]


def test_row_checks_count_every_failed_row_per_check():
    frame = pd.DataFrame({"a": [1.0, -1.0, 5.0, np.nan], "b": ["x", "y", "z", "x"], "y": [0, 1, None, 0]})
    checks = {"columns": [{"name": "a", "min": 0, "maxMissingFraction": 0}, {"name": "b", "allowedValues": ["x", "y"]}]}
    rejected, counts = td.row_rejections(frame, "y", checks)
    assert rejected.tolist() == [False, True, True, True]
    assert counts == {"label y missing": 1, "a missing": 1, "a below min 0": 1, "b not an allowed value": 1}


# --- mix and holdout ---------------------------------------------------------------------------------

def production_rows(n, shift=5.0):
    rng = np.random.default_rng(1)
    a = rng.normal(shift, 1, n)
    return pd.DataFrame({"a": a, "b": rng.normal(0, 1, n), "y": (a > shift).astype(int),
                         td.TIME_COLUMN: [f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}.000000Z" for i in range(n)]})


def base_rows(n=200):
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, n)
    return pd.DataFrame({"a": a, "b": rng.normal(0, 1, n), "y": (a > 0).astype(int)})


def test_holdout_is_the_newest_production_rows_and_base_rows_are_capped():
    production = production_rows(100)
    train, test, schema = split_sources(base_rows(), production, "y", "classification", 0.25, 42, None, "",
                                        {"minRows": 30, "maxBaseRows": 10, "productionWeight": 3})
    assert schema["holdout"]["source"] == "production" and len(test) == 25
    assert test["a"].tolist() == production["a"].iloc[75:].tolist()
    assert schema["mix"] == {"base": 10, "production": 75, "productionWeight": 3.0}
    assert (train[td.SOURCE_COLUMN] == "production").sum() == 75
    assert set(train.loc[train[td.SOURCE_COLUMN] == "production", td.WEIGHT_COLUMN]) == {3.0}
    assert set(train.loc[train[td.SOURCE_COLUMN] == "base", td.WEIGHT_COLUMN]) == {1.0}
    assert schema["features"] == ["a", "b"]


def test_too_few_production_rows_train_on_the_base_dataset_and_say_so():
    train, test, schema = split_sources(base_rows(), production_rows(10), "y", "classification", 0.25, 42, None, "",
                                        {"minRows": 30})
    assert schema["holdout"]["source"] == "dataset" and schema["mix"]["production"] == 0
    assert "10 labelled production rows, fewer than the 30" in schema["mix"]["note"]
    assert len(train) + len(test) == 200


def test_labels_from_a_csv_feed_take_the_base_target_type():
    production = production_rows(40).assign(y=lambda f: f["y"].astype(str))
    train, test, _ = split_sources(base_rows(), production, "y", "classification", 0.25, 42, None, "", {})
    assert train["y"].dtype.kind == "i" and test["y"].dtype.kind == "i"


def test_champion_and_challenger_scored_on_the_same_holdout(tmp_path):
    base = base_rows()
    schema = {"target": "y", "features": ["a", "b"], "numeric": ["a", "b"], "categorical": [], "task": "classification",
              "holdout": {"source": "production", "rows": 50}}
    champion = build_model(RandomForestClassifier(n_estimators=10, random_state=0), schema).fit(base[["a", "b"]], base["y"])
    version = tmp_path / "models" / "m" / "1"
    version.mkdir(parents=True)
    joblib.dump(champion, version / "model.joblib")
    (version / "lineage.json").write_text(json.dumps({"version": 1, "features": ["a", "b"]}))
    shifted = production_rows(200)
    challenger = build_model(RandomForestClassifier(n_estimators=10, random_state=0), schema).fit(
        shifted[["a", "b"]].iloc[:150], shifted["y"].iloc[:150])
    joblib.dump(challenger, tmp_path / "new.joblib")
    shifted[["a", "b", "y"]].iloc[150:].to_parquet(tmp_path / "test.parquet")
    result = run_evaluate_against(str(tmp_path / "new.joblib"), str(tmp_path / "test.parquet"), schema,
                                  f"file://{version}", {"accuracy": 0.99})
    comparison = result["comparison"]
    assert comparison["champion"]["version"] == 1
    assert result["baseline"] == comparison["champion"]["metrics"]  # the gate compares on the holdout
    assert comparison["challenger"]["accuracy"] - comparison["champion"]["metrics"]["accuracy"] > 0.3
    missing = run_evaluate_against(str(tmp_path / "new.joblib"), str(tmp_path / "test.parquet"), schema,
                                   f"file://{tmp_path}/models/m/7", {"accuracy": 0.99})
    assert missing["baseline"] == {"accuracy": 0.99} and "cannot load" in missing["comparison"]["champion"]["message"]


# --- the retrain window and the pipeline's parameters -----------------------------------------------

def spec(**overrides) -> ModelTrainingSpec:
    return ModelTrainingSpec.model_validate({
        "model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"},
        "productionData": {"deploymentRef": {"name": "iris"}, "labelsUri": "s3://b/labels/",
                           "window": {"duration": "1d", "rows": 500}, "mix": {"maxBaseRows": 0}},
        **overrides})


def test_drift_window_travels_with_its_request_only():
    verdict = driftmonitor.Verdict("Drift", True, False, ["petal_length"], 4, "1/4 features drifted")
    status = {"windowStart": "2026-03-01T10:00:00Z", "windowEnd": "2026-03-01T10:05:00Z", "sampleSize": 300}
    value = driftmonitor.retrain_window_value("iris", DriftMonitorStatus.model_validate(status), verdict,
                                              "t1 drift: ...")
    annotations = {RETRAIN_ANNOTATION: "t1 drift: ...", RETRAIN_WINDOW_ANNOTATION: value}
    assert modeltraining.parse_retrain_window(annotations).to_api() == {
        "monitor": "iris", "start": "2026-03-01T10:00:00Z", "end": "2026-03-01T10:05:00Z", "rows": 300,
        "driftedFeatures": ["petal_length"]}
    manual = {**annotations, RETRAIN_ANNOTATION: "t2 new labels"}  # kubectl mlops retrain
    assert modeltraining.parse_retrain_window(manual) is None
    assert modeltraining.parse_retrain_window({**annotations, RETRAIN_WINDOW_ANNOTATION: "{not json"}) is None


def test_production_range_starts_at_the_drift_window_else_the_spec_duration():
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    params = modeltraining.production_parameters(spec(), "ns", "s3://root", now, None)
    assert params == {"root": "s3://root", "namespace": "ns", "deployment": "iris", "labelsUri": "s3://b/labels/",
                      "since": "2026-03-01T12:00:00.000000Z", "maxRows": 500}
    params = modeltraining.production_parameters(spec(), "ns", "s3://root", now,
                                                 RetrainWindow(start="2026-03-02T11:00:00Z"))
    assert params["since"] == "2026-03-02T11:00:00Z"
    assert modeltraining.production_parameters(spec(productionData=None), "ns", "s3://root", now, None) == {}


def test_new_parameters_go_to_the_builtin_template_only():
    production = {"deployment": "iris"}
    builtin = modeltraining.pipeline_parameters(spec(), "ml", "s3://root", {"accuracy": 0.9}, champion_uri="s3://root/models/ml/iris/1",
                                                production=production, retrain_window=RetrainWindow(start="x"))
    assert builtin["champion_model_uri"] == "s3://root/models/ml/iris/1"
    assert builtin["production_data"] == production
    assert builtin["mix"] == {"minRows": 30, "productionWeight": 1.0, "maxBaseRows": 0}
    assert builtin["retrain_window"] == {"start": "x"}
    custom = modeltraining.pipeline_parameters(spec(pipeline={"uri": "s3://p.yaml"}), "ml", "s3://root", None,
                                               champion_uri="s3://root/models/ml/iris/1", production=production)
    assert not {"champion_model_uri", "production_data", "mix", "retrain_window"} & set(custom)


def test_run_record_and_condition_carry_sources_and_the_comparison():
    outputs = {"model_version": 2, "validated": True, "model_uri": "u", "metrics": {"accuracy": 0.95},
               "sources": [{"name": "base", "uri": "sklearn://iris", "rows": 150.0, "digest": "d1"},
                           {"name": "production", "uri": "log + labels", "rows": 396.0, "digest": "d2",
                            "rejectedRows": 4.0, "rejections": {"sepal width (cm) below min 0": 4.0},
                            "range": {"since": "x"}}],
               "comparison": {"holdout": {"source": "production", "rows": 99.0},
                              "challenger": {"accuracy": 0.95},
                              "champion": {"version": 1.0, "uri": "u1", "metrics": {"accuracy": 0.33}}}}
    record = modeltraining.run_record("run", "retrain", "run", "Succeeded", "t0", "t1", outputs=outputs)
    assert record.sources[1].to_api() == {"name": "production", "uri": "log + labels", "rows": 396, "digest": "d2",
                                          "rejectedRows": 4, "rejections": {"sepal width (cm) below min 0": 4}}
    assert record.comparison.to_api() == {"holdout": "production", "holdoutRows": 99,
                                          "challenger": {"metrics": {"accuracy": 0.95}},
                                          "champion": {"version": 1, "metrics": {"accuracy": 0.33}}}
    status = modeltraining.finished_status(ModelTrainingStatus(), record, 10, 1)
    validated = status.condition("Validated")
    assert "accuracy 0.95 on the production holdout (99 rows) vs 0.33 for version 1" in validated.message
    assert ModelTrainingStatus.model_validate(status.to_status()) == status  # the status fits the API


def test_iris_labels_of_the_demo_shift_are_learnable():
    """The demo's shift (petals read 2 cm longer, same species) makes a model trained before it wrong."""
    iris = load_iris()
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(iris.data, iris.target)
    shifted = iris.data.copy()
    shifted[:, 2:] += 2.0
    assert (model.predict(shifted) == iris.target).mean() < 0.5


def test_extract_and_validate_steps_record_every_source(tmp_path):
    from mlops_operator.components.extract import run_extract_sources
    from mlops_operator.components.validate_data import run_validate_sources

    data = tmp_path / "data"
    for day in ("2026-03-01", "2026-03-02"):
        (data / day).mkdir(parents=True)
        pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.5], "y": [0, 1, 0]}).to_csv(data / day / "d.csv",
                                                                                          index=False)
    write_log(tmp_path, [(f"2026-03-01T10:00:{i:02d}.000000Z", [float(i) - 1, 1.0], 200) for i in range(4)])
    (tmp_path / "labels.csv").write_text("id,label\nr0,0\nr1,1\nr2,1\n")
    production = {"root": f"file://{tmp_path}", "namespace": "default", "deployment": "dep",
                  "labelsUri": str(tmp_path / "labels.csv")}
    result = run_extract_sources(f"file://{data}/*/d.csv", "auto", "y", [], production, str(tmp_path / "base.pq"),
                                 str(tmp_path / "prod.pq"))
    base, served = result["sources"]
    assert base["resolvedUri"] == f"file://{data}/2026-03-02/d.csv" and base["rows"] == 3
    assert served["rows"] == 3 and served["servedRows"] == 4 and served["unlabelledRows"] == 1
    summary = run_validate_sources(str(tmp_path / "base.pq"), str(tmp_path / "prod.pq"), "y",
                                   {"columns": [{"name": "a", "min": 0}]}, [], str(tmp_path / "report.json"),
                                   str(tmp_path / "prod-valid.pq"))
    assert summary == {"rows": 2, "rejectedRows": 1, "rejections": {"a below min 0": 1}}
    assert pd.read_parquet(tmp_path / "prod-valid.pq")["a"].tolist() == [0.0, 1.0]
    assert json.loads((tmp_path / "report.json").read_text())["production"] == summary
