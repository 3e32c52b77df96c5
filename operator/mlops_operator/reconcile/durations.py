"""Durations as the API writes them (``30s``, ``5m``, ``1h30m``, ``7d``), and cron schedules."""

from __future__ import annotations

import copy
import functools
import re
from datetime import datetime, timedelta

from croniter import croniter

_PART = re.compile(r"([0-9]+)(s|m|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Ten years: longer intervals, windows or cooldowns mean "never" and are a typo; far below where
# datetime arithmetic overflows.
MAX_SECONDS = 3650 * 86400


def parse_duration(value: str) -> timedelta:
    """Parse a duration like ``1h30m``; raise ValueError on anything else."""
    text = value.strip()
    if not text or _PART.sub("", text):
        raise ValueError(f"invalid duration {value!r}: use a number with s, m, h or d, e.g. 30s, 5m, 1h30m")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration {value!r} is longer than {MAX_SECONDS // 86400} days")
    return timedelta(seconds=seconds)


@functools.lru_cache(maxsize=1024)
def cron_is_valid(expression: str) -> bool:
    """Whether croniter takes the expression (parsed once per process)."""
    return croniter.is_valid(expression)


@functools.lru_cache(maxsize=1024)
def _parsed_cron(expression: str) -> croniter:
    return croniter(expression)


def cron_from(expression: str, start: datetime) -> croniter:
    """A croniter over ``expression`` from ``start``. The expression is parsed once per process: every
    reconciliation of a scheduled object asks for its next and previous times several times."""
    schedule = copy.copy(_parsed_cron(expression))  # its own position; the parsed fields are shared, read only
    schedule.set_current(start, force=True)
    return schedule
