"""Pieces shared by the three kinds: the base model, conditions, references, and the CRD metadata.

Python field names are snake_case; the API (and the generated schema) uses the camelCase aliases.
Every field has an attribute docstring: it becomes the schema's ``description`` and so what
``kubectl explain`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "mlops.dev"
VERSION = "v1alpha1"
CATEGORY = "mlops"

# Kubernetes object names that end up inside children's names (SeldonDeployment, run names, label
# values) must leave room for suffixes; 48 keeps "<name>-<8 hex>-<generation>" under 63.
MAX_NAME_LENGTH = 48
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Go-style duration limited to the units people use for intervals and windows: 30s, 5m, 1h30m, 7d
# (at most six digits per part, so no duration overflows; the operator bounds the total too).
DURATION = r"^([0-9]{1,6}(s|m|h|d)){1,4}$"
# The name of an object in the same namespace (DNS-1123 subdomain): no slash, no "..", no control
# characters, so "kube-system/iris" or "" is refused at admission instead of waiting forever.
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A ConfigMap or Secret key.
DATA_KEY = r"^[-._a-zA-Z0-9]+$"
# A URI or path: printable, no whitespace or control characters (the operator checks the scheme).
URI = r"^[^\s\x00-\x1f\x7f]+$"
# An http(s) URL (a KFP API, Prometheus).
HTTP_URL = r"^https?://[^\s/?#\x00-\x1f\x7f]+(/[^\s\x00-\x1f\x7f]*)?$"
# A column or feature name: printable, no control characters.
COLUMN = r"^[^\x00-\x1f\x7f]+$"
ColumnName = Annotated[str, Field(min_length=1, max_length=253, pattern=COLUMN)]
# Largest serialized size of a free-form map (estimator or pipeline parameters): far below the
# 256 KiB annotation and 1.5 MiB object limits. The API server bounds the keys; the operator the size.
MAX_PARAMETERS_BYTES = 16 * 1024


class Model(BaseModel):
    """Base of every API model: camelCase aliases, docstrings as descriptions, unknown keys ignored.

    Unknown keys are ignored rather than forbidden: the API server already prunes them, and
    ``extra="forbid"`` would render as ``additionalProperties: false``, which is not structural.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
        validate_default=False,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API represents it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """One aspect of the object's current state, shaped like metav1.Condition."""

    type: str = Field(max_length=316)
    """Type of the condition in CamelCase, e.g. Ready, Succeeded, DriftDetected."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    observed_generation: int | None = Field(None, ge=0)
    """The .metadata.generation the condition was set from."""
    last_transition_time: str
    """When the condition last changed from one status to another (RFC 3339)."""
    reason: str = Field(max_length=1024)
    """A CamelCase, machine-readable reason for the last transition."""
    message: str = Field("", max_length=32768)
    """A human-readable message with details about the transition."""


class LocalObjectReference(Model):
    """A reference to an object of a known kind in the same namespace."""

    name: str = Field(max_length=253, min_length=1, pattern=OBJECT_NAME)
    """Name of the referenced object."""


class SecretKeyReference(Model):
    """A key of a Secret in the same namespace. Its value is read when needed and never copied."""

    name: str = Field(max_length=253, min_length=1, pattern=OBJECT_NAME)
    """Name of the Secret."""
    key: str = Field(max_length=253, min_length=1, pattern=DATA_KEY)
    """Key within the Secret."""


class ConfigMapKeyReference(Model):
    """A key of a ConfigMap in the same namespace."""

    name: str = Field(max_length=253, min_length=1, pattern=OBJECT_NAME)
    """Name of the ConfigMap."""
    key: str = Field(max_length=253, min_length=1, pattern=DATA_KEY)
    """Key within the ConfigMap."""


class StatusBase(Model):
    """Fields every kind's status carries. Each kind's status declares its condition types (every one
    is set, Unknown, on the first visit) and the one that summarises it (False with InvalidSpec or an
    operator error)."""

    condition_types: ClassVar[tuple[str, ...]] = ()
    summary_condition: ClassVar[str] = ""

    observed_generation: int | None = Field(None, ge=0)
    """The .metadata.generation the status was last reconciled from."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """The latest observations of the object's state."""

    def condition(self, type_: str) -> Condition | None:
        """The condition of this type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)

    def to_status(self) -> dict[str, Any]:
        """The status as the operator writes it with a merge patch: every field (None clears it), and
        below the top level only what is set (as the API server stores it, so an unchanged status
        compares equal to the live one)."""
        every = self.model_dump(by_alias=True, mode="json")
        present = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        return {key: present.get(key) for key in every}


@dataclass(frozen=True)
class PrinterColumn:
    """An additionalPrinterColumn of the CRD."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    """What the CRD needs besides the schema."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...] = ()
    # CEL rules on the whole object (they can see metadata.name).
    root_validations: tuple[dict[str, str], ...] = field(default=())


NAME_LENGTH_RULE = {
    "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
    "(children and run names are derived from it)",
}


class Resource(Model):
    """Base of the three kinds: apiVersion, kind, metadata, spec, status."""

    info: ClassVar[KindInfo]

    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
