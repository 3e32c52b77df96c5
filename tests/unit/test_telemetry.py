"""Local model server usage for right-sizing (backends/telemetry.py): CPU and memory read from /proc
of a real busy process."""

from __future__ import annotations

import subprocess
import sys
import time

from mlops_operator.backends import telemetry
from mlops_operator.reconcile.anomaly import Detector


def test_cpu_and_memory_of_a_real_process_are_sampled_and_bounded():
    busy = subprocess.Popen([sys.executable, "-c", "x = bytearray(64 * 2**20)\nwhile True: pass"])
    try:
        watch = telemetry.Watch(Detector())
        started = time.time()
        telemetry.sample_usage(watch, [("2", busy.pid)], started)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (telemetry._proc_usage(busy.pid) or (0,))[0] < 30:
            time.sleep(0.1)  # until it has used some CPU (0.3 s at 100 ticks/s)
        telemetry.sample_usage(watch, [("2", busy.pid), ("3", None)], time.time())
        first, second = watch.usage["2"]
        assert first.cpu_cores is None and second.cpu_cores > 0.05
        assert second.memory_bytes > 64 * 2**20
        assert list(watch.cpu_ticks) == [busy.pid] and "3" not in watch.usage
    finally:
        busy.kill()
        busy.wait()
    telemetry.sample_usage(watch, [], time.time())
    assert watch.cpu_ticks == {}
