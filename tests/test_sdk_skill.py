"""
Compatibility with SignalWire's ``mcp_gateway`` skill (signalwire-agents 1.1.0).

- L{RecordedShapeTests}: the requests recorded in ``tests/sdk_shapes`` (what the skill sends
  and reads) against our API, through StubTreq.
- L{SdkSkillTests}: the real skill, run by ``tests/sdk_skill_driver.py`` in a separate venv,
  against the real ``mcp-gateway`` command serving the shipped notes server.  The venv's
  interpreter is ``$MCPGW_SDK_PYTHON`` (default ``/tmp/sw-venv/bin/python``); the tests are
  skipped when it is missing.  Create it with::

      python3 -m venv /tmp/sw-venv
      /tmp/sw-venv/bin/pip install signalwire-agents==1.1.0
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from mcpgw.errors import JsonRpcError

from .configs import PASSWORD, USER, gateway_config
from .fakes import text_result
from .gateway_process import GatewayProcess, gateway_argv, processes_under
from .test_app import Gateway

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = os.path.join(HERE, "sdk_shapes", "mcp_gateway_skill_1.1.0.json")
DRIVER = os.path.join(HERE, "sdk_skill_driver.py")
SDK_PYTHON = os.environ.get("MCPGW_SDK_PYTHON", "/tmp/sw-venv/bin/python")

# No keep-alive: nothing of the client outlives a test (trial's dirty reactor check).
http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def load_shapes() -> dict[str, Any]:
    with open(SHAPES, encoding="utf-8") as f:
        return dict(json.load(f))


class RecordedShapeTests(SynchronousTestCase):
    """The skill's recorded requests, replayed against our routes."""

    def setUp(self) -> None:
        self.shapes = load_shapes()
        self.gw = Gateway(self)
        self.example = self.shapes["captured_example"]

    def test_setup_and_register(self) -> None:
        """
        The skill's setup (``GET /health`` without credentials) and ``register_tools``
        (``GET /services`` keys, ``GET /services/<s>/tools`` ``tools[*]`` with ``name``,
        ``description`` and ``inputSchema.properties``) get what they read.
        """
        self.assertEqual(self.shapes["setup"]["request"]["path"], "/health")
        self.assertEqual(self.gw.request("GET", "/health", auth=None).code, 200)
        services = self.gw.json(self.gw.request("GET", "/services"))
        self.assertEqual(sorted(services), ["echo", "other"])
        r = self.gw.request("GET", "/services/echo/tools")
        self.assertEqual(r.code, 200)
        (tool,) = self.gw.json(r)["tools"]
        self.assertEqual(tool["name"], "echo")
        self.assertEqual(tool["description"], "Echo a text.")
        self.assertEqual(tool["inputSchema"]["properties"], {"text": {"type": "string"}})

    def test_call_and_hangup(self) -> None:
        """
        The captured ``POST /services/echo/call`` body gets 200 with ``result`` = the text
        (as the reference answered, plus our extra fields), and the captured
        ``DELETE /sessions/<id>`` gets the reference's 200 body.
        """
        self.gw.factory.auto_answer = False
        body = self.example["POST /services/echo/call"]
        d = self.gw.send("/services/echo/call", body)
        (server,) = [s for s in self.gw.factory.servers if s.calls]
        name, arguments, _, pending = server.calls[0]
        self.assertEqual((name, arguments), ("echo", body["arguments"]))
        pending.callback(text_result("héllo"))
        self.gw.stub.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 200)
        answer = self.gw.json(r)
        reference = self.example["reference_200"]
        self.assertEqual({k: answer[k] for k in reference}, reference)
        session = self.gw.sessions.get("echo", body["session_id"])
        assert session is not None
        self.assertEqual(session.timeout, body["timeout"])
        self.assertEqual(session.metadata, body["metadata"])
        closed = self.example["DELETE /sessions/call-abc-1"]
        r = self.gw.request("DELETE", "/sessions/call-abc-1")
        self.assertEqual((r.code, self.gw.json(r)), (closed["status"], closed["body"]))

    def test_jsonrpc_error_not_retried(self) -> None:
        """
        Where the reference answered 500 with a Python repr (so the skill retried three
        times), an invalid-params error is a 400 with the MCP message: the skill stops at once.
        """
        self.gw.factory.auto_answer = False
        body = self.example["POST /services/echo/call"]
        d = self.gw.send("/services/echo/call", body)
        (server,) = [s for s in self.gw.factory.servers if s.calls]
        server.calls[0][3].errback(JsonRpcError(-32602, "ms must be a number"))
        self.gw.stub.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 400)
        self.assertEqual(self.gw.json(r)["error"], "ms must be a number")
        self.assertIn("retried on HTTP >= 500", self.shapes["call"]["retries"])


