"""Config files for tests that run the gateway (written into a test's temp directory)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

USER, PASSWORD = "admin", "pw-secret-1"


def gateway_config(directory: str, **overrides: Any) -> str:
    """Write a working config (the notes example server, port 0) and return its path."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "auth_user": USER, "auth_password": PASSWORD},
        "services": {
            "notes": {
                "command": [sys.executable, "-m", "mcpgw.examples.notes"],
                "description": "notes",
                "env": {"PYTHONPATH": os.getcwd()},
            }
        },
        "session": {"sandbox_dir": os.path.join(directory, "sandbox")},
        "rate_limiting": {
            "default_limits": ["10000 per minute"],
            "tools_limit": "10000 per minute",
            "call_limit": "10000 per minute",
            "session_delete_limit": "10000 per minute",
        },
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    path = os.path.join(directory, "config.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path
