"""The operator's log lines (__main__.configure_logging): each line about an object names it, and the
success lines of kopf's watch-only handlers (one per watch event) are debug lines."""

from __future__ import annotations

import io
import logging

import pytest

from mlops_operator.__main__ import ObjectFilter, configure_logging


@pytest.fixture
def stream():
    """configure_logging("text", "INFO"), its handler writing here; the root logger restored after."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("text", "INFO")
    root.handlers[0].setStream(out)
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)


REF = {"kind": "ModelDeployment", "namespace": "team-a", "name": "iris", "uid": "u1"}


def test_a_line_about_an_object_names_it(stream):
    logging.getLogger("kopf.objects").info("Handler 'on_change' succeeded.", extra={"k8s_ref": REF})
    logging.getLogger("mlops_operator").info("started")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO    kopf.objects: ModelDeployment team-a/iris: Handler 'on_change' succeeded.")
    assert second.endswith("INFO    mlops_operator: started")


def test_watch_only_handlers_succeeding_is_a_debug_line(stream):
    objects = logging.getLogger("kopf.objects")
    for handler in ("requests", "seldon_deployment_changed", "training_changed"):
        objects.info(f"Handler '{handler}' succeeded.", extra={"k8s_ref": REF})
    objects.info("Handler 'on_change' succeeded.", extra={"k8s_ref": REF})
    objects.error("Handler 'requests' failed with an exception. Will ignore.", extra={"k8s_ref": REF})
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 2)[-1] for line in lines] == [
        "Handler 'on_change' succeeded.", "Handler 'requests' failed with an exception. Will ignore."]


def test_at_debug_level_they_are_kept():
    record = logging.LogRecord("kopf.objects", logging.INFO, "", 0, "Handler 'requests' succeeded.", None, None)
    record.k8s_ref = REF
    assert ObjectFilter(logging.DEBUG).filter(record) and record.levelname == "DEBUG"
    assert not ObjectFilter(logging.INFO).filter(record)
