"""The Argo CD health checks (deploy/argocd/health/*.lua) in a real Lua 5.1 runtime, against status
fixtures for every state of each kind.

The scripts are taken from the generated deploy/argocd/argocd-cm.yaml, i.e. exactly what ships, and
run in a sandbox like Argo CD's: gopher-lua is Lua 5.1, and custom health scripts get only the base,
package, table and a safe os library (no string or math). Every fixture's status is validated
against the kind's pydantic status model, so a fixture cannot use a field the API does not have.
"""

from __future__ import annotations

import re
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
    "ModelDeployment": ("Ready", "Progressing", "AwaitingApproval", "Degraded"),
    "DriftMonitor": ("Ready", "DriftDetected"),
}
T0 = "2025-01-01T00:00:00Z"


def health_scripts() -> dict[str, str]:
    """Kind -> health.lua as shipped in the argocd-cm snippet."""
    data = yaml.safe_load(CONFIG_MAP.read_text())["data"]
    prefix = "resource.customizations.health.mlops.dev_"
    return {key.removeprefix(prefix): script for key, script in data.items() if key.startswith(prefix)}


SCRIPTS = health_scripts()


def argo_lua_runtime() -> lua51.LuaRuntime:
    """A Lua 5.1 state limited to what Argo CD opens for custom health scripts."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(
        """
        local time, date, clock = os.time, os.date, os.clock
        os = {time = time, date = date, clock = clock}   -- Argo CD's OpenSafeOs
        string, math, io, debug, coroutine = nil, nil, nil, nil, nil
        getmetatable("").__index = nil                   -- no ("x"):upper() without the string library
        """
    )
    return lua


def run_health(kind: str, obj: dict[str, Any], script: str | None = None) -> dict[str, Any]:
    """Run a health script with ``obj`` as the global ``obj``; return the table it returns."""
    lua = argo_lua_runtime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script if script is not None else SCRIPTS[kind])
    assert lua.eval("type")(result) == "table", f"the script returned {result!r}"
    return {key: value for key, value in result.items()}


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
    named_conditions = set(re.findall(r'condition\(obj, "(\w+)"\)', script))
    lagging = re.search(r"lagging\(obj, \{([^}]*)\}\)", script)
    assert lagging, "the script must check observedGeneration"
    lagging_conditions = set(re.findall(r'"(\w+)"', lagging.group(1)))
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
def test_condition_types_match_the_handlers() -> None:
    from mlops_operator.handlers import driftmonitor, modeldeployment, modeltraining

    handlers = {"ModelTraining": modeltraining, "ModelDeployment": modeldeployment, "DriftMonitor": driftmonitor}
    for kind, module in handlers.items():
        assert set(module.CONDITIONS) == set(CONDITION_TYPES[kind]), kind
