"""What the schema cannot express is caught by the semantic checks."""

from __future__ import annotations

from mlops_operator.api.driftmonitor import DriftMonitorSpec
from mlops_operator.api.modeldeployment import ModelDeploymentSpec
from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.reconcile.durations import parse_duration
from mlops_operator.api.errors import InvalidSpec
from mlops_operator.backends import estimators
from mlops_operator.reconcile.validation import (
    endpoint_problem,
    deployment_spec_errors,
    drift_spec_errors,
    estimator_problems,
    training_spec_errors,
)
import pytest
from datetime import timedelta


def training(**overrides):
    spec = {"model": "iris", "dataset": {"uri": "sklearn://iris", "target": "target"}, **overrides}
    return ModelTrainingSpec.model_validate(spec)


def test_valid_training_has_no_problems():
    assert training_spec_errors(training(schedule="*/5 * * * *")) == []


def test_cron_that_passes_the_pattern_but_not_croniter():
    problems = training_spec_errors(training(schedule="99 * * * *"))
    assert len(problems) == 1 and problems[0].startswith("spec.schedule")


def test_kfp_backend_needs_a_host_somewhere():
    assert training_spec_errors(training(backend="kfp"))[0].startswith("spec.kfp.host")
    assert training_spec_errors(training(backend="kfp"), default_kfp_host="http://kfp:8888") == []


def test_unsupported_dataset_scheme():
    spec = training(dataset={"uri": "ftp://x/y.csv", "target": "y"})
    assert "unsupported scheme 'ftp'" in training_spec_errors(spec)[0]


def test_target_in_features():
    spec = training(dataset={"uri": "sklearn://iris", "target": "t", "features": ["a", "t"]})
    assert training_spec_errors(spec) == ["spec.dataset.features: must not contain the target column"]


def test_deployment_checks():
    local_xgb = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "x"}, "runtime": "xgboost"})
    assert "local backend serves sklearn models only" in deployment_spec_errors(local_xgb)[0]
    typed = ModelDeploymentSpec.model_validate(
        {"model": {"fromTraining": "x"}, "region": "us-east-1", "instanceType": "z9.huge"}
    )
    assert "not in the price table" in deployment_spec_errors(typed, {"m5.large"})[0]
    assert deployment_spec_errors(typed, {"z9.huge"}) == []


def test_drift_checks():
    ok = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"}})
    assert drift_spec_errors(ok) == []
    no_window = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"}, "window": {"rows": None}})
    assert drift_spec_errors(no_window) == ["spec.window: needs rows or duration"]
    zero = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"}, "interval": "0s"})
    assert drift_spec_errors(zero) == ["spec.interval: must be positive"]
    unreachable = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"},
                                                   "tests": [{"name": "ks", "threshold": 1.5}]})
    assert drift_spec_errors(unreachable) == [
        "spec.tests[ks].threshold: ks's score is in [0, 1], so a threshold of 1.5 never flags drift (it is an "
        "effect size; significance is spec.alpha)"]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "1h 30m", "-1s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# ---------------------------------------------------------------- issue 13: judged before any run


def test_a_cron_that_never_fires_is_refused():
    for schedule in ("0 0 31 2 *", "0 0 30 2 *"):
        problems = training_spec_errors(training(schedule=schedule))
        assert problems == [f"spec.schedule: {schedule!r} never fires (no time matches it in the next four years)"]
    assert training_spec_errors(training(schedule="0 0 29 2 *")) == []  # leap days come


def test_kfp_host_must_be_http():
    for host, words in (("http://[::1", "not a URL"), ("http://kfp:port", "not a URL"), ("ftp://kfp", "http://")):
        problems = training_spec_errors(training(backend="kfp"), default_kfp_host=host)
        assert len(problems) == 1 and problems[0].startswith("spec.kfp.host") and words in problems[0], problems


def test_huge_free_form_parameters_are_refused():
    spec = training(training={"parameters": {"note": "x" * 20_000}})
    assert training_spec_errors(spec) == [
        "spec.training.parameters: 20011 bytes as JSON, at most 16384 are allowed"]


def test_metrics_must_fit_the_task():
    thresholds = {"thresholds": [{"metric": "rmse", "max": 1.0}]}
    tasks = {"RandomForestClassifier": "classification", "RandomForestRegressor": "regression"}
    problems = training_spec_errors(training(validation=thresholds), estimator_task=tasks.get)
    assert problems == ["spec.validation.thresholds: rmse do not apply to classification (estimator "
                        "RandomForestClassifier); use accuracy, f1, rocAuc"]
    regression = training(validation={"thresholds": [{"metric": "accuracy", "min": 0.5}]},
                          training={"estimator": "RandomForestRegressor"})
    assert "accuracy do not apply to regression" in training_spec_errors(regression, estimator_task=tasks.get)[0]
    explicit = training(validation=thresholds, training={"estimator": "Unknown", "task": "regression"})
    assert training_spec_errors(explicit) == []