def parse_driver(out: bytes) -> dict[str, list[Any]]:
    """The driver's tagged output lines: ``HTTP``, ``SWAIG_RESULT``, ``SWAIG_HANGUP``, ..."""
    tagged: dict[str, list[Any]] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        tag, sep, rest = line.partition(" ")
        if sep and tag.isupper() and rest.startswith("{"):
            tagged.setdefault(tag, []).append(json.loads(rest))
    return tagged


class SdkSkillTests(TestCase):
    """The real ``mcp_gateway`` skill of signalwire-agents 1.1.0 against our gateway."""

    timeout = 180

    def setUp(self) -> None:
        if not os.access(SDK_PYTHON, os.X_OK):
            raise SkipTest(
                f"no signalwire-agents venv at {SDK_PYTHON} (set MCPGW_SDK_PYTHON, or run: "
                "python3 -m venv /tmp/sw-venv && "
                "/tmp/sw-venv/bin/pip install signalwire-agents==1.1.0)"
            )
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.sandbox = os.path.join(self.dir, "sandbox")

    async def drive(self, url: str, tool: str, args: Any, *extra: str) -> dict[str, list[Any]]:
        argv = [DRIVER, "--url", url, "--user", USER, "--password", PASSWORD]
        argv += ["--service", "notes", "--tool", tool, "--args", json.dumps(args), *extra]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out, err, code = await getProcessOutputAndValue(SDK_PYTHON, argv, env=env, path=HERE)
        text = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        return parse_driver(out)

    def requests(self, tagged: dict[str, list[Any]]) -> list[tuple[str, str, int]]:
        return [
            (r["method"], r["url"].split("/", 3)[3], r["status"]) for r in tagged.get("HTTP", [])
        ]

    async def test_skill_round_trip(self) -> None:
        """
        The skill loads our notes tools, its calls keep state in the session of the call id
        (a second process of the skill on the same call id sees the first one's note), its
        hangup closes that session, and its function names and descriptions are ours.
        """
        gw = GatewayProcess.start(gateway_argv(gateway_config(self.dir)), cwd=self.dir)
        self.addCleanup(gw.stop)
        url = await gw.url

        first = await self.drive(
            url,
            "add_note",
            {"text": "milk"},
            "--call-id",
            "sdk-call-1",
            "--no-hangup",
            "--show-functions",
        )
        self.assertEqual(
            self.requests(first),
            [
                ("GET", "health", 200),
                ("GET", "services/notes/tools", 200),
                ("POST", "services/notes/call", 200),
            ],
        )
        self.assertEqual(first["SWAIG_RESULT"], [{"response": "Noted (1 so far)."}])
        r = await http.get(f"{url}/sessions", auth=(USER, PASSWORD))
        self.assertEqual(list(json.loads(await r.text())), ["sdk-call-1"])

        # The skill's definition of the tool and ours have the same name and description.
        skill = {f["function"]: f for f in first["SWAIG_FUNCTION"]}
        r = await http.get(f"{url}/swaig/functions", auth=(USER, PASSWORD))
        ours = {f["function"]: f for f in json.loads(await r.text())["functions"]}
        self.assertEqual(
            skill["mcp_notes_add_note"]["description"],
            ours["mcp_notes_add_note"]["description"],
        )

        second = await self.drive(url, "list_notes", {}, "--call-id", "sdk-call-1")
        self.assertEqual(second["SWAIG_RESULT"], [{"response": "1. milk"}])
        self.assertEqual(self.requests(second)[-1], ("DELETE", "sessions/sdk-call-1", 200))
        self.assertEqual(len(second["SWAIG_HANGUP"]), 1)
        r = await http.get(f"{url}/sessions", auth=(USER, PASSWORD))
        self.assertEqual(json.loads(await r.text()), {})

        third = await self.drive(url, "list_notes", {}, "--call-id", "sdk-call-2")
        self.assertEqual(third["SWAIG_RESULT"], [{"response": "No notes yet."}])
        self.assertEqual(await gw.stop(), 0)
        self.assertEqual(processes_under(self.sandbox), [])

    async def test_mcp_call_id(self) -> None:
        """
        With ``global_data.mcp_call_id`` the skill uses it as the session id, for the calls
        and for the hangup, and a tool error (``isError``) reaches the AI as its text after
        a single request (no retries).
        """
        gw = GatewayProcess.start(gateway_argv(gateway_config(self.dir)), cwd=self.dir)
        self.addCleanup(gw.stop)
        url = await gw.url
        tagged = await self.drive(
            url, "add_note", {"text": ""}, "--call-id", "c-9", "--mcp-call-id", "m-9"
        )
        calls = [r for r in tagged["HTTP"] if r["method"] == "POST"]
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0]["json"]["session_id"], "m-9")
        self.assertEqual(calls[0]["status"], 200)
        self.assertIn("must be a non-empty string", tagged["SWAIG_RESULT"][0]["response"])
        self.assertEqual(self.requests(tagged)[-1], ("DELETE", "sessions/m-9", 200))
        self.assertEqual(await gw.stop(), 0)
