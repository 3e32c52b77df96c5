"""Secret keys → fsspec storage options (spec.dataset.credentialsSecretRef), and where they may not go."""

from __future__ import annotations

import json

from mlops_operator.api.modeltraining import ModelTrainingSpec
from mlops_operator.backends.storage_credentials import (
    DATASET_CREDENTIALS_DIR_ENV,
    DATASET_STORAGE_OPTIONS_ENV,
    dataset_env,
    dataset_storage_options,
    storage_options_from_dir,
    storage_options_from_secret,
)
from mlops_operator.reconcile import trainingjob
from mlops_operator.reconcile.validation import training_spec_errors
from mlops_operator.components.extract import STORAGE_OPTIONS_ENV


def test_aws_names_and_fsspec_names_become_s3fs_options():
    aws = {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok",
           "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-central-1"}
    assert storage_options_from_secret(aws) == {"key": "AKIA1", "secret": "s3cr3t", "token": "tok",
                                                "endpoint_url": "http://minio:9000",
                                                "client_kwargs": {"region_name": "eu-central-1"}}
    plain = {"key": "AKIA1", "secret": "s3cr3t", "anon": "false"}
    assert storage_options_from_secret(plain) == plain


def test_the_run_gets_them_through_one_environment_variable_the_step_reads():
    assert DATASET_STORAGE_OPTIONS_ENV == STORAGE_OPTIONS_ENV
    env = dataset_env({"key": "k", "secret": "s"})
    assert list(env) == [STORAGE_OPTIONS_ENV] and json.loads(env[STORAGE_OPTIONS_ENV]) == {"key": "k", "secret": "s"}


def test_backend_kfp_refuses_a_credentials_secret_it_could_not_hand_over():
    spec = {"model": "iris", "dataset": {"uri": "s3://data/iris.csv", "target": "y",
                                         "credentialsSecretRef": {"name": "data-creds"}}}
    assert training_spec_errors(ModelTrainingSpec.model_validate(spec)) == []
    kfp = ModelTrainingSpec.model_validate({**spec, "backend": "kfp", "kfp": {"host": "http://kfp"}})
    (problem,) = training_spec_errors(kfp)
    assert problem.startswith("spec.dataset.credentialsSecretRef: honoured by backends local and job, not kfp")
    job = ModelTrainingSpec.model_validate({**spec, "backend": "job"})
    assert training_spec_errors(job) == []


def test_a_secret_volume_gives_the_same_options_and_its_own_links_are_not_keys(tmp_path):
    """A Job's Pod reads the Secret as the kubelet mounts it: key files are links into a ..data directory."""
    data = tmp_path / "..2026_11_30_03_00_00.1"
    data.mkdir()
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3cr3t\n"}.items():
        (data / key).write_text(value)
        (tmp_path / key).symlink_to(f"..data/{key}")
    (tmp_path / "..data").symlink_to(data.name)
    assert storage_options_from_dir(tmp_path) == {"key": "AKIA1", "secret": "s3cr3t"}
    assert dataset_storage_options({DATASET_CREDENTIALS_DIR_ENV: str(tmp_path)}) == {"key": "AKIA1", "secret": "s3cr3t"}
    assert dataset_storage_options({}) is None
    # The Job manifest names the mount with the same variable the step reads.
    assert trainingjob.DATASET_CREDENTIALS_DIR_ENV == DATASET_CREDENTIALS_DIR_ENV
