"""Preprocess and split: pick the feature columns, settle the task, split train/test.

Rows without a label are dropped. The split is seeded and, for classification, stratified when
every class has at least two rows. Imputation, scaling and one-hot encoding are not done here
but fitted inside the model pipeline (see ``train``), so they learn from the training rows only
and the exported model accepts raw feature rows.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from pandas.api import types as ptypes
from sklearn.model_selection import train_test_split

from mlops_operator.components.errors import DataValidationFailed, InvalidSpec, reported

TASKS = ("classification", "regression")
# An integer label with at most this many distinct values is taken as class labels.
MAX_CLASSES_FOR_AUTO = 50

log = logging.getLogger(__name__)


def infer_task(labels: pd.Series) -> str:
    """Classification for discrete labels (strings, booleans, categories, few whole numbers), else regression."""
    values = labels.dropna()
    dtype = values.dtype
    if not ptypes.is_numeric_dtype(dtype) or ptypes.is_bool_dtype(dtype):
        return "classification"
    whole = ptypes.is_integer_dtype(dtype) or bool((values == values.round()).all())
    if whole and values.nunique() <= MAX_CLASSES_FOR_AUTO:
        return "classification"
    return "regression"


def resolve_task(task: str, labels: pd.Series, estimator: str = "") -> str:
    """The learning task: as given, else from the estimator's kind, else inferred from the labels."""
    task = (task or "auto").strip().lower()
    if task in TASKS:
        return task
    if task != "auto":
        raise InvalidSpec(f"unknown task {task!r}; use classification, regression or auto")
    if estimator:
        from mlops_operator.backends.estimators import estimator_task

        kind = estimator_task(estimator)
        if kind:
            return kind
    return infer_task(labels)


def feature_schema(frame: pd.DataFrame, target: str, features: list[str] | None = None) -> dict[str, Any]:
    """Which columns are features and which of them are categorical (non-numeric or boolean)."""
    columns = list(features) if features else [c for c in frame.columns if c != target]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidSpec(f"feature columns not in the dataset: {missing}")
    if target in columns:
        raise InvalidSpec(f"the target {target!r} cannot also be a feature")
    if not columns:
        raise InvalidSpec("the dataset has no feature columns besides the target")
    categorical = [
        c for c in columns
        if not ptypes.is_numeric_dtype(frame[c].dtype) or ptypes.is_bool_dtype(frame[c].dtype)
    ]
    return {
        "target": target,
        "features": columns,
        "categorical": categorical,
        "numeric": [c for c in columns if c not in categorical],
    }


