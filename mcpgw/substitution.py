# -*- test-case-name: tests.test_config -*-
"""
The string grammar of config values (SPEC 3): ``${VAR}`` substitution and the strict parsing
of typed fields written as strings.

- ``${VAR}`` and ``${VAR|default}`` may appear anywhere inside a string value, several times.
  ``VAR`` is ``[A-Za-z_][A-Za-z0-9_]*``. An unset variable without a default becomes ``""``; a
  variable set to ``""`` wins over the default. There is no nesting and no re-scanning: a
  default is taken literally up to the first ``}``, and a substituted value is never
  substituted again. Text that does not match the grammar (``${1X}``, ``${X``) stays as written.
- Keys are never substituted; list items and nested objects are.
- Only a field typed int/float/bool parses a string, and only with the strict grammars below
  (no ``1_000``, ``0x10``, ``inf`` or ``nan``). Every other string stays a string.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from mcpgw.errors import ConfigError

# A key's value when the key is absent (JSON null is None).
MISSING: Any = object()

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^}]*))?\}")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def substitute(text: str, environ: Mapping[str, str]) -> str:
    """
    Replace every ``${VAR}`` / ``${VAR|default}`` in ``text`` from ``environ``.
    """

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is not None:
            return value
        return default if default is not None else ""

    return _REFERENCE.sub(replace, text)


def substitute_tree(data: Any, environ: Mapping[str, str]) -> Any:
    """
    Return a copy of parsed JSON ``data`` with every string value substituted (keys as written).
    """
    if isinstance(data, str):
        return substitute(data, environ)
    if isinstance(data, list):
        return [substitute_tree(item, environ) for item in data]
    if isinstance(data, dict):
        return {key: substitute_tree(value, environ) for key, value in data.items()}
    return data


def parse_int(text: str) -> int | None:
    """
    ``text`` as a decimal integer (surrounding blanks allowed), or None.
    """
    stripped = text.strip()
    return int(stripped) if _INT.fullmatch(stripped) else None


def parse_float(text: str) -> float | None:
    """
    ``text`` as a finite decimal number (surrounding blanks allowed), or None.
    """
    stripped = text.strip()
    if not _FLOAT.fullmatch(stripped):
        return None
    value = float(stripped)
    return value if math.isfinite(value) else None


def parse_bool(text: str) -> bool | None:
    """
    ``text`` as a boolean: true/false, 1/0, yes/no, on/off in any case; None otherwise.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


@attrs.define
class Context:
    """What the readers of one config share: its name, the base directory, unknown keys."""

    source: str
    cwd: str
    unknown: list[str] = attrs.field(factory=list)

    def path(self, text: str) -> str:
        return os.path.abspath(os.path.join(self.cwd, text))


class Reader:
    """One JSON object of the config, read key by key; the keys never read are unknown."""

    def __init__(self, data: Mapping[str, Any], where: str, ctx: Context) -> None:
        self.ctx = ctx
        self._data = data
        self._where = where
        self._seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.ctx.source, self.key_path(key), problem)

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self._data.get(key, MISSING)

    def child(self, key: str, value: Any) -> Reader:
        if not isinstance(value, dict):
            raise self.error(key, "must be an object")
        return Reader(value, self.key_path(key), self.ctx)

    def section(self, key: str) -> Reader:
        value = self.raw(key)
        return self.child(key, {} if value is MISSING else value)

    def string(self, key: str, default: str, *, non_empty: bool = False) -> str:
        value = self.raw(key)
        if value is MISSING:
            return default
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        if non_empty and not value:
            raise self.error(key, "must be a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.raw(key)
        if value is MISSING or value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value or None

    def path(self, key: str, default: str | None) -> str | None:
        value = self.optional_string(key)
        if value is None:
            value = default
        return None if value is None else self.ctx.path(value)

    def integer(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.raw(key)
        if value is MISSING:
            return default
        number = as_int(value)
        if number is None or number < minimum or (maximum is not None and number > maximum):
            if maximum is None:
                raise self.error(key, f"must be an integer >= {minimum}")
            raise self.error(key, f"must be an integer from {minimum} to {maximum}")
        return number

    def seconds(self, key: str, default: float) -> float:
        value = self.raw(key)
        if value is MISSING:
            return default
        number = as_float(value)
        if number is None or number <= 0:
            raise self.error(key, "must be a number of seconds > 0")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is MISSING:
            return default
        flag = as_bool(value)
        if flag is None:
            raise self.error(key, "must be true or false")
        return flag

    def close(self) -> None:
        """Record the keys of this object that nothing read."""
        self.ctx.unknown.extend(self.key_path(k) for k in self._data if k not in self._seen)


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return parse_int(value) if isinstance(value, str) else None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    return parse_float(value) if isinstance(value, str) else None


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    return parse_bool(value) if isinstance(value, str) else None
