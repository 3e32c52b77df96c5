"""kopf's diff base as a digest, so the annotation stays small whatever the spec's size.

kopf keeps the last handled "essence" of each object (spec, labels, annotations) to tell a real
change from a status write. Stored whole in an annotation (kopf's default), a spec near the API
server's 256 KiB annotation limit makes every later patch fail with ``metadata.annotations: Too
long``: kopf retries forever and the finalizer can never be removed, so the object (and its
namespace) stays Terminating. The handlers here never read kopf's ``diff`` or ``old`` (each
reconciliation reads the live object), so a digest of the essence is all kopf needs: the same
digest means nothing changed; another means a change, and kopf calls the update handlers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kopf

DIGEST_KEY = "sha256"


def essence_digest(essence: Any) -> str:
    """A stable digest of an essence (key order does not matter)."""
    text = json.dumps(essence, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# What kopf's essence is made of (DiffBaseStorage.build): everything but these top-level fields, and of
# the metadata only the labels and annotations.
_NOT_ESSENCE = ("apiVersion", "kind", "metadata", "status")


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """``kopf.AnnotationsDiffBaseStorage`` that stores ``{"sha256": <digest of the essence>}``.

    ``fetch`` answers the current essence when the digest matches (no change), else a stand-in that
    differs from it (a change). A full essence stored by an older version is read as it is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built: tuple[kopf.Body, Any] | None = None  # the last body built, and its essence

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        """kopf's essence, without first deep-copying what it then drops (the status, the metadata with its
        managedFields): kopf builds it on every watch event, and that copy was most of its cost. kopf
        asks twice per event for the same body (``fetch``, then ``build``): the second is the first's."""
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)
        if self._built is not None and self._built[0] is body:
            return self._built[1]
        meta = body.get("metadata") or {}
        slim = {key: value for key, value in body.items() if key not in _NOT_ESSENCE}
        slim["metadata"] = {key: meta[key] for key in ("labels", "annotations") if key in meta}
        essence = super().build(body=kopf.Body(slim))
        self._built = (body, essence)
        return essence

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        super().store(body=body, patch=patch, essence={DIGEST_KEY: essence_digest(essence)})

    def fetch(self, *, body: kopf.Body) -> Any:
        stored = super().fetch(body=body)
        if not isinstance(stored, dict) or set(stored) != {DIGEST_KEY}:
            return stored
        current = self.build(body=body)
        if essence_digest(current) == stored[DIGEST_KEY]:
            return current
        return {"metadata": {"annotations": {f"{self.prefix}/previous-digest": stored[DIGEST_KEY]}}}
