"""Credentials for object storage that a spec references by Secret (``spec.dataset.credentialsSecretRef``).

The Secret's keys become fsspec storage options. Keys may be fsspec/s3fs option names (``key``,
``secret``, ``token``, ``endpoint_url``, ``region``) or the AWS environment names that S3
credentials Secrets usually carry (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``); any other
key is passed through as it is (options of other filesystems).

The options reach a local training run through the environment variable
:data:`DATASET_STORAGE_OPTIONS_ENV` of its runner process (never its request file, status, events
or logs). A Job's Pod (backend job) gets the Secret itself as a volume, never copied: the kubelet
mounts it and :data:`DATASET_CREDENTIALS_DIR_ENV` names the directory. Either way the extract step
(:func:`dataset_storage_options`) passes them to fsspec for the dataset only. The operator's own artifact
store keeps using the operator's credentials (environment, IRSA web identity).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DATASET_STORAGE_OPTIONS_ENV = "MLOPS_DATASET_STORAGE_OPTIONS"
DATASET_CREDENTIALS_DIR_ENV = "MLOPS_DATASET_CREDENTIALS_DIR"
"""A directory holding the Secret's keys as files (a Secret volume): one file per key."""

_ALIASES = {
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_SESSION_TOKEN": "token",
    "AWS_ENDPOINT_URL": "endpoint_url",
    "AWS_ENDPOINT_URL_S3": "endpoint_url",
}
_REGION_KEYS = ("AWS_REGION", "AWS_DEFAULT_REGION", "region", "region_name")


def storage_options_from_secret(data: Mapping[str, str]) -> dict[str, Any]:
    """fsspec storage options from a Secret's (decoded) data."""
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key in _REGION_KEYS:
            options.setdefault("client_kwargs", {})["region_name"] = value
        else:
            options[_ALIASES.get(key, key)] = value
    return options


def dataset_env(data: Mapping[str, str]) -> dict[str, str]:
    """The environment that hands a Secret's storage options to a training run."""
    return {DATASET_STORAGE_OPTIONS_ENV: json.dumps(storage_options_from_secret(data))}


def storage_options_from_dir(directory: str | Path) -> dict[str, Any]:
    """fsspec storage options from a Secret volume: each regular file is a key (the volume's own
    ``..data`` links and dot files are not keys)."""
    data = {}
    for entry in sorted(Path(directory).iterdir()):
        if not entry.name.startswith(".") and entry.is_file():
            data[entry.name] = entry.read_text().rstrip("\r\n")
    return storage_options_from_secret(data)


def dataset_storage_options(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The dataset's storage options this process was given (None: the process's own credentials)."""
    environ = os.environ if environ is None else environ
    if environ.get(DATASET_STORAGE_OPTIONS_ENV):
        return json.loads(environ[DATASET_STORAGE_OPTIONS_ENV])
    if environ.get(DATASET_CREDENTIALS_DIR_ENV):
        return storage_options_from_dir(environ[DATASET_CREDENTIALS_DIR_ENV])
    return None
