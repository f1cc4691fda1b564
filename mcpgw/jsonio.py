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


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON: ``ValueError`` for malformed, NaN/Infinity or absurdly nested input."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
