"""Right-sizing, pure: from observed CPU and memory of the model servers, suggest requests.

The suggestion goes to ``status.rightSizing``; the operator never edits ``spec.resources``.
CPU is sized on the 95th percentile of observed use (a short burst may borrow from the node), memory
on the maximum (running out of memory kills the server), each with headroom, rounded up to 10m
CPU and 16 MiB. Nothing is suggested before enough has been observed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mlops_operator.reconcile.cost import cpu_cores, memory_gib

MIB = 2**20


@dataclass(frozen=True)
class UsageSample:
    """Resource use of one replica at one moment."""

    at: float
    cpu_cores: float | None
    memory_bytes: float | None


@dataclass(frozen=True)
class RightSizingPolicy:
    """How much to observe and how much headroom to leave."""

    min_samples: int = 30
    min_span_seconds: float = 3600.0
    cpu_headroom: float = 0.3
    memory_headroom: float = 0.2
    over_ratio: float = 2.0
    """Requests this many times the suggestion are called over-provisioned."""


@dataclass(frozen=True)
class Suggestion:
    """Suggested requests and why."""

    cpu: str | None
    memory: str | None
    verdict: Literal["over", "under", "fits", "unset"]
    message: str
    samples: int
    window_seconds: float


def format_cpu(cores: float) -> str:
    """Cores as a Kubernetes quantity, rounded up to 10 millicores (at least 10m)."""
    millis = max(10, int(math.ceil(cores * 1000 / 10 - 1e-9)) * 10)
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_memory(size: float) -> str:
    """Bytes as a Kubernetes quantity, rounded up to 16 MiB (at least 16Mi)."""
    mib = max(16, int(math.ceil(size / MIB / 16 - 1e-9)) * 16)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def suggest_requests(cpu_request: str | None, memory_request: str | None, samples: Sequence[UsageSample],
                     policy: RightSizingPolicy = RightSizingPolicy()) -> Suggestion | None:
    """Requests that fit the observed use, or None until enough has been observed."""
    cpu = [s.cpu_cores for s in samples if s.cpu_cores is not None]
    memory = [s.memory_bytes for s in samples if s.memory_bytes is not None]
    if not samples or max(len(cpu), len(memory)) < policy.min_samples:
        return None
    span = max(s.at for s in samples) - min(s.at for s in samples)
    if span < policy.min_span_seconds:
        return None
    cpu_p95 = statistics.quantiles(cpu, n=20, method="inclusive")[-1] if len(cpu) >= 2 else None
    mem_max = max(memory) if memory else None
    cpu_text = format_cpu(cpu_p95 * (1 + policy.cpu_headroom)) if cpu_p95 is not None else None
    mem_text = format_memory(mem_max * (1 + policy.memory_headroom)) if mem_max is not None else None

    findings, verdicts = [], set()
    observed = []
    if cpu_p95 is not None:
        observed.append(f"CPU p95 {cpu_p95 * 1000:.0f}m")
    if mem_max is not None:
        observed.append(f"memory max {mem_max / MIB:.0f}Mi")
    for what, requested, used, suggested, parse in (
            ("cpu", cpu_request, cpu_p95, cpu_text, cpu_cores),
            ("memory", memory_request, mem_max, mem_text, lambda q: memory_gib(q) * 2**30)):
        if used is None or suggested is None:
            continue
        if not requested:
            verdicts.add("unset")
            findings.append(f"no {what} request is set; {suggested} would hold the observed use")
            continue
        requested_value, suggested_value = parse(requested), parse(suggested)
        if used > requested_value:
            verdicts.add("under")
            findings.append(f"{what} request {requested} is below the observed use; suggest {suggested}")
        elif requested_value >= policy.over_ratio * suggested_value:
            verdicts.add("over")
            findings.append(f"{what} request {requested} is {requested_value / suggested_value:.1f}x what is used "
                            f"(with headroom); suggest {suggested}")
    verdict = next((v for v in ("under", "over", "unset") if v in verdicts), "fits")
    if verdict == "fits":
        findings.append("the requests fit the observed use")
    message = (f"Over {span / 3600:.1f} h ({len(samples)} samples: {', '.join(observed)}): "
               + "; ".join(findings) + ". Suggestions only; spec.resources is not changed.")
    return Suggestion(cpu_text, mem_text, verdict, message, len(samples), span)
