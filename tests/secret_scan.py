"""Secret scan: no value of a Secret a test placed may appear in what the operator publishes.

``find_secrets(api, namespace, secrets, logs=...)`` reads, live from the API server, every mlops object of
the namespace (its status, annotations and labels: what the operator writes) and the namespace's events,
plus any log texts given (the operator's output), and returns where a secret value appears, in its plain
form or base64-encoded (standard or URL-safe, with or without padding, as a Secret's ``data`` or a
Basic ``Authorization`` header would carry it). ``assert_no_secrets`` fails the test with those places.
Values shorter than MIN_LENGTH are refused: they would match by chance.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

GROUP, VERSION = "mlops.dev", "v1alpha1"
PLURALS = ("modeltrainings", "modeldeployments", "driftmonitors")
MIN_LENGTH = 8


def secret_values(api_client: Any, namespace: str, name: str) -> list[str]:
    """The decoded values of a Secret (what a test placed in it)."""
    from kubernetes import client

    secret = client.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
    return [base64.b64decode(value).decode() for value in (secret.data or {}).values()]


def forms(value: str) -> set[str]:
    """The strings under which ``value`` could leak: itself and its base64 encodings."""
    if len(value) < MIN_LENGTH:
        raise ValueError(f"a secret value of {len(value)} characters would match by chance; use at least {MIN_LENGTH}")
    raw = value.encode()
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return {value} | encoded | {e.rstrip("=") for e in encoded}


def published_texts(api_client: Any, namespace: str) -> dict[str, str]:
    """What the operator publishes in ``namespace``: each mlops object's status, annotations and labels,
    and each event (reason, message, note), keyed by where it is."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api_client)
    texts: dict[str, str] = {}
    for plural in PLURALS:
        for obj in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]:
            meta = obj["metadata"]
            texts[f"{plural}/{meta['name']} status"] = json.dumps(obj.get("status") or {})
            texts[f"{plural}/{meta['name']} metadata"] = json.dumps(
                {"annotations": meta.get("annotations") or {}, "labels": meta.get("labels") or {}})
    for event in client.CoreV1Api(api_client).list_namespaced_event(namespace).items:
        texts[f"event {event.metadata.name}"] = " ".join(
            str(part) for part in (event.reason, event.message, getattr(event, "note", None)) if part)
    return texts


def scan(texts: Mapping[str, str], secrets: Iterable[str]) -> list[str]:
    """``"<where>: <form>"`` for every place in ``texts`` holding a form of a secret (the value not shown)."""
    found = []
    for secret_number, value in enumerate(secrets):
        for form in sorted(forms(value)):
            kind = "plain" if form == value else "base64"
            found += [f"{where}: secret #{secret_number} ({kind})" for where, text in texts.items() if form in text]
    return found


def collect(api_client: Any, namespace: str, logs: Mapping[str, str | Path] | None = None) -> dict[str, str]:
    """Everything scanned: the namespace's mlops statuses and metadata, its events, and ``logs`` (name →
    text, or a path to read)."""
    texts = published_texts(api_client, namespace)
    for name, log in (logs or {}).items():
        texts[f"log {name}"] = Path(log).read_text(errors="replace") if isinstance(log, Path) else log
    return texts


def find_secrets(api_client: Any, namespace: str, secrets: Iterable[str],
                 logs: Mapping[str, str | Path] | None = None) -> list[str]:
    """Where any of ``secrets`` appears in the namespace's mlops statuses and events and in ``logs``."""
    return scan(collect(api_client, namespace, logs), list(secrets))


def assert_no_secrets(api_client: Any, namespace: str, secrets: Iterable[str],
                      logs: Mapping[str, str | Path] | None = None) -> None:
    """Fail naming every place a secret value appears; also fail when there was nothing to scan (no secret,
    no object status, no event, an empty log), which would make the scan pass by itself."""
    secrets = list(secrets)
    assert secrets, "no secret values to scan for"
    texts = collect(api_client, namespace, logs)
    assert any(where.endswith(" status") for where in texts), f"no mlops object in {namespace} to scan"
    assert any(where.startswith("event ") for where in texts), f"no event in {namespace} to scan"
    empty = [name for name in (logs or {}) if not texts[f"log {name}"].strip()]
    assert not empty, f"empty logs: {empty}"
    found = scan(texts, secrets)
    assert not found, "secret values published:\n" + "\n".join(found)
