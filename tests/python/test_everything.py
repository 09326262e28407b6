"""toolgate run in front of @modelcontextprotocol/server-everything, driven by the official Python SDK."""

from __future__ import annotations

import anyio
import pytest
from mcp import types

from conftest import connect, dump, everything_cmd, gateway_cmd, write_policy

pytestmark = pytest.mark.anyio

HIDDEN = ["get-env", "gzip-file-as-resource"]
POLICY = {
    "version": "1",
    "default": "allow",
    "hide": HIDDEN,
    "tools": {
        "get-sum": {"deny_if": [{"path": "args.a", "op": "gt", "value": 1000}], "reason": "sums are capped"},
        "toggle-*": {"action": "deny", "reason": "toggles are off limits"},
    },
}


async def test_tools_list_hides_exactly_the_hidden_tools(tmp_path):
    async with connect(everything_cmd()) as direct:
        direct_tools = {t.name: dump(t) for t in (await direct.list_tools()).tools}
    async with connect(gateway_cmd(write_policy(tmp_path, POLICY), everything_cmd())) as gw:
        gw_tools = {t.name: dump(t) for t in (await gw.list_tools()).tools}
    assert set(HIDDEN) <= set(direct_tools), "the hidden tools exist upstream"
    assert set(gw_tools) == set(direct_tools) - set(HIDDEN)
    for name, tool in gw_tools.items():
        assert tool == direct_tools[name], f"{name} changed on its way through the gateway"
    assert "toggle-simulated-logging" in gw_tools, "an explicitly denied tool stays visible"


async def test_allowed_calls_return_exactly_what_the_direct_call_returns(tmp_path):
    calls = [
        ("echo", {"message": "hello through the gateway"}),
        ("get-sum", {"a": 2, "b": 40}),
        ("get-structured-content", {"location": "New York"}),
        ("get-tiny-image", {}),
        ("get-annotated-message", {"messageType": "error", "includeImage": False}),
    ]
    async with connect(everything_cmd()) as direct:
        expected = [dump(await direct.call_tool(name, args)) for name, args in calls]
    async with connect(gateway_cmd(write_policy(tmp_path, POLICY), everything_cmd())) as gw:
        got = [dump(await gw.call_tool(name, args)) for name, args in calls]
    assert got == expected
    assert "is 42" in got[1]["content"][0]["text"]


async def test_denied_calls_get_the_deny_shape(tmp_path):
    async with connect(gateway_cmd(write_policy(tmp_path, POLICY), everything_cmd())) as gw:
        # Agents list before they call; once the gateway has seen the upstream's catalogue, a call
        # to a tool outside it gets the same answer as a hidden tool.
        await gw.list_tools()
        capped = dump(await gw.call_tool("get-sum", {"a": 5000, "b": 1}))
        toggle = dump(await gw.call_tool("toggle-simulated-logging", {}))
        hidden = dump(await gw.call_tool("get-env", {}))
        missing = dump(await gw.call_tool("no-such-tool", {}))
    assert capped["isError"] is True
    assert capped["content"][0]["text"] == "[toolgate] deny: sums are capped (denied because `args.a` gt 1000)"
    assert capped["_meta"]["toolgate"] == {
        "decision": "deny",
        "rule": "tools.get-sum",
        "reason": "sums are capped (denied because `args.a` gt 1000)",
    }
    assert toggle["content"][0]["text"] == "[toolgate] deny: toggles are off limits"
    assert hidden["content"][0]["text"] == "[toolgate] deny: unknown tool"
    assert hidden == missing, "a hidden tool cannot be told apart from a tool that does not exist"


async def test_progress_notifications_arrive_through_the_gateway(tmp_path):
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    async with connect(gateway_cmd(write_policy(tmp_path, POLICY), everything_cmd())) as gw:
        result = await gw.call_tool(
            "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
        )
    assert not result.is_error
    assert [v for v, _ in progress] == [1, 2, 3, 4]
    assert all(total == 4 for _, total in progress)


async def test_a_server_to_client_roots_request_is_answered_through_the_gateway(tmp_path):
    asked = anyio.Event()

    async def list_roots(context) -> types.ListRootsResult:
        asked.set()
        return types.ListRootsResult(roots=[types.Root(uri="file:///workspace/toolgate", name="toolgate")])

    async with connect(
        gateway_cmd(write_policy(tmp_path, POLICY), everything_cmd()), list_roots_callback=list_roots
    ) as gw:
        with anyio.fail_after(10):
            await asked.wait()  # server-everything sends roots/list after notifications/initialized
            while "get-roots-list" not in {t.name for t in (await gw.list_tools()).tools}:
                await anyio.sleep(0.05)
        result = dump(await gw.call_tool("get-roots-list", {}))
    text = " ".join(c.get("text", "") for c in result["content"])
    assert "file:///workspace/toolgate" in text, text


async def test_the_2026_client_probes_server_discover_and_falls_back_through_the_gateway(tmp_path):
    """mcp.Client sends `server/discover` (protocol 2026-07-28) first: the gateway must pass the
    unknown method and the server's -32601 through untouched so that the client can fall back."""
    from mcp import Client, StdioServerParameters

    cmd = gateway_cmd(write_policy(tmp_path, POLICY), everything_cmd())
    async with Client(StdioServerParameters(command=cmd[0], args=cmd[1:])) as client:
        result = await client.call_tool("echo", {"message": "modern client"})
        denied = await client.call_tool("get-sum", {"a": 5000, "b": 1})
    assert result.content[0].text == "Echo: modern client"
    assert denied.is_error and denied.content[0].text.startswith("[toolgate] deny:")
