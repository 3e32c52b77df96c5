"""Turn the pydantic models into structural CustomResourceDefinitions.

Pydantic emits JSON Schema; a CRD needs the structural OpenAPI v3 subset. The known fixes (as in
azimuth's kube-custom-resource): inline ``$defs``, ``anyOf [X, null]`` becomes X (optional fields are
simply not required), boolean exclusive bounds, no titles, no ``const``, no ``uniqueItems``, no
``additionalProperties: false``, and free-form values become ``x-kubernetes-preserve-unknown-fields``.

    python -m mlops_operator.api.crd write crds/    # regenerate
    python -m mlops_operator.api.crd check crds/    # fail if the committed files are stale
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from mlops_operator.api.common import CATEGORY, GROUP, VERSION, Resource

HEADER = (
    "# Generated from operator/mlops_operator/api by `make manifests`. Do not edit.\n"
)

# Keys that never reach a structural schema.
_DROP_KEYS = {"title", "uniqueItems", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every ``$ref``, letting keys next to the ref (description, default) win."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: Any) -> Any:
    """Rewrite one (already inlined) JSON Schema node into the structural subset."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express anyOf {any_of!r} structurally; use one type per field")
        node = {**non_null[0], **node}
    for key in _DROP_KEYS:
        node.pop(key, None)
    if node.get("default", 0) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True

    additional = node.get("additionalProperties")
    if additional is False:
        del node["additionalProperties"]
    elif additional is True or additional == {}:
        # dict[str, Any]: keep whatever the user wrote.
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in node and not any(k in node for k in ("properties", "items", "enum")):
        # Any: a free-form value of any type.
        node["x-kubernetes-preserve-unknown-fields"] = True

    for key in ("properties",):
        if key in node:
            node[key] = {name: _structural(sub) for name, sub in node[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _structural(node[key])
    if node.get("required") == []:
        del node["required"]
    if isinstance(node.get("description"), str):
        # Docstrings wrap; kubectl explain re-wraps, so fold them into one paragraph.
        node["description"] = " ".join(node["description"].split())
    # Stable, readable key order: what it is first, then its constraints, then its children.
    first = [key for key in ("description", "type") if key in node]
    return {key: node[key] for key in first + sorted(set(node) - set(first))}


def structural_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _field_schema(kind: type[Resource], name: str) -> dict[str, Any]:
    field = kind.model_fields[name]
    schema = structural_schema(field.annotation if name == "spec" else field.default_factory().__class__)
    schema["description"] = " ".join((field.description or schema.get("description", "")).split())
    schema.pop("default", None)
    return schema


def build_crd(kind: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    info = kind.info
    root: dict[str, Any] = {
        "type": "object",
        "description": (kind.__doc__ or "").strip(),
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object: mlops.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind of this object: {info.kind}."},
            "metadata": {"type": "object"},
            "spec": _field_schema(kind, "spec"),
            "status": _field_schema(kind, "status"),
        },
        "required": ["spec"],
    }
    if info.root_validations:
        root["x-kubernetes-validations"] = [dict(rule) for rule in info.root_validations]
    columns = [
        {
            "name": column.name,
            "type": column.type,
            "jsonPath": column.json_path,
            **({"description": column.description} if column.description else {}),
            **({"priority": column.priority} if column.priority else {}),
        }
        for column in info.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "mlops-operator", "app.kubernetes.io/part-of": "mlops-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_filename(kind: type[Resource]) -> str:
    """File name of a kind's CRD, as controller-gen names them."""
    return f"{GROUP}_{kind.info.plural}.yaml"


def render(kind: type[Resource]) -> str:
    """The CRD of one kind as the YAML text that is committed."""
    return HEADER + yaml.safe_dump(build_crd(kind), sort_keys=False, width=100, allow_unicode=True)


def rendered_crds() -> dict[str, str]:
    """File name → YAML text for every kind."""
    from mlops_operator.api import KINDS

    return {crd_filename(kind): render(kind) for kind in KINDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_operator.api.crd", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered_crds().items():
        path = args.directory / name
        if args.action == "write":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            stale.append(name)
            current = path.read_text().splitlines() if path.exists() else []
            sys.stdout.writelines(
                line + "\n" for line in difflib.unified_diff(current, text.splitlines(), str(path), "generated", lineterm="")
            )
    if stale:
        print(f"stale CRDs: {', '.join(stale)}; run `make manifests` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
