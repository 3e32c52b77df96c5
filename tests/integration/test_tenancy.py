"""Two namespaces (teams) on one operator: the same model name gives each its own registry and version
sequence, and neither can make the operator read the other's versions, profiles or inference logs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator

import pytest

from kube_support import Objects, OperatorProcess, condition, load_example, wait_until
from mlops_operator.backends import artifacts

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
RUN_TIMEOUT = 400  # generous: CI shares 2 cores with the control plane


@pytest.fixture
def other_namespace(kube_api, namespace: str) -> Iterator[str]:
    """A second team's namespace, beside the test's."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"{namespace[:56]}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name,
                                                                          labels={"mlops.dev/test": "true"})))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def two_teams(kubeconfig, kube_api, namespace, other_namespace, crds, tmp_path: Path):
    """One operator watching both namespaces; their objects are deleted before it stops."""
    teams = (Objects(kube_api, namespace), Objects(kube_api, other_namespace))
    process = OperatorProcess(kubeconfig, namespace, tmp_path / "operator",
                              env={"MLOPS_NAMESPACES": f"{namespace},{other_namespace}"}).start()
    try:
        yield process, teams
        for team in teams:
            team.delete_all()
        wait_until(lambda: not any(team.list_all() for team in teams), timeout=180, what="deletion of both teams' objects")
    finally:
        process.stop()


def training(seed: int = 42) -> dict:
    body = copy.deepcopy(load_example("training.yaml"))
    body["spec"].pop("productionData", None)
    body["spec"]["training"]["seed"] = seed
    return body


def validated(team: Objects, version: int) -> dict:
    return team.wait("ModelTraining", "iris",
                     lambda o: (o.get("status", {}).get("latestValidatedModel") or {}).get("version") == version
                     and o["status"].get("phase") == "Succeeded",
                     timeout=RUN_TIMEOUT, what=f"{team.namespace}: iris version {version}")["status"]


def invalid_message(team: Objects, kind: str, name: str, condition_type: str) -> str:
    obj = team.wait(kind, name, lambda o: (condition(o, condition_type) or {}).get("reason") == "InvalidSpec",
                    what=f"{kind} {name} InvalidSpec")
    return condition(obj, condition_type)["message"]


def test_same_model_name_in_two_namespaces_is_two_models(two_teams):
    operator, (team_a, team_b) = two_teams
    root = (operator.data_dir / "artifacts").resolve().as_uri()
    a, b = team_a.namespace, team_b.namespace

    # Both teams train a model called iris: each gets its own version 1, and a second run of team A's
    # is A's version 2 (before, it was version 2 of one shared iris, and B's run was version 3).
    team_a.create(training())
    team_b.create(training())
    status_b = validated(team_b, 1)
    validated(team_a, 1)
    team_a.patch("ModelTraining", "iris", {"spec": {"training": {"seed": 7}}})
    status_a = validated(team_a, 2)
    assert status_a["latestValidatedModel"]["uri"] == f"{root}/models/{a}/iris/2"
    assert status_b["latestValidatedModel"]["uri"] == f"{root}/models/{b}/iris/1"
    assert artifacts.list_versions(root, a, "iris") == [1, 2]
    assert artifacts.list_versions(root, b, "iris") == [1]
    lineage_b = artifacts.read_model_version(root, b, "iris", 1)["lineage"]
    assert lineage_b["run"]["name"] == status_b["latestRun"]["name"]
    assert not (operator.data_dir / "artifacts" / "models" / "iris").exists()  # nothing in the shared layout

    # Team B cannot reach team A's versions, profiles or inference logs by naming them.
    a_version = status_a["latestValidatedModel"]["uri"]
    deployment = copy.deepcopy(load_example("deployment.yaml"))
    deployment["metadata"]["name"] = "stolen"
    deployment["spec"]["model"] = {"uri": a_version, "version": "2"}
    team_b.create(deployment)
    monitor = copy.deepcopy(load_example("driftmonitor.yaml"))
    monitor["metadata"]["name"] = "stolen"
    monitor["spec"]["reference"] = {"profileUri": f"{a_version}/profile.json"}
    monitor["spec"].pop("performance", None)
    team_b.create(monitor)
    reader = training()
    reader["metadata"]["name"] = "reader"
    reader["spec"]["dataset"] = {"uri": f"{root}/inference/{a}/iris/", "format": "parquet", "target": "target"}
    team_b.create(reader)

    rule = "outside this namespace's part of it"
    message = invalid_message(team_b, "ModelDeployment", "stolen", "Ready")
    assert f"spec.model.uri: {a_version} refused by the URI policy" in message and rule in message, message
    assert f"/models/{b}/" in message  # it says where the team's own models are
    message = invalid_message(team_b, "DriftMonitor", "stolen", "Ready")
    assert "spec.reference.profileUri" in message and rule in message, message
    message = invalid_message(team_b, "ModelTraining", "reader", "Succeeded")
    assert "spec.dataset.uri" in message and rule in message, message
    assert not team_b.get("ModelTraining", "reader").get("status", {}).get("latestRun")  # nothing ran

    # Team A's own version, by the same URI, is served to team A.
    mine = copy.deepcopy(deployment)
    mine["metadata"]["name"] = "mine"
    mine["spec"]["rollout"] = {"strategy": "direct"}
    team_a.create(mine)
    obj = team_a.wait("ModelDeployment", "mine", lambda o: o.get("status", {}).get("stableVersion") == "2",
                      timeout=RUN_TIMEOUT, what="team A serves its version 2")
    assert (condition(obj, "Ready") or {}).get("reason") != "InvalidSpec"
