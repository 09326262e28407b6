"""Require approval through the agent's own client: the official Python SDK, with an
elicitation callback, talks to `toolgate run` in front of the LLM CLI Gateway stand-in. The
gateway holds `session_delete` and asks the SDK's user inside the call (MCP elicitation)."""

from __future__ import annotations

import json

import pytest
from mcp import types

from conftest import connect, gateway_cmd, toolgate_bin, write_policy

pytestmark = pytest.mark.anyio

POLICY = {
    "version": "1",
    "default": "allow",
    "tools": {
        "session_delete": {
            "action": "require_approval",
            "reason": "deleting needs a person",
            "approval": {"hold": "20s"},
        }
    },
}


def standin_cmd() -> list[str]:
    return [toolgate_bin(), "standin"]


def answering(decision: str | None, seen: list):
    async def callback(context, params):
        seen.append(params)
        if decision is None:
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content={"decision": decision})

    return callback


async def created(session) -> str:
    result = await session.call_tool("session_create", {"cli": "codex"})
    return json.loads(result.content[0].text)["session"]["id"]


async def test_the_sdk_user_approves_and_the_call_runs_once(tmp_path):
    seen: list = []
    cmd = gateway_cmd(write_policy(tmp_path, POLICY), standin_cmd())
    async with connect(cmd, elicitation_callback=answering("approve", seen)) as gw:
        doomed = await created(gw)
        result = await gw.call_tool("session_delete", {"sessionId": doomed})
        assert not result.is_error, result
        assert json.loads(result.content[0].text) == {"success": True, "deleted": doomed}
        assert len(seen) == 1
        assert "session_delete" in seen[0].message and doomed in seen[0].message
        # The approval was for that one call: the same call asks again (and the session is gone).
        again = await gw.call_tool("session_delete", {"sessionId": doomed})
        assert len(seen) == 2
        assert again.is_error and "not found" in again.content[0].text


async def test_the_sdk_user_declines_and_the_call_is_denied(tmp_path):
    seen: list = []
    cmd = gateway_cmd(write_policy(tmp_path, POLICY), standin_cmd())
    async with connect(cmd, elicitation_callback=answering(None, seen)) as gw:
        kept = await created(gw)
        result = await gw.call_tool("session_delete", {"sessionId": kept})
        assert result.is_error
        assert "declined in the agent's client" in result.content[0].text
        meta = (result.meta or {}).get("toolgate", {})
        assert meta.get("decision") == "deny", result
        listed = await gw.call_tool("session_list", {})
        assert kept in listed.content[0].text
