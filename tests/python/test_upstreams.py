"""`toolgate serve` in front of three upstreams at once (issue 20): the LLM CLI Gateway stand-in
over stdio, server-everything over Streamable HTTP, and the echo stand-in over stdio, as
`[[upstreams]]`. Clients: the official Python SDK and the Inspector CLI.

Tools are exposed as `{name}__{tool}`; the policy names them so.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import PEERS, dump, everything_http, free_port, serve_upstreams, toolgate_bin, wait_for_port

pytestmark = pytest.mark.anyio

TOKEN = "tg_python_upstreams_token"
SESSION_TOOLS = ["session_create", "session_list", "session_set_active", "session_delete", "session_get", "session_clear_all"]
POLICY = {
    "version": "1",
    "default": "allow",
    "hide": ["llmgw__session_*", "everything__get-env", "echo__fail"],
    "tools": {
        "everything__get-sum": {"deny_if": [{"path": "args.a", "op": "gt", "value": 1000}], "reason": "sums are capped"},
    },
}


def standin_tools() -> list[str]:
    from conftest import ROOT

    catalogue = json.loads((ROOT / "standin" / "fixtures" / "llm-cli-gateway-2.10.0.tools.json").read_text())
    tools = catalogue["tools"] if isinstance(catalogue, dict) else catalogue
    return [t["name"] for t in tools]


@asynccontextmanager
async def connect(url: str, token: str | None = TOKEN, **session_kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=30, **session_kwargs) as session:
                await session.initialize()
                yield session


@pytest.fixture
def three(tmp_path):
    """`serve` in front of the three upstreams; yields (gateway URL, server-everything's own URL)."""
    with everything_http() as everything:
        upstreams = [
            {"name": "llmgw", "command": [toolgate_bin(), "standin"]},
            {"name": "everything", "url": everything},
            {"name": "echo", "command": [toolgate_bin(), "standin", "--echo"]},
        ]
        grants = [
            {"name": "python-sdk", "token": TOKEN, "policy": POLICY},
            {"name": "inspector", "policy": POLICY},
        ]
        with serve_upstreams(tmp_path, upstreams, grants, anonymous_grant="inspector") as url:
            yield url, everything


async def all_tools(session: ClientSession) -> dict[str, dict]:
    tools: dict[str, dict] = {}
    cursor = None
    for _ in range(100):
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        for tool in page.tools:
            assert tool.name not in tools, f"{tool.name} listed twice"
            tools[tool.name] = dump(tool)
        cursor = page.next_cursor
        if not cursor:
            return tools
    raise AssertionError("tools/list did not end within 100 pages")


async def wait_for_tool(session: ClientSession, name: str) -> None:
    """server-everything registers some tools after `initialized`, for clients that can take them."""
    with anyio.fail_after(10):
        while name not in await all_tools(session):
            await anyio.sleep(0.05)


async def test_the_sdk_lists_the_merged_namespaced_tools_with_hidden_ones_left_out(three):
    url, everything = three
    async with connect(everything, token=None) as direct:
        direct_tools = await all_tools(direct)
    async with connect(url) as gw:
        tools = await all_tools(gw)
    llmgw = {n.removeprefix("llmgw__") for n in tools if n.startswith("llmgw__")}
    assert llmgw == set(standin_tools()) - set(SESSION_TOOLS)
    assert len(llmgw) == 46 - 6
    echo = {n.removeprefix("echo__") for n in tools if n.startswith("echo__")}
    assert echo == {"echo", "crash"}
    ev = {n.removeprefix("everything__"): t for n, t in tools.items() if n.startswith("everything__")}
    assert set(ev) == set(direct_tools) - {"get-env"}
    assert len(tools) == len(llmgw) + len(echo) + len(ev), "every tool is under one of the three prefixes"
    # Nothing but the name changed on the way, and the gateway's note of the upstream in `_meta`.
    for own, tool in ev.items():
        meta = dict(tool.get("_meta") or {})
        assert meta.pop("toolgate") == {"upstream": "everything"}, own
        assert {**tool, "name": own, "_meta": meta or None} == direct_tools[own], f"{own} changed on its way through the gateway"


def test_the_inspector_cli_lists_the_merged_tools_and_calls_each_server(three):
    url, _ = three

    def inspector(*args: str, exit_code: int = 0) -> dict:
        cmd = ["node", str(PEERS / "mcp-inspector"), "--cli", url, "--transport", "http", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == exit_code, f"inspector exited {out.returncode}: {out.stdout}\n{out.stderr}"
        return json.loads(out.stdout)

    names = {t["name"] for t in inspector("--method", "tools/list")["tools"]}
    assert {"llmgw__session_create", "everything__get-env", "echo__fail"}.isdisjoint(names), names
    assert {"llmgw__workspace_list", "everything__echo", "everything__get-sum", "echo__echo", "echo__crash"} <= names
    assert {n for n in names if n.startswith("llmgw__")} == {f"llmgw__{t}" for t in standin_tools()} - {
        f"llmgw__{t}" for t in SESSION_TOOLS
    }
    echoed = inspector("--method", "tools/call", "--tool-name", "everything__echo", "--tool-arg", "message=inspected")
    assert echoed["content"][0]["text"] == "Echo: inspected"
    echoed = inspector("--method", "tools/call", "--tool-name", "echo__echo", "--tool-arg", "message=inspected")
    assert echoed["content"][0]["text"] == "inspected"


async def test_calls_reach_the_server_that_owns_the_tool_and_hidden_tools_stay_hidden(three):
    url, _ = three
    async with connect(url) as gw:
        await all_tools(gw)
        from_echo = dump(await gw.call_tool("echo__echo", {"message": "which server?"}))
        from_everything = dump(await gw.call_tool("everything__echo", {"message": "which server?"}))
        summed = dump(await gw.call_tool("everything__get-sum", {"a": 2, "b": 40}))
        capped = dump(await gw.call_tool("everything__get-sum", {"a": 5000, "b": 1}))
        workspaces = dump(await gw.call_tool("llmgw__workspace_list", {}))
        hidden = {
            name: dump(await gw.call_tool(name, args))
            for name, args in [("llmgw__session_create", {"cli": "claude"}), ("everything__get-env", {}), ("echo__fail", {})]
        }
        missing = dump(await gw.call_tool("nope__echo", {}))
    # The echo server returns the message as it is; server-everything prefixes it.
    assert [(c["type"], c["text"]) for c in from_echo["content"]] == [("text", "which server?")]
    assert from_everything["content"][0]["text"] == "Echo: which server?"
    assert "is 42" in summed["content"][0]["text"]
    assert capped["isError"] and capped["content"][0]["text"] == "[toolgate] deny: sums are capped (denied because `args.a` gt 1000)"
    assert capped["_meta"]["toolgate"]["rule"] == "tools.everything__get-sum"
    assert not workspaces.get("isError"), workspaces
    for name, result in hidden.items():
        assert result["isError"] and result["content"][0]["text"] == "[toolgate] deny: unknown tool", name
        # A hidden tool cannot be told apart from one that does not exist.
        assert result == missing, name


async def test_a_hidden_tool_with_bad_arguments_cannot_be_told_apart_from_a_missing_one(three):
    url, _ = three
    async with connect(url) as gw:
        await all_tools(gw)
        hidden = dump(await gw.call_tool("llmgw__session_create", {}))
        missing = dump(await gw.call_tool("llmgw__no_such_tool", {}))
    assert missing["content"][0]["text"] == "[toolgate] deny: unknown tool"
    assert hidden == missing


async def test_progress_from_server_everything_reaches_the_sdk(three):
    url, _ = three
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    async with connect(url) as gw:
        result = await gw.call_tool(
            "everything__trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
        )
    assert not result.is_error, result
    assert result.content[0].text == "Long running operation completed. Duration: 1 seconds, Steps: 4."
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_an_elicitation_from_server_everything_reaches_the_sdk_and_its_answer_goes_back(three):
    url, _ = three
    asked: list[str] = []

    async def elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Grace From Pytest", "check": True})

    async with connect(url, elicitation_callback=elicit) as gw:
        await wait_for_tool(gw, "everything__trigger-elicitation-request")
        result = dump(await gw.call_tool("everything__trigger-elicitation-request", {}))
    assert asked == ["Please provide inputs for the following fields:"]
    text = json.dumps(result["content"])
    assert "- Name: Grace From Pytest" in text, result
    assert "- Agreed to terms: true" in text, result


async def test_a_sampling_request_from_server_everything_is_answered_by_the_sdk(three):
    url, _ = three
    asked: list[str] = []

    async def sample(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled by pytest"), model="pytest-model"
        )

    async with connect(url, sampling_callback=sample) as gw:
        await wait_for_tool(gw, "everything__trigger-sampling-request")
        result = dump(await gw.call_tool("everything__trigger-sampling-request", {"prompt": "through three", "maxTokens": 10}))
    assert len(asked) == 1 and "through three" in asked[0]
    assert "sampled by pytest" in json.dumps(result)


async def test_killing_one_upstream_leaves_the_others_serving(three):
    url, _ = three
    async with connect(url) as gw:
        before = await all_tools(gw)
        # The echo server exits mid-call: that call gets an error.
        with pytest.raises(MCPError) as crashed:
            await gw.call_tool("echo__crash", {})
        assert crashed.value.error.code == -32000
        assert "`echo`" in crashed.value.error.message
        # Calls to its tools get a clear error, and it did not run.
        with pytest.raises(MCPError) as dead:
            await gw.call_tool("echo__echo", {"message": "anyone?"})
        assert dead.value.error.code == -32602
        assert "upstream server `echo` is not available" in dead.value.error.message
        # The other two keep serving, and the list is theirs.
        still = await gw.call_tool("everything__echo", {"message": "still here"})
        assert still.content[0].text == "Echo: still here"
        workspaces = await gw.call_tool("llmgw__workspace_list", {})
        assert not workspaces.is_error, workspaces
        after = await all_tools(gw)
    assert set(after) == {n for n in before if not n.startswith("echo__")}
    # A new session starts all three again.
    async with connect(url) as fresh:
        again = await all_tools(fresh)
        echoed = await fresh.call_tool("echo__echo", {"message": "back"})
    assert set(again) == set(before)
    assert echoed.content[0].text == "back"


async def test_an_http_upstream_that_dies_leaves_the_others_serving(tmp_path):
    """server-everything (the Streamable HTTP upstream) is killed mid-session."""
    port = free_port()
    everything = subprocess.Popen(
        ["node", str(PEERS / "mcp-server-everything"), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.PIPE,
    )
    try:
        wait_for_port(port, everything, "server-everything")
        upstreams = [
            {"name": "llmgw", "command": [toolgate_bin(), "standin"]},
            {"name": "everything", "url": f"http://127.0.0.1:{port}/mcp"},
            {"name": "echo", "command": [toolgate_bin(), "standin", "--echo"]},
        ]
        grants = [{"name": "python-sdk", "token": TOKEN, "policy": POLICY}]
        list_changed = anyio.Event()

        async def on_message(message) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                list_changed.set()

        with serve_upstreams(tmp_path, upstreams, grants) as url:
            async with connect(url, message_handler=on_message) as gw:
                before = await all_tools(gw)
                up = await gw.call_tool("everything__echo", {"message": "up"})
                assert up.content[0].text == "Echo: up"
                list_changed = anyio.Event()  # forget any from the start-up
                everything.kill()
                everything.wait()
                # The gateway notices without a call (its event stream to the upstream broke)
                # and tells the client.
                with anyio.fail_after(10):
                    await list_changed.wait()
                with pytest.raises(MCPError) as dead:
                    await gw.call_tool("everything__echo", {"message": "anyone?"})
                assert dead.value.error.code == -32602
                assert "upstream server `everything` is not available" in dead.value.error.message
                echoed = await gw.call_tool("echo__echo", {"message": "still here"})
                workspaces = await gw.call_tool("llmgw__workspace_list", {})
                after = await all_tools(gw)
    finally:
        everything.kill()
        everything.wait()
    assert echoed.content[0].text == "still here"
    assert not workspaces.is_error, workspaces
    assert set(after) == {n for n in before if not n.startswith("everything__")}
