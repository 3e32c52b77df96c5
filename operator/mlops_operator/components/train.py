"""Train: fit an estimator chosen by name inside a preprocessing pipeline.

Names are scikit-learn class names (``RandomForestClassifier``, ``LogisticRegression``,
``GradientBoostingRegressor``, ...) resolved with ``sklearn.utils.all_estimators``; the
xgboost/lightgbm scikit-learn wrappers (``XGBClassifier``, ``LGBMRegressor``, ...) when those
packages are installed; or a dotted path inside sklearn, xgboost or lightgbm. An empty name
picks a random forest for the task.

The fitted model is ``Pipeline([preprocess, estimator])``: median-imputed, standardised numeric
columns and most-frequent-imputed, one-hot encoded categorical columns, selected by position so
the model takes a DataFrame with the feature columns in order or a plain 2-D array.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
from typing import Any

import joblib
import pandas as pd
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops_operator.components.errors import InvalidSpec, reported

DEFAULT_ESTIMATORS = {"classification": "RandomForestClassifier", "regression": "RandomForestRegressor"}
# scikit-learn-compatible wrappers of optional boosting libraries: name -> module.
EXTERNAL_ESTIMATORS = {
    "XGBClassifier": "xgboost",
    "XGBRegressor": "xgboost",
    "XGBRFClassifier": "xgboost",
    "XGBRFRegressor": "xgboost",
    "LGBMClassifier": "lightgbm",
    "LGBMRegressor": "lightgbm",
}
_DOTTED_PREFIXES = ("sklearn.", "xgboost.", "lightgbm.")


# Where scikit-learn's classifiers and regressors usually live, most used first. A name found here
# is resolved by importing one or a few modules; anything else (and every typo) takes the full scan
# of ``all_estimators``, which imports the whole of scikit-learn: seconds in a fresh step process.
_COMMON_SKLEARN_MODULES = ("ensemble", "linear_model", "tree", "svm", "neighbors", "naive_bayes",
                           "neural_network", "dummy")


@functools.lru_cache(maxsize=1)
def sklearn_estimators() -> dict[str, type]:
    """All scikit-learn classifiers and regressors by class name."""
    from sklearn.utils import all_estimators

    return dict(all_estimators(type_filter=["classifier", "regressor"]))


def _common_sklearn_estimator(name: str) -> type | None:
    """The class ``all_estimators`` would give for ``name`` if it lives in a common module, else None."""
    import inspect

    from sklearn.base import BaseEstimator

    if name.startswith("_"):
        return None
    for module_name in _COMMON_SKLEARN_MODULES:
        cls = getattr(importlib.import_module(f"sklearn.{module_name}"), name, None)
        # all_estimators' own test: a concrete BaseEstimator that is a classifier or a regressor.
        if (isinstance(cls, type) and issubclass(cls, BaseEstimator) and issubclass(cls, (ClassifierMixin, RegressorMixin))
                and not inspect.isabstract(cls)):
            return cls
    return None


def resolve_estimator(name: str) -> type:
    """The estimator class for a name; InvalidSpec if unknown or its package is not installed."""
    name = (name or "").strip()
    if not name:
        raise InvalidSpec("no estimator given")
    if "." in name:
        return _resolve_dotted(name)
    if name in EXTERNAL_ESTIMATORS:
        module_name = EXTERNAL_ESTIMATORS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise InvalidSpec(
                f"estimator {name} needs the {module_name!r} package, which is not installed in the training image"
            ) from err
        return getattr(module, name)
    common = _common_sklearn_estimator(name)
    if common is not None:
        return common
    known = sklearn_estimators()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known) + list(EXTERNAL_ESTIMATORS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InvalidSpec(f"unknown estimator {name!r}{hint}")


def estimator_task(name: str) -> str | None:
    """``classification`` or ``regression`` for a known estimator name, else None (unknown or not installed)."""
    try:
        cls = resolve_estimator(name)
    except InvalidSpec:
        return None
    if issubclass(cls, ClassifierMixin):
        return "classification"
    if issubclass(cls, RegressorMixin):
        return "regression"
    return None


def build_estimator(name: str, params: dict[str, Any] | None, task: str, seed: int) -> tuple[Any, dict[str, Any]]:
    """Instantiate the estimator; return ``(estimator, effective params)``.

    Seeds ``random_state`` when the estimator takes one and the params do not set it. Raises
    InvalidSpec for an unknown name, a parameter the estimator does not take, or an estimator
    of the wrong kind for the task.
    """
    name = name or DEFAULT_ESTIMATORS[task]
    cls = resolve_estimator(name)
    kind = "classification" if issubclass(cls, ClassifierMixin) else "regression" if issubclass(cls, RegressorMixin) else None
    if kind and kind != task:
        raise InvalidSpec(f"estimator {name} is for {kind}, but the task is {task}")
    params = dict(params or {})
    try:
        estimator = cls(**params)
    except TypeError as err:
        valid = sorted(_constructor_params(cls))
        unknown = sorted(set(params) - set(valid))
        raise InvalidSpec(f"estimator {name} does not take parameters {unknown or list(params)}; valid: {valid}") from err
    if "random_state" in estimator.get_params(deep=False) and "random_state" not in params:
        estimator.set_params(random_state=int(seed))
        params["random_state"] = int(seed)
    return estimator, params


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


def _resolve_dotted(name: str) -> type:
    if not name.startswith(_DOTTED_PREFIXES):
        raise InvalidSpec(f"estimator {name!r}: dotted names must be inside {', '.join(p[:-1] for p in _DOTTED_PREFIXES)}")
    module_name, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise InvalidSpec(f"estimator {name}: module {module_name!r} is not installed or does not exist") from err
    except AttributeError as err:
        raise InvalidSpec(f"estimator {name}: {module_name} has no {attr!r}") from err
    if not (isinstance(cls, type) and hasattr(cls, "fit") and hasattr(cls, "predict")):
        raise InvalidSpec(f"{name} is not an estimator class")
    return cls


def _constructor_params(cls: type) -> set[str]:
    import inspect

    signature = inspect.signature(cls.__init__)
    return {p for p in signature.parameters if p != "self"}


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
    return out
