"""The Argo CD health checks (deploy/argocd/health/*.lua) in a real Lua 5.1 runtime, against status
fixtures for every state of each kind.

The scripts are taken from the generated deploy/argocd/argocd-cm.yaml, i.e. exactly what ships, and
run in a sandbox like Argo CD's: gopher-lua is Lua 5.1, and custom health scripts get only the base,
package, table and a safe os library (no string or math). Every fixture's status is validated
against the kind's pydantic status model, so a fixture cannot use a field the API does not have.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pydantic
import pytest
import yaml
from lupa import lua51

from mlops_operator.api.driftmonitor import DriftMonitorStatus
from mlops_operator.api.modeldeployment import ModelDeploymentStatus
from mlops_operator.api.modeltraining import ModelTrainingStatus

REPO = Path(__file__).resolve().parents[2]


def _load_hack_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


argocd_health = _load_hack_module("argocd_health")
CONFIG_MAP = REPO / "deploy" / "argocd" / "argocd-cm.yaml"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
STATUS_MODELS = {
    "ModelTraining": ModelTrainingStatus,
    "ModelDeployment": ModelDeploymentStatus,
    "DriftMonitor": DriftMonitorStatus,
}

# The condition types of each kind (design.md); test_condition_types_match_the_handlers checks them
# against the handlers, in a slow test because importing the handlers imports kopf and the backends.
CONDITION_TYPES = {
    "ModelTraining": ("Succeeded", "Validated"),
    "ModelDeployment": ("Ready", "Progressing", "AwaitingApproval", "Degraded", "Anomalous"),
    "DriftMonitor": ("Ready", "DriftDetected"),
}
T0 = "2025-01-01T00:00:00Z"


def health_scripts() -> dict[str, str]:
    """Kind -> health.lua as shipped in the argocd-cm snippet."""
    data = yaml.safe_load(CONFIG_MAP.read_text())["data"]
    prefix = "resource.customizations.health.mlops.dev_"
    return {key.removeprefix(prefix): script for key, script in data.items() if key.startswith(prefix)}


SCRIPTS = health_scripts()


def run_health(kind: str, obj: dict[str, Any], script: str | None = None) -> dict[str, Any]:
    """Run a health script with ``obj`` as the global ``obj``; return the table it returns."""
    return argocd_health.evaluate(script if script is not None else SCRIPTS[kind], obj)


def cond(type_: str, status: str, reason: str, message: str = "", generation: int | None = 1) -> dict[str, Any]:
    """A condition; generation None leaves out its (optional) observedGeneration."""
    condition = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def resource(kind: str, status: dict[str, Any] | None, generation: int = 1, spec: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "iris", "namespace": "ml", "generation": generation},
        "spec": spec or {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def run(name: str, state: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "trigger": "spec (generation 1)", "state": state, **extra}


VALIDATED = {"version": 3, "uri": "file:///models/iris/3", "metrics": {"accuracy": 0.95}, "run": "iris-1"}

# (id, kind, object, expected Argo CD status, a fragment the message must contain)
CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    # ModelTraining
    ("mt-no-status", "ModelTraining", resource("ModelTraining", None), "Progressing", "reconcile"),
    ("mt-generation-lag", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Succeeded",
                                "conditions": [cond("Succeeded", "True", "RunSucceeded", generation=None),
                                               cond("Validated", "True", "ModelValidated", generation=None)],
                                "latestValidatedModel": VALIDATED}, generation=2),
     "Progressing", "observe generation 2 (observed 1)"),
    ("mt-condition-lag", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 2, "phase": "Succeeded",
                                "conditions": [cond("Succeeded", "True", "RunSucceeded", generation=1),
                                               cond("Validated", "True", "ModelValidated", generation=2)],
                                "latestValidatedModel": VALIDATED}, generation=2),
     "Progressing", "Succeeded describes generation 1"),
    ("mt-first-visit", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Pending",
                                "conditions": [cond("Succeeded", "Unknown", "Reconciling", "Reconciling"),
                                               cond("Validated", "Unknown", "Reconciling")]}),
     "Progressing", "Reconciling"),
    ("mt-running", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Running",
                                "latestRun": run("iris-1-abc", "Running"),
                                "conditions": [cond("Succeeded", "Unknown", "Running", "Run iris-1-abc is running"),
                                               cond("Validated", "Unknown", "Reconciling")]}),
     "Progressing", "iris-1-abc is Running"),
    ("mt-run-failed", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Failed",
                                "latestRun": run("iris-1-abc", "Failed", reason="DatasetUnavailable"),
                                "conditions": [cond("Succeeded", "False", "DatasetUnavailable", "no such file s3://x"),
                                               cond("Validated", "Unknown", "NoModel")]}),
     "Degraded", "DatasetUnavailable: no such file"),
    ("mt-backend-unavailable", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Pending",
                                "conditions": [cond("Succeeded", "False", "BackendUnavailable", "KFP is down"),
                                               cond("Validated", "Unknown", "Reconciling")]}),
     "Degraded", "BackendUnavailable"),
    ("mt-invalid", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Invalid",
                                "conditions": [cond("Succeeded", "False", "InvalidSpec", "spec.kfp.host: required"),
                                               cond("Validated", "Unknown", "Reconciling")]}),
     "Degraded", "InvalidSpec"),
    ("mt-never-validated", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Succeeded",
                                "latestRun": run("iris-1-abc", "Succeeded", validated=False, modelVersion=1),
                                "conditions": [cond("Succeeded", "True", "RunSucceeded"),
                                               cond("Validated", "False", "ValidationFailed", "accuracy 0.7 < 0.85")]}),
     "Degraded", "accuracy 0.7 < 0.85"),
    ("mt-rejected-but-serving", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Succeeded", "latestValidatedModel": VALIDATED,
                                "conditions": [cond("Succeeded", "True", "RunSucceeded"),
                                               cond("Validated", "False", "ValidationFailed", "accuracy regressed")]}),
     "Healthy", "rejected: accuracy regressed"),
    ("mt-healthy", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Succeeded", "latestValidatedModel": VALIDATED,
                                "latestRun": run("iris-1-abc", "Succeeded", validated=True, modelVersion=3),
                                "conditions": [cond("Succeeded", "True", "RunSucceeded"),
                                               cond("Validated", "True", "ModelValidated")]}),
     "Healthy", "Model version 3 is validated"),
    # Issue 13: a new run of an edited spec failed; only Succeeded was refreshed.
    ("mt-edited-run-failed", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 2, "phase": "Failed", "latestValidatedModel": VALIDATED,
                                "latestRun": run("iris-2-abc", "Failed", reason="TrainingFailed"),
                                "conditions": [cond("Succeeded", "False", "TrainingFailed", "estimator diverged", 2),
                                               cond("Validated", "True", "ModelValidated", generation=1)]},
              generation=2),
     "Degraded", "TrainingFailed: estimator diverged"),
    ("mt-edited-invalid", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 2, "phase": "Invalid", "latestValidatedModel": VALIDATED,
                                "conditions": [cond("Succeeded", "False", "InvalidSpec", "spec.schedule: never fires", 2),
                                               cond("Validated", "True", "ModelValidated", generation=1)]},
              generation=2),
     "Degraded", "InvalidSpec: spec.schedule: never fires"),
    ("mt-old-invalid-fixed", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Invalid",
                                "conditions": [cond("Succeeded", "False", "InvalidSpec", "bad", 1),
                                               cond("Validated", "Unknown", "Reconciling", generation=1)]},
              generation=2),
     "Progressing", "observe generation 2"),
    ("mt-schedule-suspended", "ModelTraining",
     resource("ModelTraining", {"observedGeneration": 1, "phase": "Succeeded", "latestValidatedModel": VALIDATED,
                                "conditions": [cond("Succeeded", "True", "RunSucceeded"),
                                               cond("Validated", "True", "ModelValidated")]},
              spec={"schedule": "0 3 * * *", "suspend": True}),
     "Suspended", "suspended"),
    # ModelDeployment
    ("md-no-status", "ModelDeployment", resource("ModelDeployment", None), "Progressing", "reconcile"),
    ("md-generation-lag", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 3, "phase": "Ready", "stableVersion": "3",
                                  "conditions": [cond("Ready", "True", "Serving", generation=None)]}, generation=4),
     "Progressing", "observe generation 4 (observed 3)"),
    ("md-first-visit", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Pending",
                                  "conditions": [cond(t, "Unknown", "Reconciling", "Reconciling")
                                                 for t in ("Ready", "Progressing", "AwaitingApproval", "Degraded")]}),
     "Progressing", "Reconciling"),
    ("md-canary", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Progressing", "stableVersion": "3",
                                  "candidateVersion": "4",
                                  "traffic": [{"predictor": "stable", "version": "3", "weight": 90},
                                              {"predictor": "canary", "version": "4", "weight": 10}],
                                  "rollout": {"phase": "Canary", "step": 0, "stepStarted": T0, "started": T0},
                                  "conditions": [cond("Ready", "True", "Serving"),
                                                 cond("Progressing", "True", "CanaryStep", "Canary step 1: 10% to 4"),
                                                 cond("AwaitingApproval", "False", "NotRequired"),
                                                 cond("Degraded", "False", "AsExpected")]}),
     "Progressing", "Canary step 1"),
    ("md-awaiting-approval", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "AwaitingApproval", "stableVersion": "3",
                                  "candidateVersion": "4",
                                  "rollout": {"phase": "AwaitingApproval", "step": 1, "stepStarted": T0, "started": T0},
                                  "conditions": [cond("Ready", "True", "Serving"),
                                                 cond("Progressing", "True", "AwaitingApproval", "Waiting"),
                                                 cond("AwaitingApproval", "True", "AwaitingApproval",
                                                      "Version 4 waits for approval: kubectl mlops approve "
                                                      "--version 4 (annotation mlops.dev/approve)."),
                                                 cond("Degraded", "False", "AsExpected")]}),
     "Suspended", "kubectl mlops approve --version 4"),
    ("md-awaiting-approval-terse", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "AwaitingApproval", "stableVersion": "3",
                                  "candidateVersion": "4",
                                  "conditions": [cond("Ready", "True", "Serving"),
                                                 cond("AwaitingApproval", "True", "AwaitingApproval"),
                                                 cond("Degraded", "False", "AsExpected")]}),
     "Suspended", "kubectl annotate modeldeployment iris mlops.dev/approve=4"),
    ("md-waiting-for-model", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Pending",
                                  "conditions": [cond("Ready", "False", "WaitingForModel",
                                                      "ModelTraining iris has not validated a model yet"),
                                                 cond("Progressing", "False", "WaitingForModel", "same"),
                                                 cond("AwaitingApproval", "False", "NoApprovalPending"),
                                                 cond("Degraded", "False", "AsExpected")]}),
     "Progressing", "has not validated a model yet"),
    ("md-first-deploy", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Pending", "stableVersion": "1",
                                  "conditions": [cond("Ready", "False", "Starting", "The model server is starting."),
                                                 cond("Progressing", "True", "Deploying", "Deploying version 1."),
                                                 cond("AwaitingApproval", "False", "NoApprovalPending"),
                                                 cond("Degraded", "False", "AsExpected")]}),
     "Progressing", "Deploying version 1"),
    ("md-rollout-aborted", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Degraded", "stableVersion": "3",
                                  "rejectedVersions": ["4"],
                                  "conditions": [cond("Ready", "True", "Serving"),
                                                 cond("Progressing", "False", "RolloutAborted"),
                                                 cond("AwaitingApproval", "False", "NotRequired"),
                                                 cond("Degraded", "True", "RolloutAborted",
                                                      "error rate 0.2 > 0.05; rolled back to 3")]}),
     "Degraded", "RolloutAborted: error rate"),
    ("md-not-serving", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Degraded",
                                  "conditions": [cond("Ready", "False", "ModelServerFailed", "mlserver exited"),
                                                 cond("Progressing", "False", "Idle"),
                                                 cond("AwaitingApproval", "False", "NotRequired"),
                                                 cond("Degraded", "Unknown", "Reconciling")]}),
     "Degraded", "ModelServerFailed"),
    ("md-invalid", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Invalid",
                                  "conditions": [cond("Ready", "False", "InvalidSpec", "spec.model: one of uri or fromTraining")]}),
     "Degraded", "InvalidSpec"),
    # Issue 13: a spec edited into an invalid one; the operator refreshes only Ready.
    ("md-edited-invalid", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 2, "phase": "Invalid", "stableVersion": "3",
                                  "conditions": [cond("Ready", "False", "InvalidSpec", "spec.replicas: too many", 2),
                                                 cond("Progressing", "False", "Idle", generation=1),
                                                 cond("AwaitingApproval", "False", "NotRequired", generation=1),
                                                 cond("Degraded", "False", "AsExpected", generation=1)]},
              generation=2),
     "Degraded", "InvalidSpec: spec.replicas"),
    ("md-rollback-awaiting-approval", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "AwaitingApproval", "stableVersion": "4",
                                  "previousStableVersion": "3",
                                  "conditions": [cond("Ready", "True", "Serving"),
                                                 cond("Progressing", "False", "Stable"),
                                                 cond("AwaitingApproval", "True", "RollbackAwaitingApproval",
                                                      "Version 4 is anomalous within its bake period: ... Approve "
                                                      "the rollback to version 3: kubectl mlops rollback <name>"),
                                                 cond("Degraded", "False", "AsExpected"),
                                                 cond("Anomalous", "True", "AnomalyDetected", "errorRate 40%")]}),
     "Suspended", "Approve the rollback to version 3"),
    ("md-healthy-anomalous", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Ready", "stableVersion": "3",
                                  "conditions": [cond("Ready", "True", "Serving"),
                                                 cond("Progressing", "False", "Idle"),
                                                 cond("AwaitingApproval", "False", "NotRequired"),
                                                 cond("Degraded", "False", "AsExpected"),
                                                 cond("Anomalous", "True", "AnomalyDetected",
                                                      "requestRate 1 req/s is below its band")]}),
     "Healthy", "anomalous: requestRate 1 req/s is below its band"),
    ("md-healthy", "ModelDeployment",
     resource("ModelDeployment", {"observedGeneration": 1, "phase": "Ready", "stableVersion": "3",
                                  "traffic": [{"predictor": "stable", "version": "3", "weight": 100}],
                                  "endpoint": "http://127.0.0.1:9000/v2/models/iris",
                                  "conditions": [cond("Ready", "True", "Serving"),
                                                 cond("Progressing", "False", "Idle"),
                                                 cond("AwaitingApproval", "False", "NotRequired"),
                                                 cond("Degraded", "False", "AsExpected")]}),
     "Healthy", "model version 3"),
    # DriftMonitor
    ("dm-no-status", "DriftMonitor", resource("DriftMonitor", None), "Progressing", "reconcile"),
    ("dm-generation-lag", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "NoDrift",
                               "conditions": [cond("Ready", "True", "Checked", generation=None),
                                              cond("DriftDetected", "False", "NoDrift", generation=None)]}, generation=2),
     "Progressing", "observe generation 2 (observed 1)"),
    ("dm-condition-lag", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 2, "phase": "NoDrift",
                               "conditions": [cond("Ready", "True", "Checked", generation=2),
                                              cond("DriftDetected", "False", "NoDrift", generation=1)]}, generation=2),
     "Progressing", "DriftDetected describes generation 1"),
    ("dm-first-check-pending", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "Pending",
                               "conditions": [cond("Ready", "Unknown", "Reconciling", "Reconciling"),
                                              cond("DriftDetected", "Unknown", "Reconciling")]}),
     "Progressing", "Reconciling"),
    ("dm-insufficient-data", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "InsufficientData", "sampleSize": 12,
                               "conditions": [cond("Ready", "True", "Checked"),
                                              cond("DriftDetected", "False", "InsufficientData",
                                                   "12 of 100 samples")]}),
     "Healthy", "12 of 100 samples"),
    ("dm-no-drift", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "NoDrift", "sampleSize": 500,
                               "lastCheckTime": T0,
                               "conditions": [cond("Ready", "True", "Checked"),
                                              cond("DriftDetected", "False", "NoDrift", "No drift in 4 features")]}),
     "Healthy", "No drift"),
    ("dm-drift", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "Drift", "driftedFeatures": 2,
                               "lastRetrainRequest": T0,
                               "conditions": [cond("Ready", "True", "Checked"),
                                              cond("DriftDetected", "True", "DriftDetected",
                                                   "2 of 4 features drifted; retrain requested")]}),
     "Degraded", "2 of 4 features drifted"),
    ("dm-checks-failing", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "Error",
                               "conditions": [cond("Ready", "False", "ReferenceUnavailable", "profile.json not found"),
                                              cond("DriftDetected", "Unknown", "Reconciling")]}),
     "Degraded", "ReferenceUnavailable"),
    # Issue 13: a correct first install (sync waves) must not go red before the first request.
    ("dm-no-request-yet", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "Pending",
                               "conditions": [cond("Ready", "False", "NoRequestsYet",
                                                   "ModelDeployment iris has not served a request yet"),
                                              cond("DriftDetected", "Unknown", "CheckFailed")]}),
     "Healthy", "has not served a request yet"),
    ("dm-no-served-model", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "Pending",
                               "conditions": [cond("Ready", "False", "NoServedModel", "serves no model version yet"),
                                              cond("DriftDetected", "Unknown", "CheckFailed")]}),
     "Progressing", "serves no model version yet"),
    ("dm-edited-invalid", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 3, "phase": "Invalid",
                               "conditions": [cond("Ready", "False", "InvalidSpec", "spec.tests: empty", 3),
                                              cond("DriftDetected", "False", "NoDrift", generation=2)]},
              generation=3),
     "Degraded", "InvalidSpec"),
    ("dm-invalid", "DriftMonitor",
     resource("DriftMonitor", {"observedGeneration": 1, "phase": "Invalid",
                               "conditions": [cond("Ready", "False", "InvalidSpec", "spec.tests: empty")]}),
     "Degraded", "InvalidSpec"),
]


@pytest.mark.parametrize(("kind", "obj", "expected", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health(kind: str, obj: dict[str, Any], expected: str, fragment: str) -> None:
    result = run_health(kind, obj)
    assert result["status"] == expected, result
    assert fragment in result["message"], result


def _unknown_keys(model: type[pydantic.BaseModel], data: Any, path: str = "status") -> list[str]:
    """Keys in data that the model (by alias, recursively) does not define."""
    if not isinstance(data, dict) or not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
        return []
    aliases = {(field.alias or name): field for name, field in model.model_fields.items()}
    problems = []
    for key, value in data.items():
        if key not in aliases:
            problems.append(f"{path}.{key}")
            continue
        annotation = aliases[key].annotation
        for candidate in (annotation, *get_args(annotation)):
            for inner in (candidate, *get_args(candidate)):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    problems += _unknown_keys(inner, item, f"{path}.{key}")
    return problems


@pytest.mark.parametrize(("kind", "obj"), [c[1:3] for c in CASES if "status" in c[2]],
                         ids=[c[0] for c in CASES if "status" in c[2]])
def test_fixture_is_a_valid_status(kind: str, obj: dict[str, Any]) -> None:
    model = STATUS_MODELS[kind]
    model.model_validate(obj["status"])
    assert not _unknown_keys(model, obj["status"])
    for condition in obj["status"].get("conditions", []):
        assert condition["type"] in CONDITION_TYPES[kind]


def test_every_state_is_covered() -> None:
    covered = {(kind, expected) for _, kind, _, expected, _ in CASES}
    for kind in STATUS_MODELS:
        for state in ("Healthy", "Progressing", "Degraded"):
            assert (kind, state) in covered, (kind, state)
    assert ("ModelDeployment", "Suspended") in covered


@pytest.mark.parametrize("kind", sorted(STATUS_MODELS))
def test_script_names_only_real_conditions_and_phases(kind: str) -> None:
    script = SCRIPTS[kind]
    named_conditions = set(re.findall(r'(?:condition|fresh)\(obj, "(\w+)"\)', script))
    settled = re.search(r'settled\(obj, "(\w+)"\)', script)
    lagging = re.search(r"lagging\(obj, \{([^}]*)\}\)", script)
    assert settled and lagging, "the script must check observedGeneration"
    lagging_conditions = {settled.group(1)} | set(re.findall(r'"(\w+)"', lagging.group(1)))
    assert named_conditions <= set(CONDITION_TYPES[kind])
    assert lagging_conditions == set(CONDITION_TYPES[kind]), "every condition's observedGeneration is checked"
    phases = set(get_args(get_args(STATUS_MODELS[kind].model_fields["phase"].annotation)[0]))
    assert set(re.findall(r'phase == "(\w+)"', script)) <= phases


@pytest.mark.parametrize("kind", sorted(STATUS_MODELS))
def test_always_a_valid_status_and_a_message(kind: str) -> None:
    for _, case_kind, obj, _, _ in CASES:
        if case_kind == kind:
            result = run_health(kind, obj)
            assert result["status"] in ARGO_STATUSES
            assert isinstance(result["message"], str) and result["message"]
    # Odd but possible shapes: a status without conditions, conditions without messages.
    bare = resource(kind, {"observedGeneration": 1})
    assert run_health(kind, bare)["status"] == "Progressing"
    terse = resource(kind, {"observedGeneration": 1, "conditions": [{"type": t, "status": "True"} for t in CONDITION_TYPES[kind]]})
    assert run_health(kind, terse)["status"] in ARGO_STATUSES


def test_sandbox_is_as_strict_as_argo_cd() -> None:
    """The scripts would fail in Argo CD if they used the string or math library; so must they here."""
    obj = resource("ModelTraining", None)
    for forbidden in ('return {status = string.format("%s", "x")}', 'return {status = ("x"):upper()}',
                      "return {status = tostring(math.floor(1))}", 'return {status = io.read()}'):
        with pytest.raises(lua51.LuaError):
            run_health("ModelTraining", obj, forbidden)
    assert run_health("ModelTraining", obj, 'return {status = "Healthy", message = tostring(#{1, 2})}') == {
        "status": "Healthy", "message": "2"}


@pytest.mark.slow
def test_condition_types_match_the_status_models() -> None:
    from mlops_operator.api.driftmonitor import DriftMonitorStatus
    from mlops_operator.api.modeldeployment import ModelDeploymentStatus
    from mlops_operator.api.modeltraining import ModelTrainingStatus
    from mlops_operator.reconcile import aiops

    models = {"ModelTraining": ModelTrainingStatus, "ModelDeployment": ModelDeploymentStatus,
              "DriftMonitor": DriftMonitorStatus}
    for kind, model in models.items():
        assert set(model.condition_types) == set(CONDITION_TYPES[kind]), kind
        assert model.summary_condition in model.condition_types, kind
    assert aiops.ANOMALOUS in ModelDeploymentStatus.condition_types



# ---------------------------------------------------------------- every combination, and the docs table


def test_docs_table_is_current_and_complete() -> None:
    """docs/argocd-health.md is what the shipped scripts answer (fix: python hack/gen-manifests.py write)."""
    assert (REPO / "docs" / "argocd-health.md").read_text() == argocd_health.render(SCRIPTS)
    for kind in STATUS_MODELS:
        columns, rows = argocd_health.combinations(kind)
        assert len(rows) == len({cells for cells, _ in rows}), "each row is one combination"
        for _, obj in rows:
            STATUS_MODELS[kind].model_validate(obj["status"])


def test_combinations_that_must_never_be_healthy_or_stuck() -> None:
    """Across the whole table: a current InvalidSpec is Degraded, a status behind the spec is never
    Healthy, and a current failure verdict is never Progressing."""
    for kind, cells, obj in argocd_health.all_rows():
        health = run_health(kind, obj)["status"]
        if cells[0] == "False/InvalidSpec" and "Succeeded behind" not in cells[-1]:
            assert health == "Degraded", (kind, cells, health)
        if "behind" in cells[-1] and "InvalidSpec" not in cells[0] and "RunFailed" not in cells[0] \
                and "ServerCrashLoop" not in cells[0]:
            assert health == "Progressing", (kind, cells, health)
        if cells[0] in ("False/RunFailed", "False/ServerCrashLoop", "False/ReferenceUnavailable") \
                and "behind" not in cells[-1]:
            assert health == "Degraded", (kind, cells, health)


# ---------------------------------------------------------------- malformed status shapes

JUNK = [None, True, False, 0, -1, 2.5, 10**12, "", "x", "True", "Invalid", [], [1, "a"], {}, {"a": 1},
        {"type": "Ready"}, [{"type": 1}], "InvalidSpec", "Running"]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.random()
    if depth < 2 and choice < 0.15:
        return {rng.choice(["type", "status", "reason", "message", "observedGeneration", "x"]): _junk(rng, depth + 1)
                for _ in range(rng.randint(0, 4))}
    if depth < 2 and choice < 0.25:
        # No nulls inside lists: the API server never stores them (and Lua 5.1 would see a hole).
        return [item for item in (_junk(rng, depth + 1) for _ in range(rng.randint(0, 3))) if item is not None]
    return rng.choice(JUNK)


def malformed_objects(kind: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Objects whose status (and metadata) have every wrong type in every place the scripts read."""
    rng = random.Random(seed)
    conditions = CONDITION_TYPES[kind]
    fields = ["phase", "observedGeneration", "conditions", "latestRun", "latestValidatedModel", "candidateVersion",
              "stableVersion", "sampleSize"]
    objects = []
    for i in range(n):
        status: Any
        shape = i % 4
        if shape == 0:
            status = _junk(rng)
        else:
            status = {f: _junk(rng) for f in rng.sample(fields, rng.randint(0, len(fields)))}
            if shape >= 2:
                status["conditions"] = [
                    {k: (v if rng.random() < 0.6 else _junk(rng)) for k, v in {
                        "type": rng.choice(conditions), "status": rng.choice(["True", "False", "Unknown", 1]),
                        "reason": rng.choice(["InvalidSpec", "NoServedModel", "NoRequestsYet", "WaitingForModel",
                                              "Starting", "X", 5]),
                        "message": rng.choice(["m", "", 3, None]),
                        "observedGeneration": rng.choice([1, 2, 3, "2", None]),
                    }.items() if rng.random() < 0.9}
                    for _ in range(rng.randint(0, 6))]
            if shape == 3:
                status["latestRun"] = {"name": _junk(rng), "state": rng.choice(["Running", "Pending", 7, None])}
        metadata = {"name": rng.choice(["iris", 5, None]), "generation": rng.choice([1, 2, 3, "2", None, 2.0])}
        obj = {"apiVersion": "mlops.dev/v1alpha1", "kind": kind,
               "metadata": {k: v for k, v in metadata.items() if v is not None},
               "spec": rng.choice([{}, {"suspend": True, "schedule": "0 3 * * *"}, {"suspend": "yes"}, "x"])}
        if status is not None:
            obj["status"] = status
        objects.append(json.loads(json.dumps(obj)))  # no shared sub-objects (lupa converts a tree)
    return objects


