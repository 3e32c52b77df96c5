"""The Argo CD health checks run in a Lua 5.1 sandbox like Argo CD's, and the table of every condition
combination's health that hack/gen-manifests.py writes to docs/argocd-health.md.

Used by hack/gen-manifests.py and tests/unit/test_argocd_health.py (which also runs every row through
Argo CD's own runtime, hack/argocd-lua, and checks both agree).
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

from lupa import lua51

KINDS = ("ModelTraining", "ModelDeployment", "DriftMonitor")
T0 = "2025-01-01T00:00:00Z"
GENERATION = 2


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


def evaluate(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Run a health script with ``obj`` as the global ``obj``; the table it returns, as a dict.

    Raises ``lupa.lua51.LuaError`` when the script raises.
    """
    lua = argo_lua_runtime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    if lua.eval("type")(result) != "table":
        raise TypeError(f"the script returned {result!r}, not a table")
    return {key: value for key, value in result.items()}


def condition(type_: str, state: str, generation: int = GENERATION) -> dict[str, Any]:
    """A condition from ``Status`` or ``Status/Reason``."""
    status, _, reason = state.partition("/")
    reason = reason or {"True": "AsExpected", "False": "Failed", "Unknown": "Reconciling"}[status]
    return {"type": type_, "status": status, "reason": reason, "message": f"{type_} is {status} ({reason})",
            "lastTransitionTime": T0, "observedGeneration": generation}


def resource(kind: str, conditions: dict[str, str], *, stale: tuple[str, ...] = (), observed: int = GENERATION,
             **status: Any) -> dict[str, Any]:
    """An object at generation 2 with the given conditions (``absent`` leaves one out); the types in
    ``stale`` describe generation 1."""
    listed = [condition(t, s, GENERATION - 1 if t in stale else GENERATION)
              for t, s in conditions.items() if s != "absent"]
    return {"apiVersion": "mlops.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "iris", "namespace": "ml", "generation": GENERATION},
            "spec": {}, "status": {"observedGeneration": observed, "conditions": listed, **status}}


MODEL = {"version": 3, "uri": "file:///models/iris/3"}

# Per kind: (column titles, rows of (cells, object)).
Row = tuple[tuple[str, ...], dict[str, Any]]


