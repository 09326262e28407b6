"""Shared set-up for the tests against real MCP peers.

The peers come from the registries (scripts/test installs them): server-everything and the
Inspector CLI from npm into tests/peers/node_modules, the Python SDK and mcp-server-time from
PyPI into .venv. The gateway is the toolgate binary that cargo built (TOOLGATE_BIN overrides).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests" / "peers" / "node_modules" / ".bin"


def toolgate_bin() -> str:
    path = os.environ.get("TOOLGATE_BIN") or str(ROOT / "target" / "debug" / "toolgate")
    if not Path(path).exists():
        pytest.fail(f"toolgate binary not found at {path}; run `cargo build` first")
    return path


def everything_cmd() -> list[str]:
    return ["node", str(PEERS / "mcp-server-everything"), "stdio"]


def time_cmd() -> list[str]:
    exe = shutil.which("mcp-server-time") or str(ROOT / ".venv" / "bin" / "mcp-server-time")
    return [exe, "--local-timezone", "UTC"]


def write_policy(tmp_path: Path, policy: dict) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    return path


def gateway_cmd(policy: Path, upstream: list[str]) -> list[str]:
    return [toolgate_bin(), "run", "--policy", str(policy), "--grant", "python-sdk", "--", *upstream]


@asynccontextmanager
async def connect(cmd: list[str], **session_kwargs):
    """An initialized ClientSession to the stdio server started by `cmd`."""
    params = StdioServerParameters(command=cmd[0], args=cmd[1:])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=30, **session_kwargs) as session:
            await session.initialize()
            yield session


def dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True)


@pytest.fixture
def anyio_backend():
    return "asyncio"
