# -*- test-case-name: tests.test_swaig -*-
"""
SWAIG translation (SPEC 9): MCP tools as SignalWire AI Gateway functions, as pure logic.

Nothing here does I/O; the HTTP layer (``GET /swaig/functions``, ``POST /swaig``) calls these:

- L{build_function_table} names every (service, tool) pair as a SWAIG function and
  L{build_functions} renders the definitions (one per tool, plus the hangup hook
  L{HANGUP_FUNCTION}).
- L{parse_webhook} reads a SWAIG webhook body into a L{WebhookCall}, or raises
  L{SwaigRefusal} whose ``sentence`` is the ``response`` to send back (the tool never runs).
- L{render_result} turns an MCP ``CallToolResult`` into the ``response`` text;
  L{describe_failure} turns a failure into a sentence the AI can use.

Function names.  ``mcp_<service>_<tool>`` when that already matches ``^[A-Za-z_][A-Za-z0-9_]*$``
and has at most 64 characters.  Otherwise every character outside ``[A-Za-z0-9_]`` becomes
``_``, the result is cut to 57 characters and ``_`` plus the first 6 hex digits of
``sha256(service + "\\0" + tool)`` is appended.  Names only depend on the pair and on the other
pairs it collides with, never on the order tools were listed, so they are stable across
restarts.  Collisions (``a_b``/``c`` and ``a``/``b_c`` are both ``mcp_a_b_c``): the pair that
sorts first keeps the name, every other one gets the hashed form (a longer hash if even that is
taken).  ``mcp_gateway_hangup`` is reserved for the hangup hook.  Build the table from the whole
catalog and filter afterwards (``services=`` of L{build_functions}), so a filtered listing uses
the same names as the webhook.  A catalog change that introduces a new collision can rename the
later-sorting pair of that collision; nothing else moves.

Definitions carry ``function``, ``description``, ``parameters`` and ``web_hook_url``: the
fields SignalWire's own SDK (signalwire-agents 1.1.0 ``SWAIGFunction.to_swaig``) emits.  The
older SWML spelling ``purpose``/``argument`` is not emitted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import attrs

from mcpgw.errors import (
    CallTimeout,
    ChildFailed,
    JsonRpcError,
    RateLimited,
    ServiceUnavailable,
    SessionClosed,
    StartupFailed,
    TooManySessions,
    UnknownService,
)
from mcpgw.jsonio import parse_json
from mcpgw.sessions import valid_session_id

HANGUP_FUNCTION = "mcp_gateway_hangup"
HANGUP_DESCRIPTION = "Close this call's MCP tool sessions when the call ends."
MAX_FUNCTION_LENGTH = 64
NO_CONTENT = "The tool returned no content."
# Longest JSON-RPC error message repeated to the AI.
_MAX_DETAIL = 500
_HASH_LENGTHS = (6, 8, 10, 12, 16, 24, 32, 48, 59)

_VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INVALID_CHAR = re.compile(r"[^A-Za-z0-9_]")
_EMPTY_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}


class SwaigRefusal(Exception):
    """
    A webhook call that cannot be served; ``sentence`` is the ``response`` text to answer
    (with 200) so the AI knows what went wrong.
    """

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


class UnknownFunction(SwaigRefusal):
    """The webhook named a function that is not in the function table."""

    def __init__(self, function: str) -> None:
        super().__init__(f"There is no function named {function}.")
        self.function = function


@attrs.frozen
class WebhookCall:
    """One SWAIG webhook invocation: which function, with which arguments, for which call."""

    function: str
    arguments: dict[str, Any]
    session_id: str

    @property
    def is_hangup(self) -> bool:
        return self.function == HANGUP_FUNCTION


def _digest(service: str, tool: str) -> str:
    data = (service + "\0" + tool).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _hashed_name(service: str, tool: str, length: int) -> str:
    stem = _INVALID_CHAR.sub("_", f"mcp_{service}_{tool}")
    return stem[: MAX_FUNCTION_LENGTH - 1 - length] + "_" + _digest(service, tool)[:length]


def function_name(service: str, tool: str) -> str:
    """
    The SWAIG function name of one tool, ignoring collisions with other tools: the plain
    ``mcp_<service>_<tool>`` when valid, else the sanitized and hashed form.
    """
    plain = f"mcp_{service}_{tool}"
    if len(plain) <= MAX_FUNCTION_LENGTH and _VALID_NAME.fullmatch(plain):
        return plain
    return _hashed_name(service, tool, _HASH_LENGTHS[0])


def _catalog_pairs(
    catalog: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[tuple[str, str, Mapping[str, Any]]]:
    """Every (service, tool name, tool) once, in catalog order; unnamed tools are skipped."""
    seen: set[tuple[str, str]] = set()
    pairs: list[tuple[str, str, Mapping[str, Any]]] = []
    for service, tools in catalog.items():
        for tool in tools:
            if not isinstance(tool, Mapping):
                continue
            name = tool.get("name")
            if not isinstance(name, str) or (service, name) in seen:
                continue
            seen.add((service, name))
            pairs.append((service, name, tool))
    return pairs


def _assign_names(pairs: Collection[tuple[str, str]]) -> dict[tuple[str, str], str]:
    claimed: set[str] = {HANGUP_FUNCTION}
    names: dict[tuple[str, str], str] = {}
    losers: list[tuple[str, str]] = []
    # Phase 1: within each group sharing a base name, the pair sorting first keeps it.
    for pair in sorted(pairs):
        base = function_name(*pair)
        if base in claimed:
            losers.append(pair)
        else:
            claimed.add(base)
            names[pair] = base
    # Phase 2: the others take hashed names, lengthening the hash until one is free.
    for service, tool in losers:
        for length in _HASH_LENGTHS:
            candidate = _hashed_name(service, tool, length)
            if candidate not in claimed:
                break
        else:  # pragma: no cover - would need a sha256 collision
            counter = 0
            while candidate in claimed:
                counter += 1
                candidate = _hashed_name(service, tool, 40) + f"_{counter}"
        claimed.add(candidate)
        names[(service, tool)] = candidate
    return names


def build_function_table(
    catalog: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, tuple[str, str]]:
    """
    Map every SWAIG function name to its (service, tool name), in catalog order.

    @param catalog: service name -> the MCP Tool objects as the server sent them.
    """
    pairs = [(s, t) for s, t, _ in _catalog_pairs(catalog)]
    names = _assign_names(pairs)
    return {names[pair]: pair for pair in pairs}


def resolve_function(table: Mapping[str, tuple[str, str]], function: str) -> tuple[str, str]:
    """
    The (service, tool) behind a SWAIG function name.

    @raise UnknownFunction: when the table has no such function.
    """
    try:
        return table[function]
    except KeyError:
        raise UnknownFunction(function) from None


def _parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The tool's input schema, copied, guaranteed to be an object schema."""
    schema = tool.get("inputSchema")
    if not isinstance(schema, Mapping) or schema.get("type", "object") != "object":
        return copy.deepcopy(dict(_EMPTY_SCHEMA))
    params = copy.deepcopy(dict(schema))
    params.setdefault("type", "object")
    if not isinstance(params.get("properties"), Mapping):
        params["properties"] = {}
    return params


