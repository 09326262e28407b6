"""A 2026-07-28 upstream for the tests: the official Python SDK's own server (MCPServer),
stateless Streamable HTTP, with one tool, `echo`. Run as `python upstream_2026.py PORT`."""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("upstream-2026")


@server.tool()
def echo(message: str) -> str:
    """Returns its message."""
    return f"Echo: {message}"


if __name__ == "__main__":
    server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]), stateless_http=True)