def combinations(kind: str) -> tuple[tuple[str, ...], list[Row]]:
    """Every combination of the states that matter for one kind, plus the generation-lag cases."""
    rows: list[Row] = []
    if kind == "ModelTraining":
        columns = ("Succeeded", "Validated", "latestValidatedModel", "latestRun.state", "generation")
        for succeeded, validated, model, state in itertools.product(
                ("absent", "Unknown", "True", "False/RunFailed", "False/InvalidSpec"),
                ("absent", "Unknown", "True", "False/ValidationFailed"), (False, True), ("Succeeded", "Running")):
            extra: dict[str, Any] = {"latestRun": {"name": "iris-2-abc", "trigger": "spec (generation 2)", "state": state}}
            if model:
                extra["latestValidatedModel"] = MODEL
            obj = resource(kind, {"Succeeded": succeeded, "Validated": validated}, **extra)
            rows.append(((succeeded, validated, "yes" if model else "no", state, "current"), obj))
        lag = {"latestValidatedModel": MODEL}
        rows += [
            (("True", "True", "yes", "-", "status.observedGeneration behind"),
             resource(kind, {"Succeeded": "True", "Validated": "True"}, observed=1, **lag)),
            (("True", "True", "yes", "-", "Succeeded behind"),
             resource(kind, {"Succeeded": "True", "Validated": "True"}, stale=("Succeeded",), **lag)),
            (("True", "True", "yes", "-", "Validated behind"),
             resource(kind, {"Succeeded": "True", "Validated": "True"}, stale=("Validated",), **lag)),
            (("False/RunFailed", "True", "yes", "-", "Validated behind"),
             resource(kind, {"Succeeded": "False/RunFailed", "Validated": "True"}, stale=("Validated",), **lag)),
            (("False/InvalidSpec", "True", "yes", "-", "Validated behind"),
             resource(kind, {"Succeeded": "False/InvalidSpec", "Validated": "True"}, stale=("Validated",), **lag)),
            (("False/InvalidSpec", "True", "yes", "-", "Succeeded behind (an old invalid spec)"),
             resource(kind, {"Succeeded": "False/InvalidSpec", "Validated": "True"}, stale=("Succeeded",), **lag)),
        ]
        return columns, rows
    if kind == "ModelDeployment":
        columns = ("Ready", "Progressing", "AwaitingApproval", "Degraded", "generation")
        for ready, progressing, awaiting, degraded in itertools.product(
                ("absent", "Unknown", "True", "False/ServerCrashLoop", "False/WaitingForModel", "False/Starting",
                 "False/InvalidSpec"),
                ("absent", "True", "False"), ("False", "True"), ("False", "True")):
            obj = resource(kind, {"Ready": ready, "Progressing": progressing, "AwaitingApproval": awaiting,
                                  "Degraded": degraded}, stableVersion="3", candidateVersion="4")
            rows.append(((ready, progressing, awaiting, degraded, "current"), obj))
        healthy = {"Ready": "True", "Progressing": "False", "AwaitingApproval": "False", "Degraded": "False"}
        rows += [
            (("True", "False", "False", "False", "status.observedGeneration behind"),
             resource(kind, healthy, observed=1)),
            (("True", "False", "False", "False", "Ready behind"), resource(kind, healthy, stale=("Ready",))),
            (("True", "False", "False", "False", "Progressing behind"),
             resource(kind, healthy, stale=("Progressing",))),
            (("False/InvalidSpec", "False", "False", "False", "the others behind"),
             resource(kind, {**healthy, "Ready": "False/InvalidSpec"},
                      stale=("Progressing", "AwaitingApproval", "Degraded"))),
            (("False/ServerCrashLoop", "True", "False", "False", "the others behind"),
             resource(kind, {**healthy, "Ready": "False/ServerCrashLoop", "Progressing": "True"},
                      stale=("Progressing", "AwaitingApproval", "Degraded"))),
        ]
        return columns, rows
    columns = ("Ready", "DriftDetected", "phase", "generation")
    for ready, drift, phase in itertools.product(
            ("absent", "Unknown", "True", "False/ReferenceUnavailable", "False/NoServedModel", "False/NoRequestsYet",
             "False/InvalidSpec"),
            ("absent", "Unknown", "True", "False"), ("NoDrift", "InsufficientData")):
        obj = resource(kind, {"Ready": ready, "DriftDetected": drift}, phase=phase)
        rows.append(((ready, drift, phase, "current"), obj))
    rows += [
        (("True", "False", "NoDrift", "status.observedGeneration behind"),
         resource(kind, {"Ready": "True", "DriftDetected": "False"}, observed=1, phase="NoDrift")),
        (("True", "False", "NoDrift", "DriftDetected behind"),
         resource(kind, {"Ready": "True", "DriftDetected": "False"}, stale=("DriftDetected",), phase="NoDrift")),
        (("False/InvalidSpec", "False", "Invalid", "DriftDetected behind"),
         resource(kind, {"Ready": "False/InvalidSpec", "DriftDetected": "False"}, stale=("DriftDetected",),
                  phase="Invalid")),
    ]
    return columns, rows


def all_rows() -> Iterator[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """(kind, cells, object) of every row of every kind's table."""
    for kind in KINDS:
        for cells, obj in combinations(kind)[1]:
            yield kind, cells, obj


def render(scripts: dict[str, str]) -> str:
    """docs/argocd-health.md: each kind's table, health computed by running the shipped scripts."""
    out = [
        "<!-- Generated by hack/gen-manifests.py (hack/argocd_health.py) from deploy/argocd/health/*.lua. "
        "Do not edit. -->\n",
        "# Argo CD health of every condition combination\n\n",
        "What the shipped health checks (`deploy/argocd/argocd-cm.yaml`) answer for each combination of the\n"
        "conditions that matter, computed by running them; `tests/unit/test_argocd_health.py` checks that this\n"
        "file is current and that Argo CD's own Lua runtime (gopher-lua with Argo CD's sandbox,\n"
        "`hack/argocd-lua`) gives the same answers. A condition is `Status/Reason`; `absent` means the\n"
        "condition is not in the list. \"behind\" means it (or `status.observedGeneration`) describes an older\n"
        "`metadata.generation`. Rules, in order: no status → Progressing; the summary condition\n"
        "(`Succeeded` or `Ready`) says `InvalidSpec` for the current generation → Degraded; the operator has\n"
        "not observed the current generation → Progressing; a current failing verdict (a failed run, a\n"
        "deployment that does not serve, checks that fail) → Degraded even while other conditions are\n"
        "behind; any other condition behind → Progressing; then each kind's own rules (see the scripts).\n",
    ]
    for kind in KINDS:
        columns, rows = combinations(kind)
        out.append(f"\n## {kind}\n\n")
        out.append("| " + " | ".join(columns) + " | health |\n")
        out.append("|" + "---|" * (len(columns) + 1) + "\n")
        for cells, obj in rows:
            health = evaluate(scripts[kind], obj)["status"]
            out.append("| " + " | ".join(cells) + f" | **{health}** |\n")
    return "".join(out)
