"""`toolgate serve` (Streamable HTTP) driven by the official Python SDK and the Inspector CLI.

Two upstreams: server-everything in streamableHttp mode, and server-everything on stdio behind
the HTTP front (one child per session). Each case runs directly against server-everything
(HTTP) too where the results must match.
"""

from __future__ import annotations

import json
import subprocess
from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from conftest import PEERS, dump, everything_cmd, everything_http, serve

pytestmark = pytest.mark.anyio

TOKEN = "tg_python_sdk_token"
HIDDEN = ["get-env", "gzip-file-as-resource"]
POLICY = {
    "version": "1",
    "default": "allow",
    "hide": HIDDEN,
    "tools": {"get-sum": {"deny_if": [{"path": "args.a", "op": "gt", "value": 1000}], "reason": "sums are capped"}},
}


@asynccontextmanager
async def connect(url: str, token: str | None = TOKEN, **session_kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=30, **session_kwargs) as session:
                await session.initialize()
                yield session


@pytest.fixture(params=["http", "stdio"])
def upstream(request):
    """The upstream config for `serve`, and a direct URL to compare with."""
    with everything_http() as direct:
        if request.param == "http":
            yield {"url": direct}, direct
        else:
            yield {"command": everything_cmd()}, direct


@pytest.fixture
def gateway(tmp_path, upstream):
    config, direct = upstream
    with serve(tmp_path, config, [{"name": "python-sdk", "token": TOKEN, "policy": POLICY}]) as url:
        yield url, direct


async def test_list_allow_and_deny_over_http(gateway):
    url, direct = gateway
    async with connect(direct, token=None) as d:
        direct_tools = {t.name: dump(t) for t in (await d.list_tools()).tools}
        expected = dump(await d.call_tool("get-sum", {"a": 2, "b": 40}))
    async with connect(url) as gw:
        tools = {t.name: dump(t) for t in (await gw.list_tools()).tools}
        allowed = dump(await gw.call_tool("get-sum", {"a": 2, "b": 40}))
        denied = dump(await gw.call_tool("get-sum", {"a": 5000, "b": 1}))
        hidden = dump(await gw.call_tool("get-env", {}))
    assert set(tools) == set(direct_tools) - set(HIDDEN)
    for name, tool in tools.items():
        assert tool == direct_tools[name], f"{name} changed on its way through the gateway"
    assert allowed == expected and "is 42" in allowed["content"][0]["text"]
    assert denied["isError"] and denied["content"][0]["text"] == "[toolgate] deny: sums are capped (denied because `args.a` gt 1000)"
    assert hidden["isError"] and "unknown tool" in hidden["content"][0]["text"]


async def test_progress_notifications_arrive_over_sse(gateway):
    url, _ = gateway
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with connect(url) as gw:
        result = await gw.call_tool(
            "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
        )
    assert not result.is_error
    assert progress == [1, 2, 3, 4]


async def test_a_server_to_client_sampling_request_is_answered_through_sse(gateway):
    url, _ = gateway
    asked: list[str] = []

    async def sample(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled by pytest"), model="pytest-model"
        )

    async with connect(url, sampling_callback=sample) as gw:
        with anyio.fail_after(10):
            # server-everything registers the tool after initialized, for clients that sample.
            while "trigger-sampling-request" not in {t.name for t in (await gw.list_tools()).tools}:
                await anyio.sleep(0.05)
        result = dump(await gw.call_tool("trigger-sampling-request", {"prompt": "hello from the gateway", "maxTokens": 10}))
    assert asked and "hello from the gateway" in asked[0]
    assert "sampled by pytest" in json.dumps(result)


async def test_a_wrong_token_is_refused_with_401(gateway):
    url, _ = gateway
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer nope"}) as http:
        response = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_inspector_cli_over_http(tmp_path, upstream):
    """The Inspector cannot send headers: it uses the anonymous grant (loopback only)."""
    config, _ = upstream
    with serve(
        tmp_path,
        config,
        [{"name": "inspector", "policy": {**POLICY, "tools": {"get-sum": {"action": "deny", "reason": "no sums today"}}}}],
        anonymous_grant="inspector",
    ) as url:

        def inspector(*args: str, exit_code: int = 0) -> dict:
            cmd = ["node", str(PEERS / "mcp-inspector"), "--cli", url, "--transport", "http", *args]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert out.returncode == exit_code, f"inspector exited {out.returncode}: {out.stdout}\n{out.stderr}"
            return json.loads(out.stdout)

        names = {t["name"] for t in inspector("--method", "tools/list")["tools"]}
        assert "echo" in names and "get-env" not in names
        echoed = inspector("--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=over http")
        assert echoed["content"][0]["text"] == "Echo: over http"
        denied = inspector("--method", "tools/call", "--tool-name", "get-sum", "--tool-arg", "a=1", "b=2", exit_code=5)
        assert denied["content"][0]["text"] == "[toolgate] deny: no sums today"


async def test_the_2026_client_discovers_or_falls_back_through_serve(tmp_path, upstream):
    """mcp.Client sends `server/discover` (2026-07-28) without a session first. Through an
    HTTP upstream it goes upstream as it is; a stdio child cannot serve it, so the gateway
    answers -32601 as a session-only server would, and the client falls back to initialize."""
    from mcp import Client

    config, _ = upstream
    policy = {"version": "1", "default": "allow", "tools": {"get-sum": {"action": "deny", "reason": "no sums"}}}
    with serve(tmp_path, config, [{"name": "local", "policy": policy}], anonymous_grant="local") as url:
        async with Client(url) as client:
            result = await client.call_tool("echo", {"message": "modern client"})
            denied = await client.call_tool("get-sum", {"a": 1, "b": 2})
    assert result.content[0].text == "Echo: modern client"
    assert denied.is_error and denied.content[0].text == "[toolgate] deny: no sums"
