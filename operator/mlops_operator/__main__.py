"""``python -m mlops_operator`` / ``mlops-operator``: run the operator against the current kubeconfig."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from mlops_operator import __version__


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)
        if k8s:
            entry["object"] = {key: k8s.get(key) for key in ("kind", "namespace", "name")}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str, level: str) -> None:
    """Root logging for the process; kopf's own loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "aiohttp.access", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlops-operator",
        description="Run the mlops-operator (ModelTraining, ModelDeployment, DriftMonitor) against the "
        "current kubeconfig. Settings come from MLOPS_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)

    import kopf

    from mlops_operator import handlers  # noqa: F401  (registers the handlers)
    from mlops_operator.handlers.common import get_settings

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    liveness = f"http://{settings.metrics_host}:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