class Catalog:
    """An estimator catalogue that knows one classifier, Forest, and one non-estimator, Scaler."""

    def __init__(self, check_error: Exception | None = None):
        self.check_error = check_error
        self.built: list[tuple] = []

    def estimator_task(self, name):
        return "classification" if name == "Forest" else None

    def resolve_estimator(self, name):
        if name != "Scaler":
            raise InvalidSpec(f"unknown estimator {name!r}; did you mean Forest?")
        return object

    def build_estimator(self, name, params, task, seed):
        self.built.append((name, params, task, seed))
        if "depth" in params:
            raise InvalidSpec(f"estimator {name} does not take parameters ['depth']; valid: ['max_depth']")
        return object(), params

    def check_parameters(self, estimator):
        if self.check_error:
            raise self.check_error


def test_estimator_problems_judge_the_estimator_as_the_train_step_builds_it():
    def problems(catalog=None, **spec_training):
        return estimator_problems(training(training={"estimator": "Forest", **spec_training}), catalog or Catalog())

    catalog = Catalog()
    assert problems(catalog, parameters={"max_depth": 3}, seed=7) == []
    assert catalog.built == [("Forest", {"max_depth": 3}, "classification", 7)]  # the task from the estimator
    explicit = Catalog()
    assert problems(explicit, task="regression") == [] and explicit.built[0][2] == "regression"
    assert problems(estimator="Forst") == ["spec.training: unknown estimator 'Forst'; did you mean Forest?"]
    assert problems(estimator="Scaler") == [
        "spec.training.estimator: Scaler is neither a classifier nor a regressor"]
    assert problems(parameters={"depth": 3}) == [
        "spec.training: estimator Forest does not take parameters ['depth']; valid: ['max_depth']"]
    # The estimator library's own refusal of a value, whatever it raises.
    refused = Catalog(ValueError("The 'max_depth' parameter must be an int; got 'deep'"))
    assert problems(refused, parameters={"max_depth": "deep"}) == [
        "spec.training.parameters: estimator Forest: The 'max_depth' parameter must be an int; got 'deep'"]
    long = Catalog(TypeError("x" * 2000))
    assert len(problems(long)[0]) == 1024
    # A custom pipeline interprets spec.training itself: nothing is judged.
    custom = training(training={"estimator": "Forst"}, pipeline={"uri": "file:///p.yaml"})
    assert estimator_problems(custom, Catalog()) == []


@pytest.mark.parametrize("spec_training, problem", [
    ({"estimator": "RandomForestClassifier", "parameters": {"n_estimators": 5}}, None),
    ({"estimator": "RandomForestClasifier"}, "spec.training: unknown estimator 'RandomForestClasifier'; did you mean "
                                             "RandomForestClassifier"),
    ({"estimator": "sklearn.cluster.KMeans"}, "spec.training.estimator: sklearn.cluster.KMeans is neither a classifier "
                                              "nor a regressor"),
    ({"estimator": "RandomForestClassifier", "parameters": {"depth": 3}},
     "spec.training: estimator RandomForestClassifier does not take parameters ['depth']"),
    ({"estimator": "RandomForestRegressor", "task": "classification"},
     "spec.training: estimator RandomForestRegressor is for regression, but the task is classification"),
    ({"estimator": "RandomForestClassifier", "parameters": {"n_estimators": "many"}},
     "spec.training.parameters: estimator RandomForestClassifier: The 'n_estimators' parameter"),
])
def test_estimator_problems_with_the_installed_estimators(spec_training, problem):
    problems = estimator_problems(training(training=spec_training), estimators)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_resources_are_judged_like_quantities():
    """Also for objects stored before the CRD's stricter pattern (the schema is not re-applied)."""
    from mlops_operator.api.modeldeployment import ResourceList

    def problems(**requests):
        spec = ModelDeploymentSpec.model_validate({"model": {"fromTraining": "x"}})
        spec.resources.requests = ResourceList.model_construct(**{"cpu": None, "memory": None, **requests})
        return deployment_spec_errors(spec)
    assert problems(cpu="500m", memory="1Gi") == []
    assert problems(cpu="1.2.3") == ["spec.resources.requests.cpu: '1.2.3' is not a Kubernetes quantity"]
    assert problems(cpu="2000") == ["spec.resources.requests.cpu: '2000' must be above 0 and at most 1024 cores"]
    assert problems(memory="0") == ["spec.resources.requests.memory: '0' must be above 0 and at most 64Ti"]


