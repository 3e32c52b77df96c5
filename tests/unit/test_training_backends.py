"""Every training backend implements the one protocol the ModelTraining handler uses."""

from __future__ import annotations

import inspect

from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.backends.training import BACKENDS, TrainingBackend, training_backend
from mlops_operator.settings import Settings


def test_every_spec_backend_has_an_implementation_of_the_protocol():
    assert set(BACKENDS) == set(ModelTrainingSpec.model_fields["backend"].annotation.__args__)
    methods = {name for name, member in vars(TrainingBackend).items()
               if not name.startswith("_") and inspect.isfunction(member)}
    assert methods == {"submit", "observe", "cancel", "sync_schedule", "cleanup"}
    for name, backend in BACKENDS.items():
        assert isinstance(backend.schedules_runs, bool), name
        for method in methods:
            implementation = getattr(backend, method)
            assert inspect.iscoroutinefunction(implementation), f"{name}.{method}"
            assert inspect.signature(implementation) == inspect.signature(getattr(TrainingBackend, method)), \
                f"{name}.{method}"


def test_the_backend_is_chosen_by_spec_backend():
    base = {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}}
    local = training_backend(ModelTrainingSpec.model_validate(base), "ns", "iris", Settings())
    kfp = training_backend(ModelTrainingSpec.model_validate({**base, "backend": "kfp", "kfp": {"host": "http://k"}}),
                           "ns", "iris", Settings())
    assert (type(local).__name__, local.schedules_runs) == ("LocalTraining", False)
    assert (type(kfp).__name__, kfp.schedules_runs) == ("KfpTraining", True)
    assert kfp.recurring_run_name == "ns.iris"
