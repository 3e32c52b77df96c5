"""The estimators this environment has: scikit-learn's classifiers and regressors by class name,
the xgboost/lightgbm scikit-learn wrappers when those packages are installed, or a dotted path
inside sklearn, xgboost or lightgbm.

What exists is a fact of the installed packages (it is found by importing them), so it is read
here, in the backends: by the train step, which fits the estimator, and by the operator, which
judges spec.training before any run (``reconcile.validation.estimator_problems`` decides what to
say; this module is the ``EstimatorCatalog`` it asks). scikit-learn is imported on first use.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from typing import Any

from mlops_operator.api.errors import InvalidSpec

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
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

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


def _kind(cls: type) -> str | None:
    from sklearn.base import ClassifierMixin, RegressorMixin

    return "classification" if issubclass(cls, ClassifierMixin) else "regression" if issubclass(cls, RegressorMixin) \
        else None


def estimator_task(name: str) -> str | None:
    """``classification`` or ``regression`` for a known estimator name, else None (unknown or not installed)."""
    try:
        return _kind(resolve_estimator(name))
    except InvalidSpec:
        return None


def build_estimator(name: str, params: dict[str, Any] | None, task: str, seed: int) -> tuple[Any, dict[str, Any]]:
    """Instantiate the estimator; return ``(estimator, effective params)``.

    Seeds ``random_state`` when the estimator takes one and the params do not set it. Raises
    InvalidSpec for an unknown name, a parameter the estimator does not take, or an estimator
    of the wrong kind for the task.
    """
    name = name or DEFAULT_ESTIMATORS[task]
    cls = resolve_estimator(name)
    kind = _kind(cls)
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


def check_parameters(estimator: Any) -> None:
    """scikit-learn's own checks of an estimator's parameter values (what ``fit`` would refuse);
    raises what they raise (InvalidParameterError). An estimator without them passes."""
    validate = getattr(estimator, "_validate_params", None)
    if callable(validate):
        validate()


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
    signature = inspect.signature(cls.__init__)
    return {p for p in signature.parameters if p != "self"}