def test_drift_monitor_namespace_and_durations():
    other = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d", "namespace": "b"}})
    assert drift_spec_errors(other, "a")[0].startswith("spec.deploymentRef.namespace: 'b' is not this")
    assert drift_spec_errors(other, "b") == []
    long = DriftMonitorSpec.model_validate({"deploymentRef": {"name": "d"}, "interval": "999999d"})
    assert drift_spec_errors(long) == ["spec.interval: duration '999999d' is longer than 3650 days"]


def test_durations_never_overflow():
    with pytest.raises(ValueError, match="longer than 3650 days"):
        parse_duration("999999999999999999999d")


@pytest.mark.slow  # imports the handlers package (kopf and every backend)
def test_digest_diff_base_is_small_and_tells_changes():
    import kopf

    from mlops_operator.handlers.diffbase import DigestDiffBaseStorage

    storage = DigestDiffBaseStorage(prefix="mlops.dev", key="last-handled-configuration")
    body = {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelTraining",
            "metadata": {"name": "a", "annotations": {}}, "spec": {"blob": "x" * 300_000}}
    patch = kopf.Patch()
    storage.store(body=kopf.Body(body), patch=patch, essence=storage.build(body=kopf.Body(body)))
    annotations = dict(patch["metadata"]["annotations"])
    assert len(annotations["mlops.dev/last-handled-configuration"]) < 100
    same = kopf.Body({**body, "metadata": {**body["metadata"], "annotations": annotations}})
    assert storage.fetch(body=same) == storage.build(body=same)  # no change
    changed = kopf.Body({**body, "metadata": {**body["metadata"], "annotations": annotations}, "spec": {"blob": "y"}})
    assert storage.fetch(body=changed) != storage.build(body=changed)  # a change
    assert storage.fetch(body=kopf.Body({**body, "metadata": {"name": "a"}})) is None  # never handled


def test_the_digest_diff_base_builds_kopfs_essence_without_copying_the_rest():
    """The same essence as kopf's own build (so stored digests stay valid), from a body whose status and
    managedFields it never copies."""
    import kopf

    from mlops_operator.handlers.diffbase import DigestDiffBaseStorage

    ours = DigestDiffBaseStorage(prefix="mlops.dev", key="last-handled-configuration")
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="mlops.dev", key="last-handled-configuration")
    body = kopf.Body({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "a", "namespace": "team", "uid": "u1", "generation": 3, "finalizers": ["f"],
                     "labels": {"team": "x"}, "managedFields": [{"manager": "kubectl"}],
                     "annotations": {"mlops.dev/last-handled-configuration": '{"sha256":"0"}',
                                     "mlops.dev/approve": "2", "note": "kept",
                                     "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"model": {"name": "iris", "version": "1"}, "backend": "seldon"},
        "status": {"conditions": [{"type": "Ready"}]}})
    assert ours.build(body=body) == kopfs.build(body=body)
    assert ours.build(body=body) == {"spec": body["spec"], "metadata": {
        "labels": {"team": "x"}, "annotations": {"mlops.dev/approve": "2", "note": "kept"}}}
    bare = kopf.Body({"apiVersion": "v1", "kind": "K", "metadata": {"name": "b"}, "spec": {}})
    assert ours.build(body=bare) == kopfs.build(body=bare)


def test_pipeline_parameters_cannot_override_what_the_operator_sets():
    """A tenant's spec.pipeline.parameters moved the model registry (artifact_root) and could name a dataset
    the URI policy never saw (dataset_uri): both are refused before any run, naming where they come from."""
    spec = training(pipeline={"parameters": {"artifact_root": "file:///elsewhere", "dataset_uri": "file:///etc/passwd",
                                             "my_flag": True}})
    assert training_spec_errors(spec) == [
        "spec.pipeline.parameters: artifact_root is set by the operator (from the operator's artifact root: the model "
        "registry); dataset_uri is set by the operator (from spec.dataset.uri, checked by the URI policy): it cannot "
        "be overridden here"]
    assert training_spec_errors(training(pipeline={"parameters": {"my_flag": True}})) == []


def test_every_parameter_the_operator_sets_is_protected():
    """Whatever pipeline_parameters() fills in (every optional input given) is in the protected list."""
    from mlops_operator.api.modeltraining import RetrainWindow
    from mlops_operator.reconcile.modeltraining import pipeline_parameters
    from mlops_operator.reconcile.validation import OPERATOR_PIPELINE_PARAMETERS

    spec = training(productionData={"deploymentRef": {"name": "iris"}, "labelsUri": "file:///tmp/labels/",
                                    "mix": {"minRows": 10}})
    params = pipeline_parameters(spec, "ml", "file:///tmp/artifacts", {"accuracy": 0.9}, champion_uri="file:///tmp/m/1",
                                 production={"rows": 1}, retrain_window=RetrainWindow(monitor="iris"))
    assert params["retrain_window"] == {"monitor": "iris"}
    assert set(params) | {"run_name", "pipeline_digest"} <= set(OPERATOR_PIPELINE_PARAMETERS)


OWN_KFP = "http://ml-pipeline.kubeflow.svc:8888"


@pytest.mark.parametrize("url", [
    None, "",  # unset: the operator's own is used
    OWN_KFP, OWN_KFP + "/", "HTTP://ML-Pipeline.kubeflow.svc:8888/apis",
    "https://kfp.example.com/team-a", "https://kfp.example.com:443/team-a/v2", "https://kfp.example.com./team-a",
])
def test_an_endpoint_is_the_operators_own_or_under_an_allowed_prefix(url):
    assert endpoint_problem("spec.kfp.host", url, OWN_KFP, ["https://kfp.example.com/team-a/"]) is None


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://kubernetes.default.svc:443",
    "http://ml-pipeline.kubeflow.svc:8889",  # another port
    "https://ml-pipeline.kubeflow.svc:8888",  # another scheme
    "http://ml-pipeline.kubeflow.svc.evil.example:8888",  # a host that only starts like the allowed one
    "http://ml-pipeline.kubeflow.svc:8888@evil.example/",  # userinfo: the host is evil.example
    "https://kfp.example.com/team-b",
    "https://kfp.example.com/team-abc",  # a prefix matches whole path segments
    "https://kfp.example.com/team-a/../team-b",  # normalised before the check
    "https://kfp.example.com/team-a/%2e%2e/team-b",
])
def test_any_other_endpoint_is_refused_naming_the_rule(url):
    problem = endpoint_problem("spec.kfp.host", url, OWN_KFP, ["https://kfp.example.com/team-a/"])
    assert problem and problem.startswith(f"spec.kfp.host: {url!r} is not an endpoint this operator may call")
    assert "endpoint allow-list" in problem and "MLOPS_ENDPOINT_PREFIXES" in problem