FUZZ_PER_KIND = 700


@pytest.mark.parametrize("kind", sorted(STATUS_MODELS))
def test_never_raises_on_malformed_shapes(kind: str) -> None:
    for obj in malformed_objects(kind, FUZZ_PER_KIND, seed=13):
        try:
            result = run_health(kind, obj)
        except lua51.LuaError as error:  # pragma: no cover - the failure message shows the shape
            pytest.fail(f"{kind} health raised on {json.dumps(obj)}: {error}")
        assert result["status"] in ARGO_STATUSES and isinstance(result["message"], str) and result["message"], obj


# ---------------------------------------------------------------- Argo CD's own runtime


def argocd_lua_binary() -> Path:
    """hack/argocd-lua built (once, cached by Argo CD version) by hack/build-binaries.sh."""
    if os.environ.get("MLOPS_ARGOCD_LUA"):
        return Path(os.environ["MLOPS_ARGOCD_LUA"])
    built = subprocess.run([str(REPO / "hack" / "build-binaries.sh"), "argocd-lua"], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"hack/build-binaries.sh argocd-lua failed:\n{built.stderr[-3000:]}")
    return Path(built.stdout.strip().splitlines()[-1]) / "argocd-lua"


@pytest.mark.slow
def test_argo_cd_runtime_gives_the_same_answers() -> None:
    """Every fixture, every combination of the docs table and the malformed shapes, evaluated by
    gopher-lua with Argo CD v3.6.1's sandbox (what users' Argo CD runs): no error, and the same
    status and message as the Lua 5.1 runs above."""
    cases = [(kind, obj) for _, kind, obj, _, _ in CASES]
    cases += [(kind, obj) for kind, _, obj in argocd_health.all_rows()]
    for kind in sorted(STATUS_MODELS):
        cases += [(kind, obj) for obj in malformed_objects(kind, FUZZ_PER_KIND, seed=13)]
    payload = json.dumps({"scripts": SCRIPTS, "cases": [{"kind": k, "obj": o} for k, o in cases]})
    done = subprocess.run([str(argocd_lua_binary())], input=payload, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(cases)
    mismatches = []
    for (kind, obj), answer in zip(cases, answers):
        assert "error" not in answer, (kind, json.dumps(obj), answer)
        assert answer["status"] in ARGO_STATUSES - {"Unknown"}, (kind, obj, answer)
        expected = run_health(kind, obj)
        if (answer["status"], answer["message"]) != (expected["status"], expected["message"]):
            mismatches.append((kind, json.dumps(obj), answer, expected))
    assert not mismatches, mismatches[:5]
    print(f"\n{len(cases)} objects evaluated by Argo CD's Lua runtime: all agree with Lua 5.1")
