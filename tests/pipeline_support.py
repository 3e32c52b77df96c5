"""What the built-in pipeline's steps do, for tests in which the pipeline's pods do not run (KFP's
driver needs ML Metadata, which cannot run here)."""

from __future__ import annotations

from pathlib import Path

from mlops_operator.backends import artifacts


def export(root: str, namespace: str, model: str, run_name: str, accuracy: float, directory: Path) -> int:
    """What the export step does for the run named ``run_name`` of a ModelTraining in ``namespace``: claim
    a version keyed by the run name and publish it (a placeholder model file, the given accuracy, validated)."""
    version = artifacts.allocate_version(root, namespace, model, run_name=run_name)
    model_file = directory / f"model-{version}.joblib"
    model_file.write_bytes(b"not a real model")
    artifacts.publish_model_version(root, namespace, model, version, model_file=model_file, metrics={"accuracy": accuracy},
                                    validated=True, reasons=[], profile={}, lineage={"run": {"name": run_name}})
    return version
