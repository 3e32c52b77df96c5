"""A small KFP v2 pipeline with typed parameters, for the contract tests.

No ``from __future__ import annotations`` here: kfp reads the real annotation types.
"""

from kfp import dsl


@dsl.component(base_image="python:3.11-slim")
def train(dataset_uri: str, n_estimators: int, learning_rate: float, balanced: bool) -> float:
    return 0.9


@dsl.component(base_image="python:3.11-slim")
def evaluate(score: float, threshold: float) -> bool:
    return score >= threshold


@dsl.pipeline(name="tiny-train")
def tiny_train(
    dataset_uri: str,
    n_estimators: int = 100,
    learning_rate: float = 0.1,
    balanced: bool = False,
    threshold: float = 0.5,
) -> bool:
    trained = train(dataset_uri=dataset_uri, n_estimators=n_estimators, learning_rate=learning_rate, balanced=balanced)
    return evaluate(score=trained.output, threshold=threshold).output


def configured_pipeline(configure: bool):
    """A one-step pipeline; with ``configure`` its task carries resources, a GPU, retries, a node
    selector and a toleration set through kfp's DSL and kfp-kubernetes."""
    from kfp import kubernetes

    @dsl.pipeline(name="probe")
    def probe(x: int = 1):
        task = evaluate(score=0.5, threshold=0.1)
        if configure:
            task.set_cpu_request("250m").set_cpu_limit("1").set_memory_request("512Mi").set_memory_limit("2Gi")
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(2)
            task.set_retry(3)
            kubernetes.add_node_selector(task, "pool", "gpu")
            kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")

    return probe
