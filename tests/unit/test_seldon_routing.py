"""Routing a Seldon canary without a mesh (MLOPS_SELDON_ROUTING=none): replica counts from a step's
weight, the Service over every predictor's Pods, the split reported, and what is refused
(reconcile/seldondeployment.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.reconcile.modeldeployment import ModelRef, PredictorPlan
from mlops_operator.reconcile.seldondeployment import (
    ReplicaSplit,
    build_routing_service,
    build_seldon_deployment,
    predictor_replicas,
    routing_endpoint,
    routing_problems,
    served_weights,
    split_replicas,
)
from mlops_operator.settings import Settings

V1, V2 = ModelRef("1", "s3://bucket/models/iris/1"), ModelRef("2", "s3://bucket/models/iris/2")


def spec(**fields) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"fromTraining": "iris"}, "backend": "seldon", **fields})


def canary(weight: int) -> list[PredictorPlan]:
    return [PredictorPlan("stable", V1, 100 - weight), PredictorPlan("canary", V2, weight)]


@pytest.mark.parametrize(("weight", "stable_replicas", "most", "expected"), [
    (50, 1, 10, (1, 1)),
    (10, 1, 10, (9, 1)),
    (20, 1, 10, (4, 1)),
    (25, 1, 10, (3, 1)),
    (33, 1, 10, (2, 1)),
    (30, 1, 10, (7, 3)),
    (90, 1, 10, (1, 9)),
    (100, 1, 10, (1, 9)),  # stable keeps one replica: Seldon never calls a Deployment at 0 available
    (1, 1, 10, (9, 1)),    # the closest the cap allows
    (10, 1, 2, (1, 1)),    # a cap of 2 gives only 50%
    (50, 4, 10, (3, 3)),   # at least one replica more than stable had
    (50, 2, 10, (2, 2)),
    (10, 12, 10, (12, 1)),  # a stable at or above the cap: one canary replica beside it
])
def test_replica_counts_from_a_weight(weight, stable_replicas, most, expected):
    split = split_replicas(weight, stable_replicas, most)
    assert (split.stable, split.canary) == expected


@pytest.mark.parametrize("most", [2, 3, 5, 10, 20])
@pytest.mark.parametrize("weight", range(1, 101))
def test_the_split_is_the_closest_the_cap_allows(weight, most):
    split = split_replicas(weight, 1, most)
    assert split.stable >= 1 and split.canary >= 1 and split.stable + split.canary <= most
    error = abs(split.weight - weight)
    for total in range(2, most + 1):
        for c in range(1, total):
            assert error <= abs(100 * c / total - weight) + 1e-9, (weight, most, split, c, total)
    # A weight that is a multiple of 100/most is met exactly.
    if Fraction(weight * most, 100).denominator == 1 and weight < 100:
        assert split.weight == pytest.approx(weight)


def test_the_share_is_the_canary_fraction_of_replicas():
    assert ReplicaSplit(3, 1).weight == 25.0 and ReplicaSplit(2, 1).weight == pytest.approx(100 / 3)


def test_replicas_per_predictor_follow_the_routing():
    assert predictor_replicas(spec(), canary(25), "none", 10) == {"stable": 3, "canary": 1}
    assert predictor_replicas(spec(replicas=2), canary(50), "none", 10) == {"stable": 2, "canary": 2}
    # With a mesh the weights route; each predictor runs spec.replicas.
    assert predictor_replicas(spec(replicas=2), canary(25), "istio", 10) == {"stable": 2, "canary": 2}
    # No canary, or HPAs owning the counts: spec.replicas.
    assert predictor_replicas(spec(), [PredictorPlan("stable", V1, 100)], "none", 10) == {"stable": 1}
    scaled = spec(autoscaling={"minReplicas": 1, "maxReplicas": 3})
    assert predictor_replicas(scaled, canary(25), "none", 10) == {"stable": 1, "canary": 1}


def test_the_seldon_deployment_carries_the_replica_counts():
    plan = canary(25)
    sdep = build_seldon_deployment("iris", "ml", "uid-1", spec(), "iris", plan,
                                   replicas=predictor_replicas(spec(), plan, "none", 10))
    assert [(p["name"], p["replicas"], p["traffic"]) for p in sdep["spec"]["predictors"]] == [
        ("stable", 3, 75), ("canary", 1, 25)]


def test_the_routing_service_selects_every_predictor_and_is_owned():
    svc = build_routing_service("iris", "ml", "uid-1")
    assert svc["kind"] == "Service" and svc["metadata"]["name"] == "iris" and svc["metadata"]["namespace"] == "ml"
    assert svc["spec"]["selector"] == {"seldon-deployment-id": "iris"}
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("http", 8000, 8000), ("grpc", 5001, 5001)}
    (owner,) = svc["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-1" and owner["kind"] == "ModelDeployment" and owner["controller"]
    assert routing_endpoint("iris", "ml", "flowers") == "http://iris.ml.svc.cluster.local:8000/v2/models/flowers"


def test_the_status_reports_the_split_the_replicas_give():
    plan = canary(25)
    assert [(p.name, p.weight) for p in served_weights(plan, {"stable": 3, "canary": 1})] == [
        ("stable", 75), ("canary", 25)]
    # The canary is not available yet: kube-proxy sends everything to stable.
    assert [(p.name, p.weight) for p in served_weights(plan, {"stable": 1})] == [("stable", 100), ("canary", 0)]
    assert [(p.name, p.weight) for p in served_weights(canary(33), {"stable": 2, "canary": 1})] == [
        ("stable", 67), ("canary", 33)]
    # Nothing available: the plan as it is.
    assert served_weights(plan, {}) == plan


def test_shadow_without_a_mesh_is_refused_with_the_setting_named():
    shadow = spec(rollout={"strategy": "shadow"})
    (problem,) = routing_problems(shadow, "none")
    assert "shadow" in problem and "MLOPS_SELDON_ROUTING=none" in problem
    assert routing_problems(shadow, "istio") == [] and routing_problems(shadow, "ambassador") == []
    assert routing_problems(spec(rollout={"strategy": "canary"}), "none") == []
    local = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "iris"}, "rollout": {"strategy": "shadow"}})
    assert routing_problems(local, "none") == []  # the local router mirrors for real


def test_the_routing_setting(monkeypatch):
    assert Settings().seldon_routing == "none"
    monkeypatch.setenv("MLOPS_SELDON_ROUTING", "istio")
    assert Settings().seldon_routing == "istio"
    monkeypatch.setenv("MLOPS_SELDON_ROUTING", "linkerd")
    with pytest.raises(ValueError, match="seldon_routing"):
        Settings()


def test_a_shadow_mirror_percentage_is_the_shadow_predictors_traffic():
    plan = [PredictorPlan("stable", V1, 100), PredictorPlan("shadow", V2, 0, shadow=True, mirror_percent=30)]
    sdep = build_seldon_deployment("iris", "ml", "uid-1", spec(), "iris", plan)
    assert [(p["name"], p.get("traffic"), p.get("shadow")) for p in sdep["spec"]["predictors"]] == [
        ("stable", 100, None), ("shadow", 30, True)]
    # Mirroring everything: no traffic, which Seldon writes as a mirror without mirrorPercentage.
    full = [plan[0], PredictorPlan("shadow", V2, 0, shadow=True)]
    assert "traffic" not in build_seldon_deployment("iris", "ml", "uid-1", spec(), "iris", full)["spec"]["predictors"][1]


def test_the_view_without_a_mesh_reports_the_routing_service_and_the_replica_shares():
    from mlops_operator.reconcile.seldondeployment import SeldonObservation
    from mlops_operator.reconcile.serving import seldon_view

    plan = canary(33)
    seldon_endpoint = "http://iris-stable.ml.svc.cluster.local:8000/v2/models/iris"
    observed = SeldonObservation("Available", "", {"stable": True, "canary": True}, {"stable": 2, "canary": 1},
                                 seldon_endpoint)
    routed = seldon_view(plan, observed, "iris", None, rollout_in_flight=True, replicas=None,
                         routed_by=("iris", "ml", "iris"))
    assert routed.serving.endpoint == "http://iris.ml.svc.cluster.local:8000/v2/models/iris"
    assert [(p.name, p.weight) for p in routed.serving.served] == [("stable", 67), ("canary", 33)]
    # With a mesh: Seldon's address and the weights as written.
    meshed = seldon_view(plan, observed, "iris", None, rollout_in_flight=True, replicas=None)
    assert meshed.serving.endpoint == seldon_endpoint
    assert [(p.name, p.weight) for p in meshed.serving.served] == [("stable", 67), ("canary", 33)]
    # No endpoint before the stable predictor serves.
    creating = SeldonObservation("Creating", "", {"stable": False}, {}, None)
    assert seldon_view(plan[:1], creating, "iris", None, rollout_in_flight=False, replicas=None,
                       routed_by=("iris", "ml", "iris")).serving.endpoint is None
