"""A compiled KFP pipeline package (IR YAML) and the arguments of a run of it, for every training backend.

The built-in pipeline's path, its digest (recorded in each model version's lineage), its root inputs, and
the arguments a request turns into: parameter types coerced to the pipeline's inputs, ``run_name``,
``artifact_root`` and ``pipeline_digest`` filled in. Pure file reading; no backend imports this module's
callers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from mlops_operator.backends.artifacts import default_artifact_root

PIPELINE_PACKAGE_ENV = "MLOPS_PIPELINE_PACKAGE"
# Keys of a request that are not pipeline parameters.
REQUEST_KEYS = frozenset({"namespace", "pipeline_package", "parameters", "retries"})


def default_pipeline_package() -> Path:
    """The compiled built-in pipeline: ``$MLOPS_PIPELINE_PACKAGE``, else ``pipelines/tabular.yaml``
    beside the package (source checkout) or inside it (``mlops_operator/pipelines/``)."""
    env = os.environ.get(PIPELINE_PACKAGE_ENV)
    if env:
        return Path(env)
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "pipelines" / "tabular.yaml", package_dir.parent.parent / "pipelines" / "tabular.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"compiled pipeline tabular.yaml not found; set {PIPELINE_PACKAGE_ENV}")


def pipeline_digest(package: str | Path) -> str:
    """sha256 of a compiled pipeline package's bytes."""
    return hashlib.sha256(Path(package).read_bytes()).hexdigest()


def pipeline_inputs(package: str | Path) -> dict[str, dict[str, Any]]:
    """The root input parameters of a compiled pipeline: ``{name: {"parameterType", "isOptional", ...}}``."""
    spec = next(yaml.safe_load_all(Path(package).read_text()))  # a second document is the platform spec
    return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


def pipeline_arguments(
    request: dict[str, Any], run_name: str, data_dir: str | Path, package: str | Path | None = None
) -> dict[str, Any]:
    """The pipeline arguments for a request (also usable by a KFP backend).

    Pipeline parameters come from ``request["parameters"]`` and from any top-level key that is not
    one of REQUEST_KEYS. Fills ``run_name``, ``artifact_root`` (``file://<data_dir>/artifacts``) and
    ``pipeline_digest``; turns a number ``max_regression`` into ``{"*": number}`` and a list ``gate``
    of ``{"metric", "min", "max"}`` into ``{metric: {"min", "max"}}``; drops None values so the
    pipeline's defaults apply. Raises ValueError for unknown or missing parameters.
    """
    package = Path(package) if package else default_pipeline_package()
    args = {k: v for k, v in request.items() if k not in REQUEST_KEYS}
    args.update(request.get("parameters") or {})
    args = {k: v for k, v in args.items() if v is not None}
    args.setdefault("run_name", run_name)
    args.setdefault("artifact_root", default_artifact_root(data_dir))
    inputs = pipeline_inputs(package)
    if "pipeline_digest" in inputs:
        args["pipeline_digest"] = pipeline_digest(package)
    if isinstance(args.get("max_regression"), (int, float)) and not isinstance(args["max_regression"], bool):
        args["max_regression"] = {"*": float(args["max_regression"])}
    if isinstance(args.get("gate"), list):
        args["gate"] = {
            item["metric"]: {k: item[k] for k in ("min", "max") if item.get(k) is not None} for item in args["gate"]
        }
    unknown = sorted(set(args) - set(inputs))
    if unknown:
        raise ValueError(f"unknown pipeline parameters {unknown}; the pipeline takes {sorted(inputs)}")
    missing = sorted(name for name, spec in inputs.items() if not spec.get("isOptional") and name not in args)
    if missing:
        raise ValueError(f"missing pipeline parameters {missing}")
    for name, spec in inputs.items():
        if name in args:
            args[name] = _coerce(name, args[name], spec.get("parameterType", ""))
    return args


def _coerce(name: str, value: Any, parameter_type: str) -> Any:
    try:
        if parameter_type == "NUMBER_INTEGER":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if parameter_type == "NUMBER_DOUBLE":
            return float(value)
        if parameter_type == "STRING":
            # Objects go as JSON text where the pipeline wants exact numbers (estimator_params).
            return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        if parameter_type == "BOOLEAN":
            return bool(value)
        if parameter_type == "STRUCT" and not isinstance(value, dict):
            raise ValueError("not an object")
        if parameter_type == "LIST" and not isinstance(value, list):
            raise ValueError("not a list")
    except (TypeError, ValueError) as err:
        raise ValueError(f"pipeline parameter {name}={value!r} is not a valid {parameter_type}: {err}") from err
    return value
