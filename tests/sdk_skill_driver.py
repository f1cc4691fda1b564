"""
Drive SignalWire's real ``mcp_gateway`` skill (signalwire-agents 1.1.0) against a gateway.

Not a trial test module (it needs the SDK, which is not a project dependency): run it with a
separate venv holding ``signalwire-agents==1.1.0``::

    /tmp/sw-venv/bin/python tests/sdk_skill_driver.py --url http://127.0.0.1:PORT \\
        --user U --password P --service S --tool T --args '{"text": "hi"}'

What it does, all in-process, no SignalWire call and no agent web server:

1. sets ``SWML_ALLOW_PRIVATE_URLS=true`` (the skill's SSRF guard refuses loopback URLs
   otherwise; ``--keep-ssrf-guard`` leaves it alone to show that refusal);
2. builds an ``AgentBase`` and ``add_skill("mcp_gateway", ...)``: the skill's real ``setup``
   (``GET /health``) and ``register_tools`` (``GET /services`` when no services are named,
   ``GET /services/<S>/tools``) run against the gateway;
3. invokes the SWAIG function ``<prefix><S>_<T>`` through ``agent.on_function_call`` (what the
   agent's own ``POST /swaig`` route calls after parsing ``argument.parsed[0]``) with a fake
   SignalWire ``raw_data`` (``call_id``, optional ``global_data.mcp_call_id``): the skill's
   ``POST /services/<S>/call``, with its retries;
4. unless ``--no-hangup``, invokes the hangup hook ``_mcp_gateway_hangup`` (``DELETE
   /sessions/<id>``).

Every HTTP request the skill makes is printed (method, URL, headers with credentials masked,
JSON body, timeout) with the response status and body, then the SWAIG results as JSON.
Exit status: 0 when the tool call produced a response, 1 when the skill failed to load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any


def _mask(headers: dict[str, Any]) -> dict[str, Any]:
    shown = dict(headers)
    if "Authorization" in shown:
        scheme = str(shown["Authorization"]).split(" ", 1)[0]
        shown["Authorization"] = scheme + " ***"
    return shown


def install_tracer(out: Any) -> None:
    """Wrap ``requests.request`` / ``requests.get`` (what the skill calls) to print traffic."""
    import requests

    real_request = requests.request

    def traced(method: str, url: str, **kwargs: Any) -> Any:
        record: dict[str, Any] = {"method": method.upper(), "url": url}
        record["headers"] = _mask(kwargs.get("headers") or {})
        if kwargs.get("auth") is not None:
            record["basic_auth_user"] = getattr(kwargs["auth"], "username", "?")
        if "json" in kwargs:
            record["json"] = kwargs["json"]
        record["timeout"] = kwargs.get("timeout")
        record["verify"] = kwargs.get("verify")
        try:
            response = real_request(method, url, **kwargs)
        except Exception as exc:
            record["exception"] = f"{type(exc).__name__}: {exc}"
            print("HTTP " + json.dumps(record), file=out, flush=True)
            raise
        record["status"] = response.status_code
        try:
            record["response"] = response.json()
        except ValueError:
            record["response_text"] = response.text[:500]
        print("HTTP " + json.dumps(record), file=out, flush=True)
        return response

    def traced_get(url: str, **kwargs: Any) -> Any:
        return traced("GET", url, **kwargs)

    requests.request = traced  # type: ignore[assignment]
    requests.get = traced_get  # type: ignore[assignment]


def fake_raw_data(
    function: str, args: dict[str, Any], call_id: str, mcp_call_id: str | None
) -> dict[str, Any]:
    """A SWAIG webhook body as SignalWire sends it (documented fields)."""
    global_data: dict[str, Any] = {}
    if mcp_call_id is not None:
        global_data["mcp_call_id"] = mcp_call_id
    return {
        "app_name": "sdk-skill-driver",
        "function": function,
        "version": "2.0",
        "content_type": "text/swaig",
        "content_disposition": "function call",
        "argument": {"parsed": [args], "raw": json.dumps(args), "substituted": ""},
        "call_id": call_id,
        "global_data": global_data,
        "meta_data": {},
        "meta_data_token": "driver",
    }


def result_dict(result: Any) -> dict[str, Any]:
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if isinstance(result, dict):
        return result
    return {"response": str(result)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="gateway base URL")
    parser.add_argument("--user", help="Basic auth user")
    parser.add_argument("--password", help="Basic auth password")
    parser.add_argument("--token", help="Bearer token instead of Basic")
    parser.add_argument("--service", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--args", default="{}", help="tool arguments as a JSON object")
    parser.add_argument("--call-id", default=None, help="SignalWire call_id (default: random)")
    parser.add_argument("--mcp-call-id", default=None, help="global_data.mcp_call_id")
    parser.add_argument("--calls", type=int, default=1, help="call the tool this many times")
    parser.add_argument("--session-timeout", type=int, default=300)
    parser.add_argument("--request-timeout", type=int, default=30)
    parser.add_argument("--retry-attempts", type=int, default=3)
    parser.add_argument(
        "--all-services",
        action="store_true",
        help="let the skill list every service (GET /services)",
    )
    parser.add_argument("--no-verify", action="store_true", help="verify_ssl=False")
    parser.add_argument("--no-hangup", action="store_true")
    parser.add_argument(
        "--keep-ssrf-guard", action="store_true", help="do not set SWML_ALLOW_PRIVATE_URLS"
    )
    parser.add_argument(
        "--show-functions",
        action="store_true",
        help="print the SWAIG definitions the skill registered",
    )
    opts = parser.parse_args(argv)

    args = json.loads(opts.args)
    if not opts.keep_ssrf_guard:
        os.environ["SWML_ALLOW_PRIVATE_URLS"] = "true"
    os.environ.setdefault("SIGNALWIRE_LOG_MODE", "off")

    install_tracer(sys.stdout)
    from signalwire_agents import AgentBase

    params: dict[str, Any] = {
        "gateway_url": opts.url,
        "session_timeout": opts.session_timeout,
        "request_timeout": opts.request_timeout,
        "retry_attempts": opts.retry_attempts,
        "verify_ssl": not opts.no_verify,
    }
    if opts.token:
        params["auth_token"] = opts.token
    else:
        params["auth_user"] = opts.user
        params["auth_password"] = opts.password
    if not opts.all_services:
        params["services"] = [{"name": opts.service, "tools": [opts.tool]}]

    agent = AgentBase(name="sdk-skill-driver", suppress_logs=True)
    try:
        agent.add_skill("mcp_gateway", params)
    except ValueError as exc:
        print("SKILL_LOAD_FAILED " + json.dumps({"error": str(exc)}), flush=True)
        return 1

    registry = agent._tool_registry._swaig_functions
    function = f"mcp_{opts.service}_{opts.tool}"
    if opts.show_functions:
        for name, func in registry.items():
            definition = (
                func.to_swaig("https://agent.example") if hasattr(func, "to_swaig") else func
            )
            print("SWAIG_FUNCTION " + json.dumps(definition, default=str), flush=True)
    if function not in registry:
        print(
            "FUNCTION_NOT_REGISTERED "
            + json.dumps({"function": function, "registered": sorted(registry)}),
            flush=True,
        )
        return 1

    call_id = opts.call_id or str(uuid.uuid4())
    raw = fake_raw_data(function, args, call_id, opts.mcp_call_id)
    for _ in range(opts.calls):
        result = agent.on_function_call(function, args, raw)
        print("SWAIG_RESULT " + json.dumps(result_dict(result)), flush=True)
    if not opts.no_hangup:
        hangup_raw = fake_raw_data("_mcp_gateway_hangup", {}, call_id, opts.mcp_call_id)
        result = agent.on_function_call("_mcp_gateway_hangup", {}, hangup_raw)
        print("SWAIG_HANGUP " + json.dumps(result_dict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
