"""
Tests for L{mcpgw.swaig}: SWAIG function naming, definitions, webhook parsing and rendering.

The tool schemas and results below were captured verbatim from real servers
(mcp-server-time 2026.10.19 and @modelcontextprotocol/server-everything 2026.8.31, driven
with /work/shared/peers/drive.py); base64 payloads are shortened.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from mcpgw.errors import (
    CallTimeout,
    ChildFailed,
    JsonRpcError,
    ServiceUnavailable,
    SessionClosed,
    StartupFailed,
    TooManySessions,
    UnknownService,
)
from mcpgw.swaig import (
    HANGUP_FUNCTION,
    NO_CONTENT,
    SwaigRefusal,
    UnknownFunction,
    WebhookCall,
    build_function_table,
    build_functions,
    describe_failure,
    function_name,
    parse_webhook,
    render_result,
    resolve_function,
    valid_session_id,
    webhook_url,
)

VALID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

GET_CURRENT_TIME: dict[str, Any] = {
    "annotations": {
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
        "readOnlyHint": True,
    },
    "description": "Get current time in a specific timezone",
    "inputSchema": {
        "properties": {
            "timezone": {
                "description": "IANA timezone name (e.g., 'America/New_York', "
                "'Europe/London'). Use 'UTC' as local timezone if no timezone provided "
                "by the user.",
                "title": "Timezone",
                "type": "string",
            }
        },
        "required": ["timezone"],
        "type": "object",
        "title": "get_current_timeArguments",
    },
    "name": "get_current_time",
    "outputSchema": {
        "properties": {
            "timezone": {"title": "Timezone", "type": "string"},
            "datetime": {"title": "Datetime", "type": "string"},
            "day_of_week": {"title": "Day Of Week", "type": "string"},
            "is_dst": {"title": "Is Dst", "type": "boolean"},
        },
        "required": ["timezone", "datetime", "day_of_week", "is_dst"],
        "type": "object",
        "title": "TimeResult",
    },
}

CONVERT_TIME: dict[str, Any] = {
    "description": "Convert time between timezones",
    "inputSchema": {
        "properties": {
            "source_timezone": {
                "description": "Source IANA timezone name (e.g., 'America/New_York', "
                "'Europe/London'). Use 'UTC' as local timezone if no source timezone "
                "provided by the user.",
                "title": "Source Timezone",
                "type": "string",
            },
            "time": {
                "description": "Time to convert in 24-hour format (HH:MM)",
                "title": "Time",
                "type": "string",
            },
            "target_timezone": {
                "description": "Target IANA timezone name (e.g., 'Asia/Tokyo', "
                "'America/San_Francisco'). Use 'UTC' as local timezone if no target "
                "timezone provided by the user.",
                "title": "Target Timezone",
                "type": "string",
            },
        },
        "required": ["source_timezone", "time", "target_timezone"],
        "type": "object",
        "title": "convert_timeArguments",
    },
    "name": "convert_time",
}

_DRAFT7 = "http://json-schema.org/draft-07/schema#"
_ANNOTATIONS_RO = {
    "readOnlyHint": True,
    "destructiveHint": False,
    "idempotentHint": True,
    "openWorldHint": False,
}

ECHO: dict[str, Any] = {
    "name": "echo",
    "title": "Echo Tool",
    "description": "Echoes back the input string",
    "inputSchema": {
        "$schema": _DRAFT7,
        "type": "object",
        "properties": {"message": {"type": "string", "description": "Message to echo"}},
        "required": ["message"],
    },
    "annotations": _ANNOTATIONS_RO,
    "execution": {"taskSupport": "forbidden"},
}

GET_SUM: dict[str, Any] = {
    "name": "get-sum",
    "title": "Get Sum Tool",
    "description": "Returns the sum of two numbers",
    "inputSchema": {
        "$schema": _DRAFT7,
        "type": "object",
        "properties": {
            "a": {"type": "number", "description": "First number"},
            "b": {"type": "number", "description": "Second number"},
        },
        "required": ["a", "b"],
    },
    "annotations": _ANNOTATIONS_RO,
    "execution": {"taskSupport": "forbidden"},
}

GET_TINY_IMAGE: dict[str, Any] = {
    "name": "get-tiny-image",
    "title": "Get Tiny Image Tool",
    "description": "Returns a tiny MCP logo image.",
    "inputSchema": {"$schema": _DRAFT7, "type": "object", "properties": {}},
    "annotations": _ANNOTATIONS_RO,
    "execution": {"taskSupport": "forbidden"},
}

GET_ANNOTATED_MESSAGE: dict[str, Any] = {
    "name": "get-annotated-message",
    "title": "Get Annotated Message Tool",
    "description": "Demonstrates how annotations can be used to provide metadata about content.",
    "inputSchema": {
        "$schema": _DRAFT7,
        "type": "object",
        "properties": {
            "messageType": {
                "type": "string",
                "enum": ["error", "success", "debug"],
                "description": "Type of message to demonstrate different annotation patterns",
            },
            "includeImage": {
                "default": False,
                "description": "Whether to include an example image",
                "type": "boolean",
            },
        },
        "required": ["messageType"],
    },
    "annotations": _ANNOTATIONS_RO,
    "execution": {"taskSupport": "forbidden"},
}

# Constructed: the shapes real servers produce from pydantic models (nested objects,
# arrays of objects, anyOf for Optional, $defs/$ref), none of which the SDK skill keeps.
NESTED: dict[str, Any] = {
    "name": "create_entities",
    "description": "Create multiple new entities in the knowledge graph",
    "inputSchema": {
        "type": "object",
        "properties": {
            "entities": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "entityType": {"type": "string", "enum": ["person", "place"]},
                        "observations": {"type": "array", "items": {"type": "string"}},
                        "location": {"$ref": "#/$defs/Point"},
                    },
                    "required": ["name", "entityType", "observations"],
                    "additionalProperties": False,
                },
            },
            "max_count": {
                "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                "default": None,
            },
        },
        "required": ["entities"],
        "$defs": {
            "Point": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
            }
        },
    },
}

CATALOG: dict[str, list[dict[str, Any]]] = {
    "time": [GET_CURRENT_TIME, CONVERT_TIME],
    "everything": [ECHO, GET_SUM, GET_TINY_IMAGE, GET_ANNOTATED_MESSAGE],
    "memory": [NESTED],
}

HOOK = "https://gw.example.com/swaig"


def hashed(service: str, tool: str, length: int = 6) -> str:
    """The documented hashed form: sanitized, cut, ``_`` + sha256 hex prefix."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", f"mcp_{service}_{tool}")
    digest = hashlib.sha256((service + "\0" + tool).encode()).hexdigest()
    return stem[: 63 - length] + "_" + digest[:length]


