"""A small KFP v2 pipeline with typed parameters, for the contract tests.

No ``from __future__ import annotations`` here: kfp reads the real annotation types.
"""

from kfp import dsl


@dsl.component(base_image="python:3.11-slim")
def train(dataset_uri: str, n_estimators: int, learning_rate: float, balanced: bool) -> float:
    return 0.9


@dsl.component(base_image="python:3.11-slim")
def evaluate(score: float, threshold: float) -> bool:
    return score >= threshold


@dsl.pipeline(name="tiny-train")
def tiny_train(
    dataset_uri: str,
    n_estimators: int = 100,
    learning_rate: float = 0.1,
    balanced: bool = False,
    threshold: float = 0.5,
) -> bool:
    trained = train(dataset_uri=dataset_uri, n_estimators=n_estimators, learning_rate=learning_rate, balanced=balanced)
    return evaluate(score=trained.output, threshold=threshold).output
