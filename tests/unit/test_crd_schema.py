"""The generated CRDs are structural, documented, current, and say what the models say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.api import KINDS
from mlops_operator.api.crd import build_crd, crd_filename, render

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "uniqueItems", "title", "definitions"}


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    nodes = [(path or "<root>", schema)]
    for name, sub in schema.get("properties", {}).items():
        nodes += walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        nodes += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def schema_of(kind) -> dict[str, Any]:
    return build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.info.kind)
def test_schema_is_structural(kind):
    problems = []
    for path, node in walk(schema_of(kind)):
        for key in FORBIDDEN & set(node):
            problems.append(f"{path}: {key}")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties false")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        if node.get("nullable") is not None and "type" not in node:
            problems.append(f"{path}: nullable without type")
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node and not isinstance(node[bound], bool):
                problems.append(f"{path}: numeric {bound}")
    assert problems == []


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.info.kind)
def test_every_field_has_a_description(kind):
    undocumented = [
        path
        for path, node in walk(schema_of(kind))
        if path not in ("<root>", ".metadata") and not node.get("description")
        # items of a list of scalars describe nothing beyond their list
        and not (path.endswith("[]") and node.get("type") in ("string", "number", "integer"))
        and not path.endswith("{}")
    ]
    assert undocumented == []


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.info.kind)
def test_committed_crd_is_current(kind):
    committed = REPO / "crds" / crd_filename(kind)
    assert committed.read_text() == render(kind), f"{committed} is stale: run `make manifests`"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.info.kind)
def test_crd_metadata(kind):
    crd = build_crd(kind)
    names = crd["spec"]["names"]
    assert names["categories"] == ["mlops"]
    assert names["shortNames"] == list(kind.info.short_names)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Age"} <= columns
    assert columns & {"Ready", "Succeeded", "Drift"}
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    # YAML round trip is lossless.
    assert yaml.safe_load(render(kind)) == crd


def test_short_names_are_unique():
    short = [name for kind in KINDS for name in kind.info.short_names]
    assert sorted(short) == ["dm", "md", "mt"]


def test_optional_fields_are_not_nullable_and_not_required():
    spec = schema_of(KINDS[1])["properties"]["spec"]
    assert spec["required"] == ["model"]
    model = spec["properties"]["model"]
    assert "required" not in model
    assert model["properties"]["uri"] == {
        "description": model["properties"]["uri"]["description"],
        "type": "string",
        "maxLength": 2048,
        "pattern": r"^[^\s\x00-\x1f\x7f]+$",
    }


def test_defaults_enums_bounds_and_rules_reach_the_schema():
    spec = schema_of(KINDS[0])["properties"]["spec"]
    assert spec["properties"]["backend"]["enum"] == ["local", "kfp", "job"]
    assert spec["properties"]["backend"]["default"] == "local"
    test_size = spec["properties"]["training"]["properties"]["testSize"]
    assert test_size["minimum"] == 0 and test_size["exclusiveMinimum"] is True
    assert test_size["maximum"] == 1 and test_size["exclusiveMaximum"] is True
    assert spec["properties"]["training"]["default"] == {}
    assert any("backend == 'kfp'" in rule["rule"] for rule in spec["x-kubernetes-validations"])
    assert schema_of(KINDS[0])["x-kubernetes-validations"][0]["rule"].startswith("size(self.metadata.name)")
