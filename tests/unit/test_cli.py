"""``kubectl mlops`` against an in-memory stand-in for the custom objects API."""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime

import pytest
from kubernetes.client.exceptions import ApiException

from mlops_operator import cli


class FakeObjects:
    """Just enough of CustomObjectsApi: objects by (namespace, plural, name), merge-patched annotations."""

    def __init__(self, objects):
        self.objects = {(o["metadata"]["namespace"], plural, o["metadata"]["name"]): copy.deepcopy(o)
                        for plural, o in objects}
        self.patches = []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        try:
            return copy.deepcopy(self.objects[(namespace, plural, name)])
        except KeyError:
            raise ApiException(status=404, reason="Not Found") from None

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        obj = self.objects[(namespace, plural, name)]
        obj["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        self.patches.append((namespace, plural, name, body))
        return obj

    def list_namespaced_custom_object(self, group, version, namespace, plural):
        return {"items": [o for (ns, p, _), o in sorted(self.objects.items()) if ns == namespace and p == plural]}

    def list_cluster_custom_object(self, group, version, plural):
        return {"items": [o for (_, p, _), o in sorted(self.objects.items()) if p == plural]}


def deployment(name="iris", namespace="ml", **status):
    return ("modeldeployments", {"metadata": {"name": name, "namespace": namespace}, "status": status})


def training(name="iris", namespace="ml", **status):
    return ("modeltrainings", {"metadata": {"name": name, "namespace": namespace}, "status": status})


def run(api, *argv):
    out = io.StringIO()
    code = cli.main(list(argv), out=out, api=api)
    return code, out.getvalue()


def annotations(api, plural, name, namespace="ml"):
    return api.objects[(namespace, plural, name)]["metadata"].get("annotations", {})


def test_approve_defaults_to_the_candidate():
    api = FakeObjects([deployment(stableVersion="1", candidateVersion="2")])
    code, out = run(api, "-n", "ml", "approve", "iris")
    assert code == 0 and "version 2 approved" in out
    assert annotations(api, "modeldeployments", "iris") == {"mlops.dev/approve": "2"}


def test_approve_refuses_a_version_that_is_not_the_candidate(capsys):
    api = FakeObjects([deployment(stableVersion="1", candidateVersion="2")])
    assert run(api, "approve", "iris", "-n", "ml", "--version", "3")[0] == 1
    assert "rolling out version 2, not 3" in capsys.readouterr().err
    assert api.patches == []


def test_approve_ahead_of_a_rollout_and_without_a_candidate(capsys):
    api = FakeObjects([deployment(stableVersion="1")])
    assert run(api, "-n", "ml", "approve", "iris", "--version", "2")[0] == 0
    assert annotations(api, "modeldeployments", "iris")["mlops.dev/approve"] == "2"
    api = FakeObjects([deployment(stableVersion="1")])
    assert run(api, "-n", "ml", "approve", "iris")[0] == 1
    assert "no candidate version" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "version"), [
    ({"stableVersion": "1", "candidateVersion": "2"}, "2"),
    ({"stableVersion": "2", "previousStableVersion": "1"}, "2"),
])
def test_rollback_picks_the_candidate_else_the_stable_version(status, version):
    api = FakeObjects([deployment(**status)])
    assert run(api, "-n", "ml", "rollback", "iris")[0] == 0
    assert annotations(api, "modeldeployments", "iris") == {"mlops.dev/rollback": version}


def test_rollback_with_nothing_to_return_to_fails(capsys):
    api = FakeObjects([deployment(stableVersion="1")])
    assert run(api, "-n", "ml", "rollback", "iris")[0] == 1
    assert "no previous stable version" in capsys.readouterr().err


def test_retrain_writes_a_unique_readable_request():
    api = FakeObjects([training()])
    code, out = run(api, "-n", "ml", "retrain", "iris", "--reason", "drift in petal_width")
    assert code == 0
    value = annotations(api, "modeltrainings", "iris")["mlops.dev/retrain-requested"]
    assert value.endswith(" drift in petal_width") and value[:4].isdigit()
    assert cli.retrain_request("x", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z x"


def test_missing_objects_are_reported(capsys):
    assert run(FakeObjects([]), "-n", "ml", "retrain", "nope", "--reason", "r")[0] == 1
    assert "not found (404)" in capsys.readouterr().err


def test_status_prints_deployments_and_trainings():
    api = FakeObjects([
        deployment(phase="Progressing", stableVersion="1", candidateVersion="2", endpoint="http://127.0.0.1:1/v2/models/iris",
                   conditions=[{"type": "Ready", "status": "True"}],
                   traffic=[{"predictor": "stable", "version": "1", "weight": 90},
                            {"predictor": "canary", "version": "2", "weight": 10}]),
        deployment(name="other", namespace="elsewhere"),
        training(phase="Succeeded", latestRun={"name": "iris-1", "state": "Succeeded"},
                 latestValidatedModel={"version": 2}),
    ])
    code, out = run(api, "status", "ml")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["DEPLOYMENT", "READY", "PHASE", "STABLE", "CANDIDATE", "TRAFFIC", "ENDPOINT"]
    assert lines[1].split() == ["iris", "True", "Progressing", "1", "2", "stable@1=90%,canary@2=10%",
                                "http://127.0.0.1:1/v2/models/iris"]
    assert "other" not in out
    assert lines[3].split()[:2] == ["TRAINING", "PHASE"] and lines[4].split() == ["iris", "Succeeded", "iris-1",
                                                                                 "(Succeeded)", "2"]
    assert run(api, "-n", "ml", "status")[1] == out
    code, out = run(api, "status", "-A")
    assert "elsewhere" in out and out.splitlines()[0].startswith("NAMESPACE")