def tool(name: str, description: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "inputSchema": {"type": "object", "properties": {}}}
    if description is not None:
        result["description"] = description
    return result


class FunctionNameTests(SynchronousTestCase):
    """Naming of single tools, before collisions are considered."""

    def test_plain_name_kept(self) -> None:
        """A name already valid and short enough is ``mcp_<service>_<tool>`` unchanged."""
        self.assertEqual(function_name("time", "get_current_time"), "mcp_time_get_current_time")

    def test_hyphen_sanitized_with_hash(self) -> None:
        """Hyphens become underscores and a 6-hex hash of the pair is appended."""
        name = function_name("everything", "get-sum")
        self.assertEqual(name, hashed("everything", "get-sum"))
        self.assertTrue(name.startswith("mcp_everything_get_sum_"))
        self.assertRegex(name, r"_[0-9a-f]{6}\Z")

    def test_service_with_hyphen(self) -> None:
        """A hyphen in the service name (allowed by the config) is sanitized too."""
        name = function_name("my-svc", "run")
        self.assertEqual(name, hashed("my-svc", "run"))
        self.assertTrue(VALID.fullmatch(name))

    def test_odd_characters(self) -> None:
        """Dots, slashes, spaces and non-ASCII letters all give valid names, distinct per pair."""
        tools = ["files.read", "fs/list", "météo prévision", "天気", "a\u200bb", "x\U0001f600"]
        names = [function_name("svc", t) for t in tools]
        for name in names:
            self.assertTrue(VALID.fullmatch(name), name)
            self.assertLessEqual(len(name), 64)
        self.assertEqual(len(set(names)), len(names))
        self.assertTrue(names[2].startswith("mcp_svc_m_t_o_pr_vision_"))

    def test_lone_surrogate(self) -> None:
        """A tool name with a lone surrogate (valid JSON escape) still gets a name."""
        name = function_name("svc", json.loads('"bad\\ud800name"'))
        self.assertTrue(VALID.fullmatch(name))

    def test_length_boundary(self) -> None:
        """64 valid characters stay plain; 65 are cut to 64 with a hash."""
        tool64 = "t" * (64 - len("mcp_s_"))
        self.assertEqual(function_name("s", tool64), "mcp_s_" + tool64)
        long_name = function_name("s", tool64 + "u")
        self.assertEqual(len(long_name), 64)
        self.assertEqual(long_name, hashed("s", tool64 + "u"))

    def test_long_names_differing_at_the_end(self) -> None:
        """Two very long names sharing their first 200 characters get distinct names."""
        prefix = "x" * 200
        first = function_name("svc", prefix + "_alpha")
        second = function_name("svc", prefix + "_beta")
        self.assertNotEqual(first, second)
        self.assertEqual(len(first), 64)
        self.assertTrue(VALID.fullmatch(second))


