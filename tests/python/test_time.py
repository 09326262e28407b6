"""toolgate run in front of mcp-server-time (PyPI), driven by the official Python SDK."""

from __future__ import annotations

import pytest

from conftest import connect, dump, gateway_cmd, time_cmd, write_policy

pytestmark = pytest.mark.anyio

POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        "get_current_time": {"require": [{"path": "args.timezone", "op": "in", "value": ["UTC", "Europe/Paris"]}]},
        "convert_time": {"rate_limit": {"max": 2, "window": "minute", "scope": "session"}},
    },
}


async def test_time_server_through_the_gateway(tmp_path):
    args = {"source_timezone": "UTC", "time": "12:30", "target_timezone": "Asia/Tokyo"}
    async with connect(time_cmd()) as direct:
        direct_tools = [dump(t) for t in (await direct.list_tools()).tools]
        expected = dump(await direct.call_tool("convert_time", args))
    async with connect(gateway_cmd(write_policy(tmp_path, POLICY), time_cmd())) as gw:
        gw_tools = [dump(t) for t in (await gw.list_tools()).tools]
        first = dump(await gw.call_tool("convert_time", args))
        second = dump(await gw.call_tool("convert_time", args))
        third = dump(await gw.call_tool("convert_time", args))
        allowed = dump(await gw.call_tool("get_current_time", {"timezone": "Europe/Paris"}))
        refused = dump(await gw.call_tool("get_current_time", {"timezone": "America/New_York"}))
    assert gw_tools == direct_tools, "both tools are named in the policy, so both stay listed unchanged"
    assert first == expected and second == expected
    assert first["structuredContent"]["target"]["timezone"] == "Asia/Tokyo"
    assert third["isError"] is True
    assert third["_meta"]["toolgate"]["decision"] == "rate_limited"
    assert 0 < third["_meta"]["toolgate"]["retry_after_ms"] <= 60_000
    assert third["content"][0]["text"].startswith(
        "[toolgate] rate_limited: counter rate:convert_time allows 2 per minute; retry in "
    )
    assert not allowed["isError"] and allowed["structuredContent"]["timezone"] == "Europe/Paris"
    assert refused["content"][0]["text"].startswith("[toolgate] deny: requirement not met: `args.timezone` in")
