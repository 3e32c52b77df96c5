"""The API server itself rejects malformed objects, with a message naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kube_support import load_example

pytestmark = pytest.mark.cluster


def training(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(load_example("training.yaml"))
    body["spec"].update(spec)
    return body


def deployment(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(load_example("deployment.yaml"))
    body["spec"].update(spec)
    return body


def monitor(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(load_example("driftmonitor.yaml"))
    body["spec"].update(spec)
    return body


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    del body["spec"][key]
    return body


def renamed(body: dict[str, Any], name: str) -> dict[str, Any]:
    body["metadata"]["name"] = name
    return body


RUN = {"weight": 10, "pauseSeconds": 1}
CASES = [
    # (id, body, text the error must contain)
    ("mt-wrong-type", training(training={"testSize": "a quarter"}), "spec.training.testSize"),
    ("mt-unknown-enum", training(backend="spark"), "spec.backend"),
    ("mt-missing-dataset", without(training(), "dataset"), "spec.dataset"),
    ("mt-bad-cron", training(schedule="every day"), "spec.schedule"),
    ("mt-test-size-out-of-range", training(training={"testSize": 1.5}), "spec.training.testSize"),
    ("mt-kfp-settings-with-local", training(kfp={"host": "http://kfp"}), "spec.kfp is only valid with backend: kfp"),
    ("mt-threshold-without-bound", training(validation={"thresholds": [{"metric": "accuracy"}]}),
     "a threshold needs min or max"),
    ("mt-unknown-metric", training(validation={"thresholds": [{"metric": "auc", "min": 1}]}),
     "spec.validation.thresholds[0].metric"),
    ("mt-two-pipeline-sources", training(pipeline={"template": "tabular", "uri": "file:///p.yaml"}),
     "at most one of template, configMapRef and uri"),
    ("mt-name-too-long", renamed(training(), "x" * 60), "metadata.name must be at most 48"),
    ("mt-model-name-pattern", training(model="Iris_Model"), "spec.model"),
    ("md-missing-model-source", deployment(model={}), "exactly one model source"),
    ("md-two-model-sources", deployment(model={"fromTraining": "iris", "uri": "file:///m", "version": "1"}),
     "exactly one model source"),
    ("md-uri-without-version", deployment(model={"uri": "file:///m"}), "version is required"),
    ("md-weight-zero", deployment(rollout={"steps": [{"weight": 0}]}), "spec.rollout.steps[0].weight"),
    ("md-weight-101", deployment(rollout={"steps": [{"weight": 101}]}), "spec.rollout.steps[0].weight"),
    ("md-descending-weights", deployment(rollout={"steps": [{"weight": 50}, {"weight": 10}]}),
     "strictly ascending"),
    ("md-repeated-weights", deployment(rollout={"steps": [RUN, RUN]}), "strictly ascending"),
    ("md-canary-without-steps", deployment(rollout={"strategy": "canary", "steps": []}), "at least one step"),
    ("md-replicas-and-autoscaling", deployment(autoscaling={"maxReplicas": 3}),
     "either spec.replicas or spec.autoscaling"),
    ("md-autoscaling-min-over-max", without(deployment(autoscaling={"minReplicas": 5, "maxReplicas": 2}), "replicas"),
     "minReplicas must not exceed maxReplicas"),
    ("md-unknown-region", deployment(region="mars-1"), "spec.region"),
    ("md-bad-quantity", deployment(resources={"requests": {"cpu": "lots"}}), "spec.resources.requests.cpu"),
    ("dm-missing-deployment", without(monitor(), "deploymentRef"), "spec.deploymentRef"),
    ("dm-bad-interval", monitor(interval="5 minutes"), "spec.interval"),
    ("dm-duplicate-test", monitor(tests=[{"name": "psi", "threshold": 0.2}, {"name": "psi", "threshold": 0.1}]),
     "spec.tests[1]"),
    ("dm-unknown-test", monitor(tests=[{"name": "t-test", "threshold": 0.2}]), "spec.tests[0].name"),
    ("dm-two-references", monitor(reference={"profileUri": "file:///p.json", "datasetUri": "file:///d.csv"}),
     "at most one of profileUri and datasetUri"),
    ("dm-negative-threshold", monitor(tests=[{"name": "psi", "threshold": -1}]), "spec.tests[0].threshold"),
]


@pytest.mark.parametrize("body, expected", [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_malformed_object_is_rejected(objects, body, expected):
    with pytest.raises(ApiException) as error:
        objects.create(body)
    assert error.value.status == 422, error.value.body
    assert expected in error.value.body, error.value.body


def test_at_least_fifteen_cases():
    assert len(CASES) >= 15


@pytest.mark.parametrize("example", ["training.yaml", "training-kfp.yaml", "deployment.yaml", "driftmonitor.yaml"])
def test_examples_are_accepted_with_defaults(objects, example):
    created = objects.create(load_example(example))
    assert created["spec"]  # defaults applied by the API server
    if created["kind"] == "ModelDeployment":
        assert created["spec"]["rollout"]["analysis"]["maxErrorRate"] == 0.05
    if created["kind"] == "ModelTraining":
        assert created["spec"]["concurrencyPolicy"] == "Forbid"
