"""Test support: a real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

``make test`` installs the package when it is missing (``make browser``). The browser runs with a
fresh profile directory, no network features, and is stopped with all its helpers when the block ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def chromium_binary() -> str:
    """The Chromium executable ($MLOPS_CHROMIUM, else chromium on PATH), or a clear failure."""
    path = os.environ.get("MLOPS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("headless Chromium is needed for the drift report test: run `make browser` "
                           "(apt-get install chromium) or set MLOPS_CHROMIUM to its path")
    return path


@dataclass
class LoadedPage:
    """What the browser saw."""

    load_seconds: float
    """From Page.navigate to the load event."""
    evaluated: Any
    """The value of the probe expression, evaluated after load."""
    screenshot: bytes
    """Full-page PNG."""


async def _cdp_load(ws_url: str, url: str, probe: str, width: int, timeout: float) -> LoadedPage:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        counter = 0
        events: list[dict[str, Any]] = []

        async def call(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
            nonlocal counter
            counter += 1
            ident = counter
            await ws.send_json({"id": ident, "method": method, "params": params or {}})
            while True:
                message = await asyncio.wait_for(ws.receive_json(), timeout)
                if message.get("id") == ident:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message.get("result", {})
                events.append(message)

        async def wait_event(name: str) -> None:
            if any(event.get("method") == name for event in events):
                return
            while True:
                message = await asyncio.wait_for(ws.receive_json(), timeout)
                if message.get("method") == name:
                    return
                events.append(message)

        await call("Page.enable")
        await call("Emulation.setDeviceMetricsOverride",
                   {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        started = time.perf_counter()
        await call("Page.navigate", {"url": url})
        await wait_event("Page.loadEventFired")
        load_seconds = time.perf_counter() - started
        result = await call("Runtime.evaluate", {"expression": probe, "returnByValue": True})
        evaluated = result.get("result", {}).get("value")
        shot = await call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        return LoadedPage(load_seconds, evaluated, base64.b64decode(shot["data"]))


@contextmanager
def chromium() -> Iterator[str]:
    """A running headless Chromium; yields the DevTools HTTP endpoint (http://127.0.0.1:port)."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="mlops-chromium-") as profile:
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 120
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None:
                    raise RuntimeError(f"chromium exited {process.returncode}: "
                                       f"{process.stderr.read().decode(errors='replace')[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium did not open its DevTools port within 120 s")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        finally:
            _stop_group(process, profile)
            process.stderr.close()


def _helpers(pgid: int, profile: str) -> list[int]:
    """Live processes of the browser's group, and its crash handlers (their own sessions) by profile."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                args = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError):
                continue
            if fields[0] not in ("Z", "X") and (int(fields[2]) == pgid or profile in args):
                members.append(int(entry.name))
    return members


def _stop_group(process: subprocess.Popen, profile: str) -> None:
    """Stop the browser and every helper it started (renderer, GPU, storage, crash handler) and wait
    until none is left: a helper still writing to the profile after the browser ended made removing
    the profile fail once in CI ("Directory not empty: 'Default'")."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        for pid in {process.pid, *_helpers(process.pid, profile)}:
            try:
                os.killpg(pid, sig) if pid == process.pid else os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()
            if process.returncode is not None and not _helpers(process.pid, profile):
                return
            time.sleep(0.05)
    process.wait()


def load_page(endpoint: str, path: Path, probe: str, *, width: int = 1280, timeout: float = 300) -> LoadedPage:
    """Open a file in a new tab of the running browser, evaluate ``probe`` after load, screenshot."""

    async def run() -> LoadedPage:
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{endpoint}/json/new?about:blank") as response:
                target = json.loads(await response.text())
        try:
            return await _cdp_load(target["webSocketDebuggerUrl"], path.resolve().as_uri(), probe, width, timeout)
        finally:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{endpoint}/json/close/{target['id']}") as response:
                    await response.read()

    return asyncio.run(run())


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