def split_dataset(
    frame: pd.DataFrame,
    target: str,
    task: str,
    test_size: float,
    seed: int,
    features: list[str] | None = None,
    estimator: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Return ``(train, test, schema)``; ``schema`` also carries the resolved ``task`` (and ``classes``)."""
    if target not in frame.columns:
        raise DataValidationFailed(f"target column {target!r} missing")
    if not 0 < float(test_size) < 1:
        raise InvalidSpec(f"test_size must be between 0 and 1, got {test_size}")
    schema = feature_schema(frame, target, features)
    labelled = frame.loc[frame[target].notna(), schema["features"] + [target]].reset_index(drop=True)
    schema["task"] = resolve_task(task, labelled[target], estimator)
    stratify = None
    if schema["task"] == "classification":
        counts = labelled[target].value_counts()
        schema["classes"] = sorted(counts.index.tolist(), key=str)
        if len(counts) < 2:
            raise DataValidationFailed(f"classification needs at least two classes in {target!r}, found {len(counts)}")
        if counts.min() >= 2:
            stratify = labelled[target]
        else:
            log.warning("some classes have a single row; splitting without stratification")
    try:
        train, test = train_test_split(labelled, test_size=float(test_size), random_state=int(seed), stratify=stratify)
    except ValueError as err:
        raise DataValidationFailed(f"cannot split {len(labelled)} labelled rows with test_size {test_size}: {err}") from err
    schema["rows"] = {"train": int(len(train)), "test": int(len(test)), "dropped_unlabelled": int(len(frame) - len(labelled))}
    return train.reset_index(drop=True), test.reset_index(drop=True), schema


def split_sources(
    frame: pd.DataFrame,
    production: pd.DataFrame,
    target: str,
    task: str,
    test_size: float,
    seed: int,
    features: list[str] | None = None,
    estimator: str = "",
    mix: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train and holdout from the base dataset and the labelled production rows.

    With at least ``mix["minRows"]`` (default 1) production rows, the holdout is the newest
    ``test_size`` of them (recent data, the same rows both models are scored on), and training
    takes the older production rows plus the base dataset's training split, of which at most
    ``mix["maxBaseRows"]`` rows are kept (a seeded sample; 0 keeps none; unset keeps all).
    ``mix["productionWeight"]`` (default 1) becomes a sample weight column for production rows.
    With fewer, the base dataset is split as in ``split_dataset`` and production rows are not used.
    ``schema["holdout"]`` says which it was; ``schema["mix"]`` how many rows of each source trained.
    """
    from mlops_operator.backends.training_data import BASE, PRODUCTION, SOURCE_COLUMN, TIME_COLUMN, WEIGHT_COLUMN

    mix = mix or {}
    train, test, schema = split_dataset(frame, target, task, test_size, seed, features, estimator)
    columns = schema["features"] + [target]
    min_rows = max(2, int(mix.get("minRows") or 2))
    usable = production.loc[production[target].notna()] if target in production.columns else production.iloc[0:0]
    if len(usable) < min_rows:
        schema["holdout"] = {"source": "dataset", "rows": int(len(test))}
        schema["mix"] = {BASE: int(len(train)), PRODUCTION: 0}
        if len(usable):
            schema["mix"]["note"] = (f"{len(usable)} labelled production rows, fewer than the {min_rows} "
                                     "needed; trained on the base dataset alone")
        return train.assign(**{SOURCE_COLUMN: BASE}), test, schema
    usable = usable.sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)
    usable = usable.assign(**{target: _like(usable[target], frame[target])})
    holdout_rows = min(len(usable) - 1, max(1, int(round(len(usable) * float(test_size)))))
    recent = usable.iloc[len(usable) - holdout_rows:]
    older = usable.iloc[:len(usable) - holdout_rows]
    max_base = mix.get("maxBaseRows")
    if max_base is not None and len(train) > int(max_base):
        train = train.sample(n=int(max_base), random_state=int(seed)) if int(max_base) else train.iloc[0:0]
    weight = float(mix.get("productionWeight") or 1.0)
    parts = [train[columns].assign(**{SOURCE_COLUMN: BASE}),
             older[columns].assign(**{SOURCE_COLUMN: PRODUCTION})]
    combined = pd.concat([p for p in parts if len(p)], ignore_index=True)
    if weight != 1.0:
        combined[WEIGHT_COLUMN] = (combined[SOURCE_COLUMN] == PRODUCTION).map({True: weight, False: 1.0})
    if schema["task"] == "classification":
        counts = combined[target].value_counts()
        if len(counts) < 2:
            raise DataValidationFailed(f"classification needs at least two classes in {target!r} among the "
                                       f"training rows, found {len(counts)}")
        schema["classes"] = sorted(set(counts.index.tolist()) | set(recent[target].tolist()), key=str)
    schema["holdout"] = {"source": PRODUCTION, "rows": int(len(recent)),
                         "from": str(recent[TIME_COLUMN].iloc[0]), "to": str(recent[TIME_COLUMN].iloc[-1])}
    schema["mix"] = {BASE: int(len(train)), PRODUCTION: int(len(older))}
    if weight != 1.0:
        schema["mix"]["productionWeight"] = weight
    schema["rows"] = {"train": int(len(combined)), "test": int(len(recent)),
                      "dropped_unlabelled": int(len(production) - len(usable))}
    return combined, recent[columns].reset_index(drop=True), schema


def _like(values: pd.Series, reference: pd.Series) -> pd.Series:
    """Labels read from a label feed in the base target's type where they convert (1 and "1" are one class)."""
    if ptypes.is_numeric_dtype(reference.dtype) and not ptypes.is_numeric_dtype(values.dtype):
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().all():
            values = numbers
    if ptypes.is_integer_dtype(reference.dtype) and ptypes.is_float_dtype(values.dtype):
        if bool((values == values.round()).all()):
            return values.astype(reference.dtype)
    return values


@reported("split")
def run_split_sources(
    dataset_path: str,
    production_path: str,
    target: str,
    task: str,
    test_size: float,
    seed: int,
    features: list[str] | None,
    estimator: str,
    mix: dict[str, Any] | None,
    train_path: str,
    test_path: str,
) -> dict[str, Any]:
    """Step entry: ``split_sources`` on the Parquet files; return the schema."""
    train, test, schema = split_sources(pd.read_parquet(dataset_path), pd.read_parquet(production_path), target,
                                        task, test_size, seed, features, estimator, mix)
    train.to_parquet(train_path, index=False)
    test.to_parquet(test_path, index=False)
    return schema
