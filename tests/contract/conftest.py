"""Fixtures for contract tests against the fake-but-validating KFP v2beta1 API."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .kfp_api_server import KfpApiServer

TOKEN = "s3cr3t-kfp-token-7f4e2a"
"""The bearer token the fake API expects; tests assert it never leaks."""


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small KFP v2 pipeline with typed parameters, compiled to IR YAML."""
    from kfp import compiler

    from .tiny_pipeline import tiny_train

    path = tmp_path_factory.mktemp("pipelines") / "tiny-train.yaml"
    compiler.Compiler().compile(tiny_train, str(path))
    return path


@pytest.fixture
def kfp_api() -> Iterator[KfpApiServer]:
    """The fake KFP API (token-protected). Fails the test if any request broke the contract."""
    with KfpApiServer(token=TOKEN) as server:
        yield server
    assert server.violations == [], "requests the KFP API would reject"
