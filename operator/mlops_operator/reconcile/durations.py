"""Durations as the API writes them: ``30s``, ``5m``, ``1h30m``, ``7d``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"([0-9]+)(s|m|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> timedelta:
    """Parse a duration like ``1h30m``; raise ValueError on anything else."""
    text = value.strip()
    if not text or _PART.sub("", text):
        raise ValueError(f"invalid duration {value!r}: use a number with s, m, h or d, e.g. 30s, 5m, 1h30m")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text)))
