"""Inference log: every served request and response as JSON Lines in hourly files.

Layout: ``<root>/inference/<namespace>/<deployment>/YYYY/MM/DD/HH.jsonl`` (UTC hour of the
record's ``ts``) on a local disk; on an object store (``s3://…``), which cannot append, every
flushed batch is its own object ``YYYY/MM/DD/HH.<writer>.<sequence>.jsonl``. The format is
documented in ``docs/inference-log.md``; keep both in step.

The writer lives in the router's event loop: ``append`` only queues, and a single background
thread formats and writes batches (every ``flush_every`` records or ``flush_interval`` seconds,
and on close), so a request never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# The reader's numpy/pandas/fsspec are imported where used: the router process only writes, and
# importing pandas would add about two seconds to its start.

log = logging.getLogger(__name__)

# Columns read_window always returns besides features and predictions.
META_COLUMNS = (
    "request_id",
    "row",
    "ts",
    "predictor",
    "model_version",
    "shadow",
    "status",
    "latency_ms",
)
PREDICTION_COLUMN = "prediction"
# How often a writer flushes when nothing else asks it to: a local file is cheap to append to; an
# object store gets one object per flush, so it is flushed less often.
LOCAL_FLUSH_SECONDS = 1.0
REMOTE_FLUSH_SECONDS = 5.0


def inference_log_dir(root: str | os.PathLike, namespace: str, deployment: str) -> str:
    """Directory (or fsspec URI) holding one deployment's inference log."""
    return f"{str(root).rstrip('/')}/inference/{namespace}/{deployment}"


def local_path(location: str | os.PathLike) -> Path | None:
    """The local directory of a plain path or ``file://`` URI; None for a remote URI (``s3://…``)."""
    text = os.fspath(location)
    if "://" not in text:
        return Path(text)
    parsed = urlparse(text)
    if parsed.scheme in ("file", "local"):
        return Path(unquote(parsed.path))
    return None


