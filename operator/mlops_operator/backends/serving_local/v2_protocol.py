"""Open Inference (V2) protocol checks done by the router before a request reaches a model server.

Pure: no I/O. A request that breaks the protocol, or the model's declared signature (the
``inputs`` of its ``model-settings.json``, written at export from the training schema), is the
client's mistake: the router answers it with ``400 {"error": "..."}`` and it never counts as a
predictor error. Without a declared signature only the protocol itself is checked.

Also decodes the binary tensor data extension (``Inference-Header-Content-Length``, what
``tritonclient`` sends by default), which MLServer does not speak, into plain JSON data.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Mapping, Sequence

# datatype -> (kind, numpy dtype of the binary extension, integer range)
_INT_RANGES = {
    "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1), "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1), "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1),
}
_FLOATS = ("FP16", "FP32", "FP64")
DATATYPES = ("BOOL", *_INT_RANGES, *_FLOATS, "BYTES")
NUMERIC = frozenset((*_INT_RANGES, *_FLOATS))
_BINARY_FORMAT = {
    "BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H",
    "UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d",
}
# Bounds that keep one request's bookkeeping small whatever a client sends.
MAX_INPUTS = 1024
MAX_RANK = 8
BINARY_HEADER = "inference-header-content-length"


class ClientError(ValueError):
    """A request the client got wrong; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_binary_extension(body: bytes, header_length: str) -> bytes:
    """The JSON body of a request that uses the binary tensor data extension, with its binary
    inputs turned into JSON ``data`` (``parameters.binary_data_size`` bytes each, in input order)."""
    try:
        length = int(header_length)
    except ValueError:
        raise ClientError(f"Inference-Header-Content-Length must be an integer, got {header_length[:40]!r}") from None
    if not 0 <= length <= len(body):
        raise ClientError(f"Inference-Header-Content-Length {length} is outside the body of {len(body)} bytes")
    request = _json_object(body[:length])
    offset = length
    for index, tensor in enumerate(request.get("inputs") or []):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        size = params.pop("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(body):
            raise ClientError(f"inputs[{index}].parameters.binary_data_size {size!r} does not fit the body")
        chunk = body[offset:offset + size]
        offset += size
        tensor["data"] = _binary_values(chunk, tensor.get("datatype"), index)
        if not params:
            tensor.pop("parameters")
    if offset != len(body):
        raise ClientError(f"{len(body) - offset} bytes after the binary tensors are not claimed by any input")
    # Outputs come back as JSON: MLServer does not write binary outputs.
    if isinstance(request.get("parameters"), dict):
        request["parameters"].pop("binary_data_output", None)
    for output in request.get("outputs") or []:
        if isinstance(output, dict) and isinstance(output.get("parameters"), dict):
            output["parameters"].pop("binary_data", None)
    return json.dumps(request, separators=(",", ":")).encode()


def _binary_values(chunk: bytes, datatype: Any, index: int) -> list:
    if datatype == "BYTES":
        values, pos = [], 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise ClientError(f"inputs[{index}]: truncated BYTES element")
            (n,) = struct.unpack_from("<I", chunk, pos)
            pos += 4
            if pos + n > len(chunk):
                raise ClientError(f"inputs[{index}]: truncated BYTES element")
            values.append(chunk[pos:pos + n].decode("utf-8", errors="replace"))
            pos += n
        return values
    fmt = _BINARY_FORMAT.get(datatype) if isinstance(datatype, str) else None
    if fmt is None:
        raise ClientError(f"inputs[{index}].datatype {datatype!r} is not a V2 datatype; use one of {', '.join(DATATYPES)}")
    width = struct.calcsize(fmt)
    if len(chunk) % width:
        raise ClientError(f"inputs[{index}]: {len(chunk)} bytes is not a whole number of {datatype} elements")
    return list(struct.unpack(f"<{len(chunk) // width}{fmt}", chunk))


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError as error:
        raise ClientError(f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ClientError(f"the body must be a JSON object (a V2 inference request), got {type(value).__name__}")
    return value


def parse_request(body: bytes) -> dict:
    """The request as a dict, checked against the V2 protocol; :class:`ClientError` if it breaks it."""
    request = _json_object(body)
    if "id" in request and not isinstance(request["id"], str):
        raise ClientError("id must be a string")
    if "parameters" in request and not isinstance(request["parameters"], dict):
        raise ClientError("parameters must be an object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ClientError('inputs must be a non-empty list of tensors ({"name", "shape", "datatype", "data"})')
    if len(inputs) > MAX_INPUTS:
        raise ClientError(f"{len(inputs)} inputs; at most {MAX_INPUTS} are accepted")
    names = set()
    for index, tensor in enumerate(inputs):
        _check_tensor(tensor, index)
        if tensor["name"] in names:
            raise ClientError(f"inputs[{index}]: input name {tensor['name']!r} appears twice")
        names.add(tensor["name"])
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) and o["name"] for o in outputs):
            raise ClientError('outputs must be a list of {"name": ...} objects')
    return request


def _check_tensor(tensor: Any, index: int) -> None:
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise ClientError(f"{where} must be an object with name, shape, datatype and data")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise ClientError(f"{where} has no {', '.join(missing)}")
    if not isinstance(tensor["name"], str) or not tensor["name"]:
        raise ClientError(f"{where}.name must be a non-empty string")
    where = f"input {tensor['name']!r}"[:80]
    shape = tensor["shape"]
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ClientError(f"{where}: shape must be a list of at most {MAX_RANK} non-negative integers, got "
                          f"{json.dumps(shape)[:80]}")
    datatype = tensor["datatype"]
    if datatype not in DATATYPES:
        raise ClientError(f"{where}: datatype {json.dumps(datatype)[:40]} is not a V2 datatype; "
                          f"use one of {', '.join(DATATYPES)}")
    if "parameters" in tensor and not isinstance(tensor["parameters"], dict):
        raise ClientError(f"{where}: parameters must be an object")
    data = tensor["data"]
    values = list(_flatten(data)) if isinstance(data, list) else [data]
    expected = math.prod(shape)
    if len(values) != expected:
        raise ClientError(f"{where}: shape {shape} holds {expected} elements but data has {len(values)}")
    for value in values:
        problem = _element_problem(value, datatype)
        if problem:
            raise ClientError(f"{where}: datatype {datatype} {problem}")


def _flatten(data: list):
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_RANK:
                    raise ClientError(f"data is nested deeper than {MAX_RANK} levels")
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _element_problem(value: Any, datatype: str) -> str | None:
    if datatype == "BYTES":
        return None if isinstance(value, str) else f"needs strings, got {json.dumps(value)[:40]}"
    if datatype == "BOOL":
        return None if isinstance(value, bool) else f"needs true/false, got {json.dumps(value)[:40]}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"needs numbers, got {json.dumps(value)[:40]}"
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        if not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
            return f"needs integers, got {value!r}"
        if not low <= value <= high:
            return f"holds {low}..{high}, got {value!r}"
    return None


def check_signature(request: dict, inputs: Sequence[Mapping[str, Any]]) -> None:
    """:class:`ClientError` unless the (protocol-valid) request fits the model's declared inputs.

    A model that declares one input takes it under any name (clients use ``input-0``, ``predict``,
    ``x``, ...); with several, each is matched by name. Shapes match where the declaration is not
    ``-1``; a numeric input takes any numeric datatype (the model casts), nothing else.
    """
    if not inputs:
        return
    given = request["inputs"]
    if len(inputs) == 1:
        if len(given) != 1:
            raise ClientError(f"the model takes one input tensor ({_describe(inputs[0])}), got {len(given)}")
        pairs = [(inputs[0], given[0])]
    else:
        by_name = {t["name"]: t for t in given}
        missing = [t["name"] for t in inputs if t["name"] not in by_name]
        unknown = sorted(set(by_name) - {t["name"] for t in inputs})
        if missing or unknown:
            raise ClientError(f"the model takes inputs {[t['name'] for t in inputs]}; "
                              + (f"missing {missing}" if missing else "") + ("; " if missing and unknown else "")
                              + (f"unknown {unknown}" if unknown else ""))
        pairs = [(t, by_name[t["name"]]) for t in inputs]
    for declared, tensor in pairs:
        _check_against(declared, tensor)


def in_declared_order(request: dict, inputs: Sequence[Mapping[str, Any]]) -> bool:
    """Put a (signature-checked) request's inputs in the declared order, as a model reading a table
    by column position needs; True when that changed anything."""
    if len(inputs) < 2:
        return False
    position = {t["name"]: i for i, t in enumerate(inputs)}
    ordered = sorted(request["inputs"], key=lambda t: position.get(t["name"], len(position)))
    if ordered == request["inputs"]:
        return False
    request["inputs"] = ordered
    return True


def _check_against(declared: Mapping[str, Any], tensor: dict) -> None:
    want_shape = list(declared.get("shape") or [])
    shape = tensor["shape"]
    features = (declared.get("parameters") or {}).get("features")
    if want_shape and (len(shape) != len(want_shape)
                       or any(w not in (-1, s) for w, s in zip(want_shape, shape))):
        hint = f" (features in order: {', '.join(features)})" if isinstance(features, list) and len(features) <= 32 else ""
        if len(want_shape) == 2 and len(shape) == 2 and want_shape[1] != -1 and shape[1] != want_shape[1]:
            raise ClientError(f"input {tensor['name']!r}: the model takes {want_shape[1]} features per row, "
                              f"got {shape[1]} (shape {shape}, expected {want_shape}){hint}")
        raise ClientError(f"input {tensor['name']!r}: shape {shape} does not match the model's {want_shape}{hint}")
    want = declared.get("datatype")
    have = tensor["datatype"]
    if want and have != want and not (want in NUMERIC and have in NUMERIC):
        raise ClientError(f"input {tensor['name']!r}: datatype {have} does not fit the model's {want}")


def _describe(tensor: Mapping[str, Any]) -> str:
    return f"{tensor.get('datatype')} {tensor.get('shape')}"


def declared_inputs(model_settings: Mapping[str, Any]) -> list[dict]:
    """The well-formed input declarations of a ``model-settings.json`` (others are ignored: a model
    exported before signatures were written declares none, and only the protocol is checked)."""
    declared = []
    for tensor in model_settings.get("inputs") or []:
        if (isinstance(tensor, dict) and isinstance(tensor.get("name"), str) and tensor.get("datatype") in DATATYPES
                and isinstance(tensor.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in tensor["shape"])):
            declared.append({k: tensor[k] for k in ("name", "datatype", "shape", "parameters") if k in tensor})
    return declared
