"""Train: fit an estimator chosen by name inside a preprocessing pipeline.

Names are scikit-learn class names (``RandomForestClassifier``, ``LogisticRegression``,
``GradientBoostingRegressor``, ...), the xgboost/lightgbm scikit-learn wrappers (``XGBClassifier``,
``LGBMRegressor``, ...) when those packages are installed, or a dotted path inside sklearn, xgboost
or lightgbm, resolved by ``backends.estimators`` (the operator judges spec.training with it too).
An empty name picks a random forest for the task.

The fitted model is ``Pipeline([preprocess, estimator])``: median-imputed, standardised numeric
columns and most-frequent-imputed, one-hot encoded categorical columns, selected by position so
the model takes a DataFrame with the feature columns in order or a plain 2-D array.
"""

from __future__ import annotations

import json
from typing import Any

import joblib
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops_operator.backends.estimators import build_estimator
from mlops_operator.components.errors import InvalidSpec, reported


def build_model(estimator: Any, schema: dict[str, Any]) -> Pipeline:
    """The estimator behind the preprocessing for the schema's numeric and categorical columns."""
    position = {column: i for i, column in enumerate(schema["features"])}
    transformers = []
    if schema["numeric"]:
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append(("numeric", numeric, [position[c] for c in schema["numeric"]]))
    if schema["categorical"]:
        categorical = Pipeline([
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ])
        transformers.append(("categorical", categorical, [position[c] for c in schema["categorical"]]))
    return Pipeline([("preprocess", ColumnTransformer(transformers)), ("estimator", estimator)])


def train_model(
    train: pd.DataFrame, schema: dict[str, Any], estimator: str, params: dict[str, Any] | None, seed: int
) -> tuple[Pipeline, dict[str, Any]]:
    """Fit the model pipeline on the training split; return ``(model, lineage info)``."""
    task = schema["task"]
    instance, effective = build_estimator(estimator, params, task, seed)
    model = build_model(instance, schema)
    features = train[schema["features"]]
    labels = train[schema["target"]]
    fit_params = {}
    weights = train["_mlops_weight"] if "_mlops_weight" in train.columns else None
    if weights is not None and not bool((weights == 1.0).all()):
        from sklearn.utils.validation import has_fit_parameter

        if not has_fit_parameter(instance, "sample_weight"):
            raise InvalidSpec(f"estimator {estimator or type(instance).__name__} takes no sample_weight, so "
                              "productionData.mix.productionWeight cannot be applied; leave it at 1")
        fit_params["estimator__sample_weight"] = weights.to_numpy(dtype=float)
    try:
        model.fit(features, labels, **fit_params)
    except (ValueError, TypeError) as err:
        # scikit-learn's InvalidParameterError (bad parameter value) subclasses both.
        if type(err).__name__ == "InvalidParameterError":
            raise InvalidSpec(f"estimator {estimator or type(instance).__name__}: {err}") from err
        raise
    cls = type(instance)
    return model, {
        "name": estimator or cls.__name__,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": _jsonable(effective),
    }


def parse_params(params: dict[str, Any] | str | None) -> dict[str, Any]:
    """Estimator parameters from a dict or JSON text (the pipeline passes text to keep int vs float)."""
    if params is None or params == "":
        return {}
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError as err:
            raise InvalidSpec(f"estimator parameters are not valid JSON: {err}") from err
    if not isinstance(params, dict):
        raise InvalidSpec(f"estimator parameters must be an object, got {type(params).__name__}")
    return params


@reported("train")
def run_train(
    train_path: str,
    schema: dict[str, Any],
    estimator: str,
    params: dict[str, Any] | str | None,
    seed: int,
    model_path: str,
) -> dict[str, Any]:
    """Step entry: fit on the training Parquet, dump the model with joblib; return the estimator info."""
    model, info = train_model(pd.read_parquet(train_path), schema, estimator, parse_params(params), int(seed))
    joblib.dump(model, model_path)
    return info


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
    return out