def format_ts(moment: datetime) -> str:
    """RFC3339 UTC with microseconds and a ``Z`` suffix, as written in ``ts``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hour_stem(moment: datetime) -> str:
    """``YYYY/MM/DD/HH``: where the records stamped ``moment`` go, relative to the log directory."""
    utc = moment.astimezone(timezone.utc)
    return f"{utc:%Y}/{utc:%m}/{utc:%d}/{utc:%H}"


def hour_file(directory: str | os.PathLike, moment: datetime) -> Path:
    """Path of the hourly file a record stamped ``moment`` belongs to (local logs)."""
    return Path(directory) / f"{hour_stem(moment)}.jsonl"


def request_id_of(request: dict | None) -> str:
    """The V2 request ``id`` when the client sent one, else a fresh uuid4."""
    if isinstance(request, dict) and isinstance(request.get("id"), str) and request["id"]:
        return request["id"]
    return str(uuid.uuid4())


@dataclass
class LogEntry:
    """One request/response as the router saw it; turned into a record off the event loop.

    ``response_body`` stays raw bytes so the JSON parsing happens in the writer thread.
    """

    request_id: str
    ts: datetime
    model: str
    predictor: str
    model_version: str
    shadow: bool
    status: int
    latency_ms: float
    request: dict | None
    response_body: bytes | None = None
    error: str | None = None


def build_record(entry: LogEntry) -> dict[str, Any]:
    """The JSON record of an entry (see docs/inference-log.md)."""
    outputs = None
    error = entry.error
    if entry.response_body:
        try:
            response = json.loads(entry.response_body)
        except ValueError:
            response = None
            if entry.status >= 400:
                error = error or entry.response_body.decode(errors="replace")[:1000]
            else:
                error = error or "response is not JSON"
        if isinstance(response, dict):
            outputs = response.get("outputs")
            if entry.status >= 400 and not error:
                # V2 servers put the reason in {"error": ...}; MLServer sometimes in {"detail": ...}.
                error = str(response.get("error") or response.get("detail") or f"HTTP {entry.status}")
    if entry.status >= 400 and not error:
        error = f"HTTP {entry.status}"
    inputs = entry.request.get("inputs") if isinstance(entry.request, dict) else None
    return {
        "id": entry.request_id,
        "ts": format_ts(entry.ts),
        "model": entry.model,
        "predictor": entry.predictor,
        "modelVersion": entry.model_version,
        "shadow": entry.shadow,
        "status": entry.status,
        "latencyMs": round(entry.latency_ms, 3),
        "inputs": inputs,
        "outputs": outputs,
        "error": error,
    }


class InferenceLogWriter:
    """Buffered, ordered appender of :class:`LogEntry` to hourly JSONL files.

    ``directory`` is a local path, a ``file://`` URI or a remote fsspec URI (``s3://…``, with the
    credentials of the environment). Use from one event loop: ``start()``, then ``append()`` per
    request, ``await close()`` on shutdown. Batches are written by one thread, so records keep
    their order within a file. A batch the object store refused is kept and retried with the next
    flush (within ``max_buffered``), so a store that is briefly down loses nothing.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        flush_every: int = 256,
        flush_interval: float | None = None,
        max_buffered: int = 100_000,
    ):
        self.location = os.fspath(directory)
        self.directory = local_path(directory)
        """The local directory, or None when the log goes to a remote store."""
        self.flush_every = flush_every
        default_interval = LOCAL_FLUSH_SECONDS if self.directory is not None else REMOTE_FLUSH_SECONDS
        self.flush_interval = default_interval if flush_interval is None else flush_interval
        self.max_buffered = max_buffered
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._writer_id = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._remote_fs: Any = None
        self._unsent: list[tuple[str, list[str]]] = []
        self._buffer: list[LogEntry] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference-log")
        self._pending: set[asyncio.Future] = set()
        self._ticker: asyncio.Task | None = None
        self._write_lock = threading.Lock()

    def start(self) -> None:
        """Start the periodic flush (needs a running loop)."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def append(self, entry: LogEntry) -> None:
        """Queue one entry; never blocks on I/O."""
        if len(self._buffer) >= self.max_buffered:
            # The disk cannot keep up: drop rather than grow without bound (counted, and logged once per flush).
            self.dropped += 1
            return
        self._buffer.append(entry)
        if len(self._buffer) >= self.flush_every:
            self._flush_in_background()

    async def flush(self) -> None:
        """Write everything queued so far and wait for it."""
        self._flush_in_background()
        if self._pending:
            await asyncio.gather(*list(self._pending))

    async def close(self) -> None:
        """Flush and stop; later appends are lost."""
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        await self.flush()
        self._executor.shutdown(wait=True)

    def _flush_in_background(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        future = asyncio.get_running_loop().run_in_executor(self._executor, self.write_batch, batch)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self._flush_in_background()

    def write_batch(self, batch: Sequence[LogEntry]) -> None:
        """Format and append a batch synchronously (runs in the writer thread)."""
        by_hour: dict[str, list[str]] = {}
        for entry in batch:
            try:
                line = json.dumps(build_record(entry), separators=(",", ":"), default=str)
            except (TypeError, ValueError) as exc:  # an unserialisable input must not lose the batch
                log.warning("inference log: dropping record %s: %s", entry.request_id, exc)
                continue
            by_hour.setdefault(hour_stem(entry.ts), []).append(line)
        with self._write_lock:
            if self.directory is not None:
                for stem, lines in by_hour.items():
                    path = self.directory / f"{stem}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "a", encoding="utf-8") as fh:
                        fh.write("\n".join(lines) + "\n")
                    self.written += len(lines)
            else:
                self._write_remote(list(by_hour.items()))
        if self.dropped:
            log.warning("inference log: %d records dropped so far (buffer full)", self.dropped)

    def _write_remote(self, parts: list[tuple[str, list[str]]]) -> None:
        """One new object per hour of the batch (object stores cannot append); failures are kept for the next flush."""
        pending = self._unsent + parts
        self._unsent = []
        for index, (stem, lines) in enumerate(pending):
            self._sequence += 1
            name = f"{stem}.{self._writer_id}.{self._sequence:08d}.jsonl"
            try:
                if self._remote_fs is None:
                    from fsspec.core import url_to_fs

                    self._remote_fs, self._remote_base = url_to_fs(self.location)
                self._remote_fs.pipe_file(f"{self._remote_base.rstrip('/')}/{name}",
                                          ("\n".join(lines) + "\n").encode("utf-8"))
            except Exception as exc:  # noqa: BLE001 - any store error: keep the records, retry later
                self.write_errors += 1
                log.warning("inference log: cannot write to %s (%s: %s); retrying with the next flush",
                            self.location, type(exc).__name__, exc)
                self._unsent = pending[index:]
                kept = sum(len(lines) for _, lines in self._unsent)
                while self._unsent and kept > self.max_buffered:
                    _, dropped = self._unsent.pop(0)
                    kept -= len(dropped)
                    self.dropped += len(dropped)
                return
            self.written += len(lines)


# ---------------------------------------------------------------- reading


def _hour_files_newest_first(fs, directory: str) -> Iterator[tuple[datetime, list[str]]]:
    """``(hour_start_utc, paths)`` of every hour's files, newest hour first, listing lazily.

    An hour is one ``HH.jsonl`` (a local log) or several ``HH.<writer>.<sequence>.jsonl`` objects
    (an object store), or both.
    """

    def children(path: str, digits: int) -> list[tuple[int, str]]:
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            stem = name[: -len(".jsonl")].split(".", 1)[0] if name.endswith(".jsonl") else name
            if len(stem) == digits and stem.isdigit():
                out.append((int(stem), entry))
        return sorted(out, reverse=True)

    for year, ypath in children(directory, 4):
        for month, mpath in children(ypath, 2):
            for day, dpath in children(mpath, 2):
                hours: dict[int, list[str]] = {}
                for hour, hpath in children(dpath, 2):
                    if hpath.endswith(".jsonl"):
                        hours.setdefault(hour, []).append(hpath)
                for hour in sorted(hours, reverse=True):
                    yield datetime(year, month, day, hour, tzinfo=timezone.utc), sorted(hours[hour])


def _tensor_array(tensor: dict) -> "np.ndarray":
    import numpy as np

    data = tensor.get("data")
    shape = tensor.get("shape") or [len(data) if isinstance(data, list) else 1]
    array = np.asarray(data, dtype=object if tensor.get("datatype") == "BYTES" else None)
    return array.reshape([int(s) for s in shape])


def tensors_to_columns(
    tensors: Sequence[dict] | None,
    *,
    single_tensor_names: Sequence[str] | None = None,
    default_prefix: str = "f",
    single_tensor_base: str | None = None,
) -> "tuple[dict[str, np.ndarray], int]":
    """Columns (name → 1-D array) and row count from V2 tensors.

    Several tensors → one column per tensor named by the tensor (``<name>_<j>`` for a 2-D one).
    A single 2-D tensor → columns named by ``single_tensor_names`` when their count matches,
    else ``<default_prefix>0..N``; a single 1-D tensor keeps its name (or ``single_tensor_base``).
    Raises ValueError on tensors whose data do not fit their shape or row counts that disagree.
    """
    if not tensors:
        return {}, 0
    columns: dict = {}
    rows: int | None = None
    single = len(tensors) == 1
    for tensor in tensors:
        array = _tensor_array(tensor)
        if array.ndim == 0:
            array = array.reshape(1, 1)
        elif array.ndim == 1:
            array = array.reshape(-1, 1)
        elif array.ndim > 2:
            array = array.reshape(array.shape[0], -1)
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise ValueError(f"tensor {tensor.get('name')!r} has {array.shape[0]} rows, expected {rows}")
        name = tensor.get("name") or "input"
        width = array.shape[1]
        if single and single_tensor_base is not None:
            names = [single_tensor_base] if width == 1 else [f"{single_tensor_base}_{j}" for j in range(width)]
        elif single and len(tensor.get("shape") or []) >= 2:
            if single_tensor_names is not None and len(single_tensor_names) == width:
                names = list(single_tensor_names)
            else:
                names = [f"{default_prefix}{j}" for j in range(width)]
        else:
            names = [name] if width == 1 else [f"{name}_{j}" for j in range(width)]
        for j, column in enumerate(names):
            columns[column] = array[:, j]
    return columns, rows or 0


def records_to_frame(records: Sequence[dict], feature_names: Sequence[str] | None = None) -> "pd.DataFrame":
    """DataFrame of inference-log records: one row per input row (see :func:`read_window`).

    Records whose tensors are malformed are skipped and counted in ``attrs["skipped_records"]``.
    """
    import numpy as np
    import pandas as pd

    parts: list[pd.DataFrame] = []
    feature_columns: dict[str, None] = {}
    prediction_columns: dict[str, None] = {}
    skipped = 0
    for record in records:
        try:
            features, n = tensors_to_columns(record.get("inputs"), single_tensor_names=feature_names)
            outputs = record.get("outputs") or []
            if len(outputs) == 1:
                predictions, m = tensors_to_columns(outputs, single_tensor_base=PREDICTION_COLUMN)
            else:
                predictions, m = tensors_to_columns(
                    [{**o, "name": f"{PREDICTION_COLUMN}_{o.get('name', j)}"} for j, o in enumerate(outputs)]
                )
            if predictions and m != n:
                raise ValueError(f"{m} prediction rows for {n} input rows")
        except (ValueError, TypeError) as exc:
            log.debug("inference log: skipping record %s: %s", record.get("id"), exc)
            skipped += 1
            continue
        if n == 0:
            skipped += 1
            continue
        feature_columns.update(dict.fromkeys(features))
        prediction_columns.update(dict.fromkeys(predictions))
        meta = {
            "request_id": [record.get("id")] * n,
            "row": np.arange(n),
            "ts": [record.get("ts")] * n,
            "predictor": [record.get("predictor")] * n,
            "model_version": [record.get("modelVersion")] * n,
            "shadow": [bool(record.get("shadow"))] * n,
            "status": [record.get("status")] * n,
            "latency_ms": [record.get("latencyMs")] * n,
        }
        parts.append(pd.DataFrame({**meta, **features, **predictions}))
    if parts:
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = pd.DataFrame({c: [] for c in META_COLUMNS})
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    ordered = list(META_COLUMNS) + list(feature_columns) + [c for c in prediction_columns if c not in feature_columns]
    frame = frame[ordered]
    frame.attrs["feature_columns"] = list(feature_columns)
    frame.attrs["prediction_columns"] = list(prediction_columns)
    frame.attrs["skipped_records"] = skipped
    return frame


def _as_utc(moment: datetime | str | float | None) -> datetime | None:
    if moment is None:
        return None
    if isinstance(moment, (int, float)):
        return datetime.fromtimestamp(moment, tz=timezone.utc)
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("since must be timezone-aware (or an RFC3339 string with an offset)")
    return moment.astimezone(timezone.utc)


def read_window(
    root: str | os.PathLike,
    namespace: str,
    deployment: str,
    *,
    max_rows: int | None = None,
    since: datetime | str | float | None = None,
    include_shadow: bool = False,
    include_errors: bool = False,
    feature_names: Sequence[str] | None = None,
    storage_options: dict | None = None,
) -> "pd.DataFrame":
    """The newest rows of a deployment's inference log as a DataFrame.

    Columns: :data:`META_COLUMNS`, then one column per feature (V2 tensor names; a single 2-D
    tensor gives ``feature_names`` or ``f0..fN``), then ``prediction`` (or
    ``prediction_<output>[_<j>]`` for several outputs). ``attrs["feature_columns"]`` and
    ``attrs["prediction_columns"]`` list them. Rows are sorted by ``ts``; with ``max_rows`` only
    the newest ``max_rows`` are kept, with ``since`` only rows at or after it. Failed requests
    (status >= 400) and shadow traffic are left out unless asked for.

    Only the newest hourly files needed are opened: listing goes newest first and stops once
    ``max_rows`` rows are found or the files are older than ``since``. ``root`` may be a local
    path or an fsspec URI (``s3://…`` with ``storage_options``).
    """
    import fsspec

    since_utc = _as_utc(since)
    fs, base = fsspec.core.url_to_fs(inference_log_dir(root, namespace, deployment), **(storage_options or {}))
    fs.invalidate_cache()  # s3fs keeps listings; routers and sinks add files all the time
    chunks: list[list[dict]] = []
    found_rows = 0
    for hour_start, paths in _hour_files_newest_first(fs, base):
        if since_utc is not None and hour_start + timedelta(hours=1) <= since_utc:
            break
        kept: list[dict] = []
        for path in paths:
            with fs.open(path, "rt", encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a torn last line of a file being written
                    if not include_shadow and record.get("shadow"):
                        continue
                    if not include_errors and int(record.get("status") or 0) >= 400:
                        continue
                    if since_utc is not None and _as_utc(record.get("ts")) < since_utc:
                        continue
                    kept.append(record)
                    found_rows += _record_rows(record)
        chunks.append(kept)
        if max_rows is not None and found_rows >= max_rows:
            break
    records = [r for chunk in reversed(chunks) for r in chunk]
    frame = records_to_frame(records, feature_names=feature_names)
    frame = frame.sort_values(["ts", "request_id", "row"], kind="stable", ignore_index=True)
    if max_rows is not None:
        attrs = dict(frame.attrs)
        frame = frame.tail(max_rows).reset_index(drop=True)
        frame.attrs.update(attrs)
    return frame


def _record_rows(record: dict) -> int:
    """Rows a record contributes (first dimension of its first input), for the max_rows cut-off."""
    inputs = record.get("inputs") or []
    if not inputs:
        return 0
    shape = inputs[0].get("shape") or [1]
    try:
        return int(shape[0])
    except (TypeError, ValueError):
        return 1
