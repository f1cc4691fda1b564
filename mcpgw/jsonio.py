"""
JSON in and out of the gateway, strict both ways.

Out: ASCII (every other character escaped, lone surrogates included, since they cannot be
UTF-8), compact, and never NaN or Infinity (not JSON: a value holding them is sent with nulls).
In: NaN, Infinity and absurdly deep nesting are malformed JSON like any other.
"""

from __future__ import annotations

import json
import math
from typing import Any

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_bytes(body: Any) -> bytes:
    try:
        return _encoder.encode(body).encode("ascii")
    except ValueError:  # a non-finite number somewhere (from a child's result)
        return _encoder.encode(_finite(body)).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every body (``json.loads`` with an option builds a new one per call).
_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(raw: bytes | str) -> Any:
    """
    Strict JSON: ``ValueError`` for malformed, NaN/Infinity or absurdly nested input. Bytes
    are decoded as ``json.loads`` does (UTF-8, -16 or -32 by their first bytes).
    """
    if isinstance(raw, bytes):
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    elif raw.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM")
    else:
        text = raw
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
