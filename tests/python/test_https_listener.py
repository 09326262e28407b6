"""`toolgate serve` with `[tls]`: both listeners speak HTTPS, with a certificate that a test
CA made for 127.0.0.1. The client is the official Python SDK over httpx with that CA; the
upstream is server-everything (streamableHttp)."""

from __future__ import annotations

import socket
import ssl
import time
from contextlib import asynccontextmanager
from urllib.parse import urlparse

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import dump, everything_http, make_certs, serve

pytestmark = pytest.mark.anyio

TOKEN = "tg_tls_listener_token"
POLICY = {"version": "1", "default": "allow", "tools": {"get-sum": {"action": "deny", "reason": "no sums"}}}


@asynccontextmanager
async def connect(url: str, verify):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30, verify=verify) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=30) as session:
                await session.initialize()
                yield session


@pytest.fixture
def tls_gateway(tmp_path):
    ca, cert, key = make_certs(tmp_path, dns=("localhost",), ips=("127.0.0.1",))
    with everything_http() as direct:
        tls = {"cert_file": cert.name, "key_file": key.name}  # relative to the config file
        grants = [{"name": "tls", "token": TOKEN, "policy": POLICY}]
        with serve(tmp_path, {"url": direct}, grants, tls=tls, limits={"client_timeout_s": 1}) as url:
            log = (tmp_path / "toolgate.log").read_text()
            admin = log.split("(admin ", 1)[1].split(")", 1)[0]
            yield url, admin, ssl.create_default_context(cafile=str(ca))


async def test_the_sdk_works_over_https_with_the_gateways_ca(tls_gateway):
    url, admin, trusted = tls_gateway
    assert url.startswith("https://127.0.0.1:") and admin.startswith("https://127.0.0.1:")
    async with connect(url, trusted) as gw:
        names = {t.name for t in (await gw.list_tools()).tools}
        echoed = dump(await gw.call_tool("echo", {"message": "over https"}))
        denied = dump(await gw.call_tool("get-sum", {"a": 1, "b": 2}))
    assert "echo" in names
    assert echoed["content"][0]["text"] == "Echo: over https"
    assert denied["isError"] and denied["content"][0]["text"] == "[toolgate] deny: no sums"
    async with httpx2.AsyncClient(verify=trusted) as http:
        assert (await http.get(f"{admin}/healthz")).status_code == 200


async def test_an_untrusted_client_a_plain_http_client_and_a_silent_one_get_nothing(tls_gateway):
    url, _, trusted = tls_gateway
    # The system's roots do not know the test CA: the client refuses the gateway.
    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        async with httpx2.AsyncClient() as http:
            await http.post(url, json={})
    # Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
    with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
        async with httpx2.AsyncClient() as http:
            await http.post(url.replace("https://", "http://"), json={})
    # A client that connects and never starts its handshake is cut off after client_timeout_s.
    port = urlparse(url).port
    with socket.create_connection(("127.0.0.1", port)) as silent:
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert time.monotonic() - started < 5
    # And the gateway serves on.
    async with connect(url, trusted) as gw:
        result = await gw.call_tool("echo", {"message": "still here"})
    assert result.content[0].text == "Echo: still here"