def test_without_any_allowed_endpoint_a_spec_may_name_none():
    problem = endpoint_problem("spec.rollout.analysis.prometheusUrl", "http://prometheus:9090", None, [])
    assert problem and "none is set" in problem
    assert endpoint_problem("spec.rollout.analysis.prometheusUrl", None, None, []) is None


def test_endpoint_prefixes_setting_is_comma_separated_http_urls(monkeypatch):
    from pydantic import ValidationError

    from mlops_operator.settings import Settings

    monkeypatch.setenv("MLOPS_ENDPOINT_PREFIXES", "http://prometheus.team-a.svc:9090, https://kfp.example.com/")
    assert Settings().endpoint_prefixes == ["http://prometheus.team-a.svc:9090", "https://kfp.example.com/"]
    monkeypatch.setenv("MLOPS_ENDPOINT_PREFIXES", "prometheus:9090")
    with pytest.raises(ValidationError, match="not an http:// or https:// URL prefix"):
        Settings()


@pytest.mark.slow  # imports the handlers package (kopf and every backend)
def test_deployments_are_filed_under_the_training_they_follow():
    """handlers.modeldeployment keeps (namespace, training) -> deployments from the deployments' watch
    events: a change of spec.model.fromTraining moves it, a deletion or a pinned model removes it."""
    from mlops_operator.handlers import modeldeployment as md

    def event(kind, name, training, namespace="team"):
        model = {"fromTraining": training} if training else {"uri": "file:///m", "version": "1"}
        md._track_followers(kind, {"metadata": {"namespace": namespace, "name": name}, "spec": {"model": model}})

    event(None, "a", "iris")
    event("ADDED", "b", "iris")
    event("ADDED", "c", "iris", namespace="other")
    assert md.followers("team", "iris") == ["a", "b"] and md.followers("other", "iris") == ["c"]
    event("MODIFIED", "b", "wine")
    assert md.followers("team", "iris") == ["a"] and md.followers("team", "wine") == ["b"]
    event("MODIFIED", "a", None)
    event("DELETED", "b", "wine")
    event("DELETED", "c", "iris", namespace="other")
    assert md.followers("team", "iris") == md.followers("team", "wine") == md.followers("other", "iris") == []
    assert not md._followers and not md._following
