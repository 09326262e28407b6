"""Require approval through the agent's own client: the official Python SDK, with an
elicitation callback, talks to the gateway in front of the LLM CLI Gateway stand-in, over
stdio (`toolgate run`) and over Streamable HTTP (`toolgate serve`). The gateway holds
`session_delete` and asks the SDK's user inside the call (MCP elicitation): over stdio
interleaved before the result, over HTTP on the held POST's SSE stream, answered by the SDK's
own POST."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from conftest import connect, free_port, gateway_cmd, serve, toolgate_bin, wait_for_port, write_policy

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


TOKEN = "tg_approvals_sdk_token"


@pytest.fixture(params=["stdio", "http"])
def gateway(request, tmp_path):
    """Opens an SDK session to the gateway (with these ClientSession arguments) over the
    transport of the parameter."""
    if request.param == "stdio":
        cmd = gateway_cmd(write_policy(tmp_path, POLICY), standin_cmd())
        yield lambda **kwargs: connect(cmd, **kwargs)
        return
    grants = [{"name": "sdk", "token": TOKEN, "policy": POLICY}]
    with serve(tmp_path, {"command": standin_cmd()}, grants) as url:

        @asynccontextmanager
        async def over_http(**kwargs):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                async with streamable_http_client(url, http_client=http) as (read, write):
                    async with ClientSession(read, write, read_timeout_seconds=30, **kwargs) as session:
                        await session.initialize()
                        yield session

        yield over_http


async def test_the_sdk_user_approves_and_the_call_runs_once(gateway):
    seen: list = []
    async with gateway(elicitation_callback=answering("approve", seen)) as gw:
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


async def test_the_sdk_user_declines_and_the_call_is_denied(gateway):
    seen: list = []
    async with gateway(elicitation_callback=answering(None, seen)) as gw:
        kept = await created(gw)
        result = await gw.call_tool("session_delete", {"sessionId": kept})
        assert result.is_error
        assert len(seen) == 1
        assert "declined in the agent's client" in result.content[0].text
        meta = (result.meta or {}).get("toolgate", {})
        assert meta.get("decision") == "deny", result
        listed = await gw.call_tool("session_list", {})
        assert kept in listed.content[0].text


@contextmanager
def upstream_2026():
    """The Python SDK's own 2026-07-28 server (stateless HTTP); yields its /mcp URL."""
    port = free_port()
    script = Path(__file__).with_name("upstream_2026.py")
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "the 2026 upstream")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait()


async def test_a_2026_client_is_asked_in_the_result_and_its_retry_runs_the_call(tmp_path):
    """`mcp.Client` on the 2026-07-28 protocol (no server-to-client requests), stateless
    through `toolgate serve` to the SDK's own 2026 server: the gateway answers
    `input_required` with its question and a protected `requestState`; the SDK asks its user
    through the same elicitation callback and retries; the gateway takes its parts out before
    the upstream (which would refuse a state it did not issue)."""
    from mcp import Client

    policy = {
        "version": "1",
        "default": "allow",
        "tools": {"echo": {"action": "require_approval", "reason": "echo needs a person"}},
    }
    with upstream_2026() as upstream:
        for decision, approved in (("approve", True), ("deny", False)):
            seen: list = []
            with serve(tmp_path, {"url": upstream}, [{"name": "local", "policy": policy}], anonymous_grant="local") as url:
                async with Client(url, elicitation_callback=answering(decision, seen)) as client:
                    result = await client.call_tool("echo", {"message": "held for a person"})
                # Asked the 2026 way (in the result), not on a stream of a 2025 session.
                log = (tmp_path / "toolgate.log").read_text(errors="replace")
                assert "asked in the call's result (input_required)" in log, log
                assert "session opened" not in log, log
            assert len(seen) == 1 and "echo" in seen[0].message, seen
            if approved:
                assert not result.is_error, result
                assert result.content[0].text == "Echo: held for a person"
            else:
                assert result.is_error
                assert "declined in the agent's client" in result.content[0].text