class FunctionTableTests(SynchronousTestCase):
    """L{build_function_table}: unique, stable names over a whole catalog."""

    def test_real_catalog(self) -> None:
        """Every real tool is in the table and maps back to its (service, tool)."""
        table = build_function_table(CATALOG)
        self.assertEqual(
            table,
            {
                "mcp_time_get_current_time": ("time", "get_current_time"),
                "mcp_time_convert_time": ("time", "convert_time"),
                "mcp_everything_echo": ("everything", "echo"),
                hashed("everything", "get-sum"): ("everything", "get-sum"),
                hashed("everything", "get-tiny-image"): ("everything", "get-tiny-image"),
                hashed("everything", "get-annotated-message"): (
                    "everything",
                    "get-annotated-message",
                ),
                "mcp_memory_create_entities": ("memory", "create_entities"),
            },
        )

    def test_collision(self) -> None:
        """
        ``a_b``/``c`` and ``a``/``b_c`` both read ``mcp_a_b_c``: the pair sorting first keeps it,
        the other gets the hashed form.
        """
        table = build_function_table({"a_b": [tool("c")], "a": [tool("b_c")]})
        self.assertEqual(table, {"mcp_a_b_c": ("a", "b_c"), hashed("a_b", "c"): ("a_b", "c")})

    def test_collision_between_hashed_and_plain(self) -> None:
        """A plain name equal to another tool's hashed name still yields two distinct names."""
        clash = hashed("x", "a-b")[len("mcp_x_") :]
        table = build_function_table({"x": [tool(clash), tool("a-b")]})
        self.assertEqual(len(table), 2)
        self.assertEqual(table[hashed("x", "a-b")], ("x", "a-b"))
        self.assertEqual(table[hashed("x", clash)], ("x", clash))

    def test_hashed_name_taken_lengthens_hash(self) -> None:
        """A pair whose hashed name was claimed by a plain name gets a longer hash."""
        clash = hashed("x", "b~a")[len("mcp_x_") :]
        table = build_function_table({"x": [tool("b~a"), tool(clash)]})
        self.assertEqual(
            table,
            {hashed("x", "b~a", 8): ("x", "b~a"), hashed("x", "b~a"): ("x", clash)},
        )

    def test_stable_across_order(self) -> None:
        """Any order of services and tools gives the same table (names survive restarts)."""
        services = {
            "a_b": [tool("c"), tool("d-e")],
            "a": [tool("b_c"), tool("d_e")],
            "everything": [GET_SUM, ECHO, GET_TINY_IMAGE],
        }
        expected = build_function_table(services)
        for order in itertools.permutations(services):
            shuffled = {name: list(reversed(services[name])) for name in order}
            self.assertEqual(build_function_table(shuffled), expected)

    def test_unrelated_service_does_not_rename(self) -> None:
        """Adding a service whose tools do not collide leaves existing names alone."""
        before = build_function_table(CATALOG)
        after = build_function_table({**CATALOG, "git": [tool("git_status"), tool("git-x")]})
        for name, pair in before.items():
            self.assertEqual(after[name], pair)

    def test_hangup_name_reserved(self) -> None:
        """A tool that would be called ``mcp_gateway_hangup`` gets another name."""
        table = build_function_table({"gateway": [tool("hangup")]})
        self.assertNotIn(HANGUP_FUNCTION, table)
        self.assertEqual(table, {hashed("gateway", "hangup"): ("gateway", "hangup")})

    def test_unnamed_and_duplicate_tools_skipped(self) -> None:
        """Tools without a string name are skipped; a repeated name is listed once."""
        table = build_function_table(
            {"svc": [tool("t"), {"inputSchema": {}}, {"name": 3}, "junk", tool("t")]}  # type: ignore[list-item]
        )
        self.assertEqual(table, {"mcp_svc_t": ("svc", "t")})

    def test_resolve(self) -> None:
        """L{resolve_function} maps back, and refuses unknown names with a sentence."""
        table = build_function_table(CATALOG)
        self.assertEqual(resolve_function(table, "mcp_everything_echo"), ("everything", "echo"))
        exc = self.assertRaises(UnknownFunction, resolve_function, table, "mcp_nope")
        self.assertIsInstance(exc, SwaigRefusal)
        self.assertIn("mcp_nope", exc.sentence)


