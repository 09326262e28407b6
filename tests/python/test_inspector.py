"""The MCP Inspector CLI (npm @modelcontextprotocol/inspector) as the client of toolgate run."""

from __future__ import annotations

import json
import subprocess

from conftest import PEERS, everything_cmd, gateway_cmd, write_policy

POLICY = {"version": "1", "default": "allow", "hide": ["get-env"], "tools": {"get-sum": {"action": "deny", "reason": "no sums today"}}}


def inspector(tmp_path, *args: str, exit_code: int = 0) -> dict:
    cmd = ["node", str(PEERS / "mcp-inspector"), "--cli", *gateway_cmd(write_policy(tmp_path, POLICY), everything_cmd()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == exit_code, f"inspector exited {out.returncode}, expected {exit_code} ({out.returncode}): {out.stdout}\n{out.stderr}"
    return json.loads(out.stdout)


def test_inspector_lists_and_calls_through_the_gateway(tmp_path):
    listed = inspector(tmp_path, "--method", "tools/list")
    names = {t["name"] for t in listed["tools"]}
    assert "echo" in names and "get-env" not in names

    echoed = inspector(tmp_path, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=inspected")
    assert echoed["content"][0]["text"] == "Echo: inspected"

    # Inspector 2.x exits 5 ("tool_is_error") for a result with isError: a refusal is a tool result,
    # not a protocol error (which would exit 1).
    denied = inspector(
        tmp_path, "--method", "tools/call", "--tool-name", "get-sum", "--tool-arg", "a=1", "b=2", exit_code=5
    )
    assert denied["isError"] is True
    assert denied["content"][0]["text"] == "[toolgate] deny: no sums today"
    assert denied["_meta"]["toolgate"]["rule"] == "tools.get-sum"