def _description(service: str, name: str, tool: Mapping[str, Any]) -> str:
    text = tool.get("description")
    if not isinstance(text, str) or not text.strip():
        text = name
    return f"[{service}] {text}"


def build_functions(
    catalog: Mapping[str, Sequence[Mapping[str, Any]]],
    webhook_url: str,
    services: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """
    The SWAIG function definitions of every tool, then the hangup hook.

    Names are computed over the whole catalog; ``services`` (when given) only chooses which
    services' functions are listed, so names match L{build_function_table} of the same catalog.
    """
    pairs = _catalog_pairs(catalog)
    names = _assign_names([(s, t) for s, t, _ in pairs])
    functions: list[dict[str, Any]] = []
    for service, name, tool in pairs:
        if services is not None and service not in services:
            continue
        functions.append(
            {
                "function": names[(service, name)],
                "description": _description(service, name, tool),
                "parameters": _parameters(tool),
                "web_hook_url": webhook_url,
            }
        )
    functions.append(hangup_function(webhook_url))
    return functions


def hangup_function(webhook_url: str) -> dict[str, Any]:
    """The definition of the hangup hook that closes the call's sessions."""
    return {
        "function": HANGUP_FUNCTION,
        "description": HANGUP_DESCRIPTION,
        "parameters": copy.deepcopy(dict(_EMPTY_SCHEMA)),
        "web_hook_url": webhook_url,
        "is_hangup_hook": True,
    }


def webhook_url(public_url: str, user: str | None, password: str | None) -> str:
    """
    ``public_url`` + ``/swaig``, with ``user:password@`` (percent-encoded) in the authority
    when both are non-empty.  Userinfo already present in ``public_url`` is replaced by them,
    or kept when they are not given.
    """
    parts = urlsplit(public_url)
    netloc = parts.netloc
    if user and password:
        host = netloc.rpartition("@")[2]
        netloc = quote(user, safe="") + ":" + quote(password, safe="") + "@" + host
    path = parts.path.rstrip("/") + "/swaig"
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _session_id(body: Mapping[str, Any]) -> str:
    global_data = body.get("global_data")
    candidate: Any = None
    if isinstance(global_data, Mapping) and _present(global_data.get("mcp_call_id")):
        candidate = global_data["mcp_call_id"]
    elif _present(body.get("call_id")):
        candidate = body["call_id"]
    if candidate is None:
        raise SwaigRefusal(
            "This call has no call id, so the tool cannot run; no session was started."
        )
    if not isinstance(candidate, str) or not valid_session_id(candidate):
        raise SwaigRefusal("This call's id is not a valid session id, so the tool cannot run.")
    return candidate


def _arguments(function: str, argument: Any) -> dict[str, Any]:
    if argument is None:
        return {}
    if not isinstance(argument, Mapping):
        raise SwaigRefusal(f"The arguments for {function} must be a JSON object.")
    parsed = argument.get("parsed")
    if isinstance(parsed, list) and parsed:
        value: Any = parsed[0]
    elif isinstance(argument.get("raw"), str) and argument["raw"].strip():
        try:
            value = parse_json(argument["raw"])
        except ValueError:
            raise SwaigRefusal(
                f"The arguments for {function} were not valid JSON; please try again."
            ) from None
    else:
        return {}
    if not isinstance(value, dict):
        raise SwaigRefusal(f"The arguments for {function} must be a JSON object.")
    return value


def parse_webhook(body: Any) -> WebhookCall:
    """
    Read a SWAIG webhook body.

    Arguments come from ``argument.parsed[0]``, else ``argument.raw`` decoded as JSON, else
    ``{}``.  The session id is ``global_data.mcp_call_id``, else ``call_id`` (as the SDK skill
    does), and must be a valid session id: there is never a shared fallback session.

    @raise SwaigRefusal: when the body is not an object, names no function, carries arguments
        that are not an object, or has no usable session id.
    """
    if not isinstance(body, Mapping):
        raise SwaigRefusal("The request was not a SWAIG function call.")
    function = body.get("function")
    if not isinstance(function, str) or not function:
        raise SwaigRefusal("The request did not name a function.")
    arguments = _arguments(function, body.get("argument"))
    return WebhookCall(function=function, arguments=arguments, session_id=_session_id(body))


def _render_item(item: Any) -> str:
    if not isinstance(item, Mapping):
        return "[unknown content]"
    kind = item.get("type")
    if kind == "text":
        text = item.get("text")
        return text if isinstance(text, str) else ""
    if kind in ("image", "audio"):
        return f"[{kind}: {item.get('mimeType') or 'unknown type'}]"
    if kind == "resource":
        resource = item.get("resource")
        if isinstance(resource, Mapping):
            text = resource.get("text")
            if isinstance(text, str):
                return text
            return f"[resource: {resource.get('uri', '')}]"
        return "[resource]"
    if kind == "resource_link":
        label = " ".join(
            str(item[key]) for key in ("name", "uri") if isinstance(item.get(key), str)
        )
        return f"[link: {label}]"
    return f"[{kind if isinstance(kind, str) and kind else 'unknown'} content]"


def render_result(call_tool_result: Mapping[str, Any], tool: str) -> str:
    """
    The ``response`` text of an MCP ``CallToolResult``: text items joined with newlines, other
    items as short bracketed phrases; no content gives ``structuredContent`` as JSON, or a
    sentence saying so; an ``isError`` result is prefixed ``Error from tool <tool>: ``.
    """
    content = call_tool_result.get("content")
    items = content if isinstance(content, list) else []
    if items:
        text = "\n".join(_render_item(item) for item in items)
    elif call_tool_result.get("structuredContent") is not None:
        text = json.dumps(
            call_tool_result["structuredContent"], ensure_ascii=False, separators=(",", ":")
        )
    else:
        text = NO_CONTENT
    if call_tool_result.get("isError") is True:
        return f"Error from tool {tool}: {text}"
    return text


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def describe_failure(exc: BaseException, tool: str) -> str:
    """A sentence the AI can use about a failed webhook call of ``tool``."""
    if isinstance(exc, SwaigRefusal):
        return exc.sentence
    if isinstance(exc, UnknownService):
        return f"The service {exc.name} is not available, so {tool} cannot be used."
    if isinstance(exc, CallTimeout):
        return f"The tool {tool} did not answer within {exc.seconds:g} seconds."
    if isinstance(exc, StartupFailed):
        return f"The tool {tool} could not be started; it is unavailable right now."
    if isinstance(exc, ChildFailed):
        return f"The tool {tool} stopped unexpectedly while working; it can be tried again."
    if isinstance(exc, JsonRpcError):
        return f"The tool {tool} refused the request: {_shorten(exc.message)}"
    if isinstance(exc, ServiceUnavailable):
        return f"The tool {tool} is unavailable right now."
    if isinstance(exc, (TooManySessions, RateLimited)):
        return f"The tool {tool} is busy right now; please try again in a moment."
    if isinstance(exc, SessionClosed):
        return f"The call's session ended before the tool {tool} finished."
    return f"The tool {tool} failed unexpectedly."