class BuildFunctionsTests(SynchronousTestCase):
    """L{build_functions}: the ``GET /swaig/functions`` list."""

    def by_name(self, functions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {f["function"]: f for f in functions}

    def test_real_tool_definition(self) -> None:
        """A real tool gives function, description, its input schema as is, and the hook URL."""
        functions = self.by_name(build_functions(CATALOG, HOOK))
        self.assertEqual(
            functions["mcp_time_get_current_time"],
            {
                "function": "mcp_time_get_current_time",
                "description": "[time] Get current time in a specific timezone",
                "parameters": GET_CURRENT_TIME["inputSchema"],
                "web_hook_url": HOOK,
            },
        )

    def test_schemas_kept(self) -> None:
        """Required lists, nested objects, arrays, enums, anyOf and $defs all survive."""
        functions = self.by_name(build_functions(CATALOG, HOOK))
        self.assertEqual(
            functions["mcp_memory_create_entities"]["parameters"], NESTED["inputSchema"]
        )
        annotated = functions[hashed("everything", "get-annotated-message")]["parameters"]
        self.assertEqual(annotated, GET_ANNOTATED_MESSAGE["inputSchema"])
        self.assertEqual(
            functions[hashed("everything", "get-sum")]["parameters"]["required"], ["a", "b"]
        )

    def test_schemas_are_copies(self) -> None:
        """Changing a returned schema leaves the catalog untouched."""
        catalog = copy.deepcopy(CATALOG)
        functions = self.by_name(build_functions(catalog, HOOK))
        params = functions["mcp_memory_create_entities"]["parameters"]
        params["properties"]["entities"]["items"]["required"].append("extra")
        self.assertEqual(catalog, CATALOG)

    def test_one_per_tool_plus_hangup(self) -> None:
        """Names match the function table, and the hangup hook comes last."""
        functions = build_functions(CATALOG, HOOK)
        table = build_function_table(CATALOG)
        self.assertEqual([f["function"] for f in functions[:-1]], list(table))
        self.assertEqual(
            functions[-1],
            {
                "function": HANGUP_FUNCTION,
                "description": functions[-1]["description"],
                "parameters": {"type": "object", "properties": {}},
                "web_hook_url": HOOK,
                "is_hangup_hook": True,
            },
        )
        self.assertTrue(functions[-1]["description"])

    def test_object_schema_ensured(self) -> None:
        """Missing, property-less or non-object schemas become (or stay) object schemas."""
        catalog = {
            "svc": [
                {"name": "none"},
                {"name": "bare", "inputSchema": {"type": "object"}},
                {"name": "untyped", "inputSchema": {"properties": {"q": {"type": "string"}}}},
                {"name": "string", "inputSchema": {"type": "string"}},
                {"name": "junk", "inputSchema": "nope"},
            ]
        }
        params = {f["function"]: f["parameters"] for f in build_functions(catalog, HOOK)}
        empty = {"type": "object", "properties": {}}
        self.assertEqual(params["mcp_svc_none"], empty)
        self.assertEqual(params["mcp_svc_bare"], empty)
        self.assertEqual(
            params["mcp_svc_untyped"],
            {"type": "object", "properties": {"q": {"type": "string"}}},
        )
        self.assertEqual(params["mcp_svc_string"], empty)
        self.assertEqual(params["mcp_svc_junk"], empty)

    def test_description_falls_back_to_name(self) -> None:
        """A missing or blank description is replaced by the tool name."""
        catalog = {"svc": [tool("a"), tool("b", "  "), tool("c", "Does C.")]}
        descriptions = [f["description"] for f in build_functions(catalog, HOOK)[:-1]]
        self.assertEqual(descriptions, ["[svc] a", "[svc] b", "[svc] Does C."])

    def test_service_filter_keeps_names(self) -> None:
        """Choosing services lists only theirs, with the names of the full catalog."""
        catalog = {"a_b": [tool("c")], "a": [tool("b_c")]}
        full = self.by_name(build_functions(catalog, HOOK))
        chosen = build_functions(catalog, HOOK, services=["a_b"])
        self.assertEqual([f["function"] for f in chosen], [hashed("a_b", "c"), HANGUP_FUNCTION])
        self.assertEqual(chosen[0], full[hashed("a_b", "c")])
        none = build_functions(catalog, HOOK, services=[])
        self.assertEqual([f["function"] for f in none], [HANGUP_FUNCTION])


class WebhookUrlTests(SynchronousTestCase):
    """L{webhook_url}: where SignalWire posts, with the SWAIG credential."""

    def test_plain(self) -> None:
        """Without credentials it is ``public_url`` + ``/swaig``; a trailing slash is absorbed."""
        self.assertEqual(webhook_url("https://gw.example.com", None, None), HOOK)
        self.assertEqual(webhook_url("https://gw.example.com/", "u", None), HOOK)
        self.assertEqual(
            webhook_url("http://127.0.0.1:8080/mcp/", None, "p"), "http://127.0.0.1:8080/mcp/swaig"
        )

    def test_credentials(self) -> None:
        """Both given: ``user:password@`` percent-encoded in the authority, port kept."""
        url = webhook_url("https://gw.example.com:8443", "sw user", "p@ss:w/rd%?#")
        self.assertEqual(
            url, "https://sw%20user:p%40ss%3Aw%2Frd%25%3F%23@gw.example.com:8443/swaig"
        )
        parts = urlsplit(url)
        self.assertEqual(unquote(parts.username or ""), "sw user")
        self.assertEqual(unquote(parts.password or ""), "p@ss:w/rd%?#")
        self.assertEqual(
            (parts.hostname, parts.port, parts.path), ("gw.example.com", 8443, "/swaig")
        )

    def test_existing_userinfo_replaced(self) -> None:
        """Credentials in ``public_url`` are replaced by the SWAIG ones."""
        self.assertEqual(
            webhook_url("https://old:secret@gw.example.com", "u", "p"),
            "https://u:p@gw.example.com/swaig",
        )


def signalwire_body(**overrides: Any) -> dict[str, Any]:
    """A webhook body shaped like SignalWire's documented example."""
    body: dict[str, Any] = {
        "app_name": "swml app",
        "function": "mcp_time_get_current_time",
        "version": "2.0",
        "content_type": "text/swaig",
        "content_disposition": "function call",
        "purpose": "[time] Get current time in a specific timezone",
        "argument_desc": GET_CURRENT_TIME["inputSchema"],
        "argument": {
            "parsed": [{"timezone": "Europe/Paris"}],
            "raw": '{"timezone":"Europe/Paris"}',
            "substituted": "",
        },
        "call_id": "6e0f2f68-f600-4228-ab27-3dfba2b75da7",
        "meta_data_token": "c0b5c2da1f4ef7d5f9a4",
        "meta_data": {},
        "global_data": {"caller_id_number": "+15551234567"},
        "SWMLVars": {},
    }
    body.update(overrides)
    return body


class ParseWebhookTests(SynchronousTestCase):
    """L{parse_webhook}: the ``POST /swaig`` body."""

    def test_signalwire_body(self) -> None:
        """A documented SignalWire body gives the function, parsed arguments and call id."""
        self.assertEqual(
            parse_webhook(signalwire_body()),
            WebhookCall(
                function="mcp_time_get_current_time",
                arguments={"timezone": "Europe/Paris"},
                session_id="6e0f2f68-f600-4228-ab27-3dfba2b75da7",
            ),
        )

    def test_parsed_wins_over_raw(self) -> None:
        """``argument.parsed[0]`` is used even when ``raw`` differs."""
        body = signalwire_body(argument={"parsed": [{"a": 1}], "raw": '{"a": 2}'})
        self.assertEqual(parse_webhook(body).arguments, {"a": 1})

    def test_raw_when_no_parsed(self) -> None:
        """Without ``parsed`` (or with an empty list), ``raw`` is decoded as JSON."""
        for argument in (
            {"raw": '{"a": [1, {"b": null}]}'},
            {"parsed": [], "raw": '{"a": [1, {"b": null}]}'},
        ):
            body = signalwire_body(argument=argument)
            self.assertEqual(parse_webhook(body).arguments, {"a": [1, {"b": None}]})

    def test_no_arguments(self) -> None:
        """No ``argument``, an empty one, or a blank ``raw`` all give ``{}``."""
        bodies = [
            signalwire_body(),
            signalwire_body(argument={}),
            signalwire_body(argument=None),
            signalwire_body(argument={"raw": "", "substituted": ""}),
        ]
        del bodies[0]["argument"]
        for body in bodies:
            self.assertEqual(parse_webhook(body).arguments, {})

    def test_bad_arguments(self) -> None:
        """Arguments that are not an object (or not JSON) are refused with a sentence."""
        for argument in (
            "timezone=UTC",
            {"parsed": ["UTC"]},
            {"parsed": [[1, 2]]},
            {"raw": "[1, 2]"},
            {"raw": "{not json"},
            {"raw": '"UTC"'},
        ):
            exc = self.assertRaises(
                SwaigRefusal, parse_webhook, signalwire_body(argument=argument)
            )
            self.assertIn("mcp_time_get_current_time", exc.sentence)

    def test_not_an_object(self) -> None:
        """A body that is not a JSON object is refused."""
        for body in (None, [], "function", 3):
            exc = self.assertRaises(SwaigRefusal, parse_webhook, body)
            self.assertTrue(exc.sentence.endswith("."))

    def test_missing_function(self) -> None:
        """A body without a function name (or with a non-string one) is refused."""
        body = signalwire_body()
        del body["function"]
        for bad in (body, signalwire_body(function=""), signalwire_body(function=["x"])):
            self.assertRaises(SwaigRefusal, parse_webhook, bad)

    def test_mcp_call_id_wins(self) -> None:
        """``global_data.mcp_call_id`` is the session id when present, as in the SDK skill."""
        body = signalwire_body(global_data={"mcp_call_id": "conf-42"})
        self.assertEqual(parse_webhook(body).session_id, "conf-42")

    def test_call_id_fallback(self) -> None:
        """An empty, null or missing ``mcp_call_id``, or odd ``global_data``, uses ``call_id``."""
        for global_data in ({"mcp_call_id": ""}, {"mcp_call_id": None}, {}, None, "x"):
            body = signalwire_body(global_data=global_data, call_id="call-1")
            self.assertEqual(parse_webhook(body).session_id, "call-1")

    def test_no_session_id(self) -> None:
        """Neither id: refused, never a shared ``unknown`` session."""
        body = signalwire_body()
        del body["call_id"]
        for bad in (body, signalwire_body(call_id=None), signalwire_body(call_id="")):
            exc = self.assertRaises(SwaigRefusal, parse_webhook, bad)
            self.assertIn("call id", exc.sentence)

    def test_bad_session_id(self) -> None:
        """An id breaking the SPEC 4.1 rule is refused, from either place."""
        for bad in ("../etc", ".", "..", "a b", "x" * 129, "é", "a\n", 42, ["a"]):
            with self.subTest(bad=bad):
                self.assertRaises(SwaigRefusal, parse_webhook, signalwire_body(call_id=bad))
                self.assertRaises(
                    SwaigRefusal,
                    parse_webhook,
                    signalwire_body(global_data={"mcp_call_id": bad}, call_id="ok"),
                )

    def test_session_id_rule(self) -> None:
        """L{valid_session_id} accepts 1-128 of ``[A-Za-z0-9_.-]`` other than ``.``/``..``."""
        self.assertTrue(valid_session_id("x" * 128))
        self.assertTrue(valid_session_id("..."))
        self.assertTrue(valid_session_id("a.b-c_D9"))
        self.assertFalse(valid_session_id(""))
        self.assertFalse(valid_session_id(".."))

    def test_hangup(self) -> None:
        """The hangup hook's call is recognised and carries the session to close."""
        call = parse_webhook(
            signalwire_body(function=HANGUP_FUNCTION, argument={"raw": ""}, call_id="c-9")
        )
        self.assertTrue(call.is_hangup)
        self.assertEqual(call.session_id, "c-9")
        self.assertFalse(parse_webhook(signalwire_body()).is_hangup)


class RenderResultTests(SynchronousTestCase):
    """L{render_result}: an MCP ``CallToolResult`` as the webhook ``response`` text."""

    def test_time_result(self) -> None:
        """mcp-server-time's real result gives its text, not its structured content."""
        text = '{\n  "timezone": "Europe/Paris",\n  "is_dst": false\n}'
        result = {
            "content": [{"text": text, "type": "text"}],
            "isError": False,
            "structuredContent": {"timezone": "Europe/Paris", "is_dst": False},
        }
        self.assertEqual(render_result(result, "get_current_time"), text)

    def test_text_and_image(self) -> None:
        """get-tiny-image's ``text,image,text`` result: texts joined, the image described."""
        result = {
            "content": [
                {"type": "text", "text": "Here's the image you requested:"},
                {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
                {"type": "text", "text": "The image above is the MCP logo."},
            ]
        }
        self.assertEqual(
            render_result(result, "get-tiny-image"),
            "Here's the image you requested:\n[image: image/png]\n"
            "The image above is the MCP logo.",
        )

    def test_audio(self) -> None:
        """Audio content is described by its MIME type."""
        result = {"content": [{"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav"}]}
        self.assertEqual(render_result(result, "t"), "[audio: audio/wav]")

    def test_embedded_resource(self) -> None:
        """A text resource gives its text (get-resource-reference); a blob gives its URI."""
        result = {
            "content": [
                {"type": "text", "text": "Returning resource reference for Resource 1:"},
                {
                    "type": "resource",
                    "resource": {
                        "uri": "demo://resource/dynamic/text/1",
                        "mimeType": "text/plain",
                        "text": "Resource 1: This is a plaintext resource",
                    },
                },
                {
                    "type": "resource",
                    "resource": {
                        "uri": "demo://b/2",
                        "mimeType": "application/gzip",
                        "blob": "H4s=",
                    },
                },
            ]
        }
        self.assertEqual(
            render_result(result, "get-resource-reference"),
            "Returning resource reference for Resource 1:\n"
            "Resource 1: This is a plaintext resource\n[resource: demo://b/2]",
        )

    def test_resource_links(self) -> None:
        """get-resource-links' links are named with their URIs."""
        result = {
            "content": [
                {"type": "text", "text": "Here are 2 resource links:"},
                {
                    "name": "Blob Resource 1",
                    "uri": "demo://resource/dynamic/blob/1",
                    "description": "Resource 1: plaintext resource",
                    "mimeType": "text/plain",
                    "type": "resource_link",
                },
                {"uri": "demo://x", "type": "resource_link"},
            ]
        }
        self.assertEqual(
            render_result(result, "get-resource-links"),
            "Here are 2 resource links:\n[link: Blob Resource 1 demo://resource/dynamic/blob/1]"
            "\n[link: demo://x]",
        )

    def test_unknown_type(self) -> None:
        """An unknown content type is named; a malformed item still gives a phrase."""
        result = {
            "content": [
                {"type": "widget", "x": 1},
                "junk",
                {"text": "no type"},
                {"type": "resource", "resource": "nope"},
            ]
        }
        self.assertEqual(
            render_result(result, "t"),
            "[widget content]\n[unknown content]\n[unknown content]\n[resource]",
        )

    def test_structured_only(self) -> None:
        """Empty content with ``structuredContent`` gives that as JSON."""
        result = {"content": [], "structuredContent": {"temperature": 33, "city": "Zürich"}}
        rendered = render_result(result, "t")
        self.assertEqual(json.loads(rendered), {"temperature": 33, "city": "Zürich"})
        self.assertIn("Zürich", rendered)

    def test_no_content(self) -> None:
        """No content and no structured content give a sentence saying so."""
        self.assertEqual(render_result({"content": []}, "t"), NO_CONTENT)
        self.assertEqual(render_result({}, "t"), NO_CONTENT)
        self.assertEqual(render_result({"content": "oops"}, "t"), NO_CONTENT)

    def test_is_error(self) -> None:
        """An ``isError`` result is prefixed with the tool name (server-everything's shape)."""
        result = {
            "content": [{"type": "text", "text": "MCP error -32602: Tool no_such_tool not found"}],
            "isError": True,
        }
        self.assertEqual(
            render_result(result, "no_such_tool"),
            "Error from tool no_such_tool: MCP error -32602: Tool no_such_tool not found",
        )
        self.assertEqual(render_result({"isError": True}, "x"), "Error from tool x: " + NO_CONTENT)


class DescribeFailureTests(SynchronousTestCase):
    """L{describe_failure}: sentences for the AI when a webhook call fails."""

    def test_sentences(self) -> None:
        """Each failure gives a distinct sentence naming the tool, never a Python repr."""
        failures: list[BaseException] = [
            CallTimeout(25),
            ChildFailed("child exited with code 1"),
            StartupFailed("spawn failed"),
            ServiceUnavailable("probe failed"),
            TooManySessions("too many"),
            SessionClosed("c-1"),
            ValueError("boom"),
        ]
        sentences = [describe_failure(exc, "get-sum") for exc in failures]
        self.assertEqual(len(set(sentences)), len(sentences))
        for sentence in sentences:
            self.assertIn("get-sum", sentence)
            self.assertNotIn("Error(", sentence)
            self.assertNotIn("boom", sentence)
        self.assertIn("25 seconds", sentences[0])
        self.assertEqual(sentences[-1], "The tool get-sum failed unexpectedly.")

    def test_json_rpc_error(self) -> None:
        """A JSON-RPC error's message is passed on; a huge one is shortened."""
        sentence = describe_failure(JsonRpcError(-32602, "Unknown tool: nope"), "nope")
        self.assertEqual(sentence, "The tool nope refused the request: Unknown tool: nope")
        long = describe_failure(JsonRpcError(-1, "x" * 5000), "t")
        self.assertLess(len(long), 600)
        self.assertTrue(long.endswith("..."))

    def test_unknown_service_and_function(self) -> None:
        """Unknown services and functions are named; refusals keep their own sentence."""
        self.assertIn("time", describe_failure(UnknownService("time"), "get_current_time"))
        self.assertEqual(
            describe_failure(UnknownFunction("mcp_x"), "mcp_x"),
            "There is no function named mcp_x.",
        )
        self.assertEqual(describe_failure(SwaigRefusal("No."), "t"), "No.")
