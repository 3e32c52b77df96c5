"""The committed pipelines/tabular.yaml is what pipelines/tabular.py compiles to, and has the agreed shape."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPILED = REPO_ROOT / "pipelines" / "tabular.yaml"

PARAMETERS = {
    "dataset_uri", "dataset_format", "target", "features", "task", "estimator", "estimator_params", "test_size",
    "seed", "validation", "gate", "baseline_metrics", "max_regression", "artifact_root", "model_name", "model_namespace", "run_name",
    "pipeline_digest", "production_data", "mix", "champion_model_uri", "retrain_window",
}
OUTPUTS = {"model_version", "model_uri", "metrics", "validated", "validation_reasons", "profile_uri", "dataset_digest",
           "sources", "comparison"}
# Two tasks run the seven steps (mlops_operator.components.stages): each task is a process or a pod.
TASKS = ["prepare-data", "train-model"]


def load_pipeline_module() -> ModuleType:
    name = "mlops_pipelines_tabular"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "pipelines" / "tabular.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def committed() -> dict:
    return yaml.safe_load(COMPILED.read_text())


def test_committed_yaml_is_current(tmp_path: Path, committed: dict) -> None:
    fresh = load_pipeline_module().compile_pipeline(tmp_path / "tabular.yaml")
    assert yaml.safe_load(fresh.read_text()) == committed, (
        "pipelines/tabular.yaml is stale: run `python pipelines/tabular.py` (or `make manifests`) and commit it"
    )


def test_parameters_and_outputs(committed: dict) -> None:
    assert committed["pipelineInfo"]["name"] == "tabular-training"
    inputs = committed["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == PARAMETERS
    required = {name for name, spec in inputs.items() if not spec.get("isOptional")}
    assert required == {"dataset_uri", "target", "model_name", "model_namespace", "artifact_root"}
    assert inputs["estimator_params"]["parameterType"] == "STRING"  # JSON text: keeps int vs float
    assert set(committed["root"]["outputDefinitions"]["parameters"]) == OUTPUTS


def test_steps_run_in_the_operator_image_without_installs_or_cache(committed: dict) -> None:
    tasks = committed["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(TASKS)
    assert tasks["train-model"]["dependentTasks"] == ["prepare-data"]
    for task in tasks.values():
        assert task["cachingOptions"] == {}  # enableCache false is the proto default, so it is omitted
    module = load_pipeline_module()
    for name, executor in committed["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == module.BASE_IMAGE, name
        assert not any("pip install" in part for part in container["command"]), name
        assert "from mlops_operator.components.stages import run_" in container["command"][-1], name
