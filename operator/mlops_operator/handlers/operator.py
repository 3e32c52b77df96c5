"""Operator-wide setup: kopf settings, persistence under mlops.dev/, the metrics server."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mlops_operator import __version__, metrics
from mlops_operator.api.common import GROUP
from mlops_operator.backends import kube
from mlops_operator.handlers.common import FINALIZER, get_settings
from mlops_operator.handlers.diffbase import DigestDiffBaseStorage

log = logging.getLogger("mlops_operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping under mlops.dev/, load the kube config, start the metrics endpoint."""
    ours = get_settings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # A digest, not the whole spec: the annotation can never approach the 256 KiB limit.
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # only warnings and errors logged by handlers become events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60, 120]
    kube.load_config(connections=ours.io_threads)
    metrics.serve(ours.metrics_host, ours.metrics_port)
    if not ours.leader_election:
        metrics.LEADER.set(1)
    ours.data_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "mlops-operator %s starting: namespaces=%s data_dir=%s metrics=%s:%s",
        __version__,
        ",".join(ours.namespaces) or "<cluster-wide>",
        ours.data_dir,
        ours.metrics_host,
        ours.metrics_port,
    )


@kopf.on.probe(id="version")
def version_probe(**_: Any) -> str:
    """Part of the liveness answer: the operator's version."""
    return __version__


@kopf.on.cleanup()
async def post_queued_events(**_: Any) -> None:
    """At shutdown, give the events still queued a moment to be posted."""
    await kube.drain_events(timeout=5.0)

