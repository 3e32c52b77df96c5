"""The ``local`` serving backend: MLServer processes on 127.0.0.1, one per model version, behind a
router per ModelDeployment that splits and mirrors traffic, exports metrics and writes the
inference log. Callers use :class:`LocalServingManager`; the log format is in docs/inference-log.md.
"""

import asyncio

import aiohttp

from .inference_log import read_window
from .manager import AdoptedProcess, LocalServingManager
from .mlserver import PredictorState
from .router_process import RouterState, RouterStats
from .supervisor import Phase
from .traffic import PredictorRoute, RouterConfig, WindowStats

ROUTER_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
"""What a call to a router raises when it does not answer (the caller retries later)."""

__all__ = [
    "ROUTER_ERRORS",
    "AdoptedProcess",
    "LocalServingManager",
    "Phase",
    "PredictorRoute",
    "PredictorState",
    "RouterConfig",
    "RouterState",
    "RouterStats",
    "WindowStats",
    "read_window",
]
