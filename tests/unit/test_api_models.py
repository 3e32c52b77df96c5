"""The pydantic models parse the examples and mean what the API says."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from mlops_operator.api import DriftMonitor, ModelDeployment, ModelTraining
import re

from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.api.modeltraining import CRON_PATTERN

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = {"ModelTraining": ModelTraining, "ModelDeployment": ModelDeployment, "DriftMonitor": DriftMonitor}


def examples():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("apiVersion", "").startswith("mlops.dev/"):
                yield pytest.param(document, id=f"{path.name}:{document['metadata']['name']}")


@pytest.mark.parametrize("document", list(examples()))
def test_examples_parse(document):
    obj = MODELS[document["kind"]].model_validate(document)
    assert obj.spec is not None


def test_training_defaults_and_aliases():
    mt = ModelTraining.model_validate(
        {"metadata": {"name": "x"}, "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}}}
    )
    assert mt.spec.backend == "local"
    assert mt.spec.concurrency_policy == "Forbid"
    assert mt.spec.training.estimator == "RandomForestClassifier"
    assert mt.spec.training.test_size == 0.25
    api = mt.spec.to_api()
    assert api["concurrencyPolicy"] == "Forbid"
    assert "schedule" not in api  # unset optional fields stay out of the API form


def test_deployment_rollout_defaults():
    spec = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "iris"}})
    assert spec.rollout.strategy == "canary"
    assert [s.weight for s in spec.rollout.steps] == [10, 50]
    assert spec.rollout.approval == "automatic"
    assert spec.rollout.analysis.max_error_rate == 0.05


def test_pydantic_rejects_what_the_schema_rejects():
    with pytest.raises(pydantic.ValidationError) as error:
        ModelDeploymentSpec.model_validate({"model": {"fromTraining": "x"}, "rollout": {"steps": [{"weight": 0}]}})
    assert [e["loc"] for e in error.value.errors()] == [("rollout", "steps", 0, "weight")]


@pytest.mark.parametrize(
    "cron, valid",
    [("*/5 * * * *", True), ("0 3 * * 1-5", True), ("@hourly", True), ("0,30 * * * *", True),
     ("every day", False), ("* * * *", False), ("* * * * * *", False), ("@sometimes", False)],
)
def test_cron_pattern(cron, valid):
    assert bool(re.match(CRON_PATTERN, cron)) is valid
