"""`toolgate serve` in front of an `https://` upstream: server-everything (streamableHttp)
behind a TLS terminator whose certificate a private CA made for this test.

The terminator is Python's own `ssl` over asyncio (no HTTP in it, bytes both ways), so what
toolgate talks to is real TLS and, past it, a real MCP server. The certificate is for
`localhost` only: the same upstream named `127.0.0.1` must be refused, as must any upstream
whose CA toolgate was not told to trust.
"""

from __future__ import annotations

import asyncio
import ssl
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx2
import pytest
from conftest import dump, everything_http, make_certs, serve
from test_http import connect

pytestmark = pytest.mark.anyio

TOKEN = "tg_https_token"
POLICY = {"version": "1", "default": "allow", "tools": {"get-sum": {"action": "deny", "reason": "no sums over TLS"}}}


async def initialize(url: str) -> httpx2.Response:
    """A bare `initialize` POST, for its status and error."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        return await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "pytest", "version": "1"}}},
            headers={"Accept": "application/json, text/event-stream"},
        )


@asynccontextmanager
async def tls_terminator(cert: Path, key: Path, target: str, client_ca: Path | None = None):
    """Accepts TLS on a loopback port and relays the plain bytes to `target` (host:port); with
    `client_ca`, only clients with a certificate from that CA (mutual TLS). Yields the port
    and the number of TLS connections that completed a handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    host, port = target.rsplit(":", 1)
    handshakes = [0]

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handshakes[0] += 1
        upstream_r, upstream_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pump(client_r, upstream_w), pump(upstream_r, client_w))

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], handshakes
    finally:
        server.close()


async def test_an_https_upstream_with_its_ca_works_as_it_does_directly(tmp_path):
    ca, cert, key = make_certs(tmp_path)
    with everything_http() as direct:
        async with connect(direct, token=None) as d:
            expected_tools = {t.name: dump(t) for t in (await d.list_tools()).tools}
            expected = dump(await d.call_tool("echo", {"message": "over TLS"}))
        async with tls_terminator(cert, key, urlparse(direct).netloc) as (port, handshakes):
            upstream = {"url": f"https://localhost:{port}/mcp", "ca_file": ca.name}
            with serve(tmp_path, upstream, [{"name": "tls", "token": TOKEN, "policy": POLICY}]) as url:
                async with connect(url, token=TOKEN) as gw:
                    tools = {t.name: dump(t) for t in (await gw.list_tools()).tools}
                    echoed = dump(await gw.call_tool("echo", {"message": "over TLS"}))
                    denied = dump(await gw.call_tool("get-sum", {"a": 1, "b": 2}))
                    for _ in range(5):
                        assert dump(await gw.call_tool("echo", {"message": "over TLS"})) == expected
    assert tools == expected_tools
    assert echoed == expected
    assert denied["isError"] and denied["content"][0]["text"] == "[toolgate] deny: no sums over TLS"
    # Keep-alive over TLS: a few connections (the GET stream, the POSTs), not one per call.
    assert 1 <= handshakes[0] <= 4, f"{handshakes[0]} TLS handshakes for 9 requests"


@pytest.mark.parametrize(
    "host, ca_file, why",
    [
        ("localhost", False, "UnknownIssuer"),  # the public roots do not know the test CA
        ("127.0.0.1", True, "not valid for name"),  # the certificate names localhost only
    ],
)
async def test_an_https_upstream_that_fails_verification_is_never_sent_a_request(tmp_path, host, ca_file, why):
    ca, cert, key = make_certs(tmp_path)
    with everything_http() as direct:
        async with tls_terminator(cert, key, urlparse(direct).netloc) as (port, handshakes):
            upstream = {"url": f"https://{host}:{port}/mcp"}
            if ca_file:
                upstream["ca_file"] = str(ca)
            with serve(tmp_path, upstream, [{"name": "tls", "token": TOKEN, "policy": POLICY}]) as url:
                response = await initialize(url)
    assert response.status_code == 502, response.text
    message = response.json()["error"]["message"]
    assert "upstream MCP server unreachable" in message and why in message, message
    assert handshakes[0] == 0, "a TLS session was completed with an unverified upstream"


@pytest.mark.parametrize("with_certificate", [True, False])
async def test_an_upstream_that_requires_a_client_certificate_gets_the_configured_one(tmp_path, with_certificate):
    ca, cert, key = make_certs(tmp_path)
    with everything_http() as direct:
        async with tls_terminator(cert, key, urlparse(direct).netloc, client_ca=ca) as (port, handshakes):
            upstream = {"url": f"https://localhost:{port}/mcp", "ca_file": ca.name}
            if with_certificate:
                upstream |= {"client_cert_file": "client.pem", "client_key_file": "client.key"}
            with serve(tmp_path, upstream, [{"name": "tls", "token": TOKEN, "policy": POLICY}]) as url:
                if with_certificate:
                    async with connect(url, token=TOKEN) as gw:
                        echoed = dump(await gw.call_tool("echo", {"message": "mutual"}))
                    assert echoed["content"][0]["text"] == "Echo: mutual"
                    assert handshakes[0] >= 1
                    return
                response = await initialize(url)
    # Without the certificate the upstream refuses the handshake: 502, and nothing relayed.
    assert response.status_code == 502, response.text
    assert "upstream MCP server unreachable" in response.json()["error"]["message"]
    assert handshakes[0] == 0
