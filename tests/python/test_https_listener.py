"""`toolgate serve` with `[tls]`: both listeners speak HTTPS, with a certificate that a test
CA made for 127.0.0.1. The client is the official Python SDK over httpx with that CA; the
upstream is server-everything (streamableHttp)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import dump, everything_http, make_certs, serve, sha256_hex

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


def handshake(address: str, ca: Path) -> ssl.SSLSocket:
    """A TLS connection to `https://host:port` that trusts only `ca`; raises if the gateway's
    certificate does not chain to it."""
    host, port = urlparse(address).hostname, urlparse(address).port
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)


def healthz(conn: ssl.SSLSocket) -> bytes:
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return conn.recv(4096)


ADMIN_TOKEN = "tg_admin_token"


def three_cas(tmp_path: Path) -> tuple:
    """(ca, cert, key) from each of three CAs, "old", "new" and "third", for 127.0.0.1."""
    made = []
    for name in ("old", "new", "third"):
        (tmp_path / name).mkdir()
        made.append(make_certs(tmp_path / name, ips=("127.0.0.1",)))
    return tuple(made)


@contextmanager
def renewable_gateway(tmp_path: Path, first, **top):
    """`serve` on HTTPS in front of server-everything, with `first`'s certificate and key
    copied to files that the test may rewrite; yields (url, admin, cert file, key file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first[1], cert)
    shutil.copy(first[2], key)
    with everything_http() as direct, serve(
        tmp_path,
        {"url": direct},
        [{"name": "tls", "token": TOKEN, "policy": POLICY}],
        admin_token_sha256=sha256_hex(ADMIN_TOKEN),
        tls={"cert_file": cert.name, "key_file": key.name},
        **top,
    ) as url:
        admin = (tmp_path / "toolgate.log").read_text().split("(admin ", 1)[1].split(")", 1)[0]
        yield url, admin, cert, key


async def test_a_renewed_certificate_is_served_after_a_reload_and_a_bad_one_is_refused(tmp_path):
    old, new, third = three_cas(tmp_path)
    # watch = false: only the admin reload and SIGHUP reload here.
    with renewable_gateway(tmp_path, old, watch=False) as (url, admin, cert, key):
        kept = handshake(admin, old[0])  # opened before the renewal, kept open
        assert b" 200 " in healthz(kept)
        # The renewal: a certificate from another CA, then a reload.
        shutil.copy(new[1], cert)
        shutil.copy(new[2], key)
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(old[0]))) as http:
            reply = await http.post(f"{admin}/reload", headers=auth)
        assert reply.status_code == 200, reply.text
        assert {"tls": True, "ok": True, "changed": True} in reply.json()["results"]
        # New connections get the new certificate, on both listeners; the open one goes on.
        for address in (url, admin):
            handshake(address, new[0]).close()
            with pytest.raises(ssl.SSLCertVerificationError):
                handshake(address, old[0])
        assert b" 200 " in healthz(kept)
        async with connect(url, ssl.create_default_context(cafile=str(new[0]))) as gw:
            result = await gw.call_tool("echo", {"message": "renewed"})
        assert result.content[0].text == "Echo: renewed"
        # A key that does not fit the certificate: 422, and the renewed certificate stays.
        shutil.copy(old[2], key)
        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(new[0]))) as http:
            reply = await http.post(f"{admin}/reload", headers=auth)
        assert reply.status_code == 422, reply.text
        failed = [r for r in reply.json()["results"] if r.get("tls")]
        assert failed[0]["ok"] is False and "does not fit" in failed[0]["error"], failed
        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(new[0]))) as http:
            status = (await http.get(f"{admin}/status", headers=auth)).json()
        assert "does not fit" in status["tls"]["last_reload_error"], status
        handshake(url, new[0]).close()
        # SIGHUP reloads it too.
        shutil.copy(third[1], cert)
        shutil.copy(third[2], key)
        pid = int(subprocess.check_output(["pgrep", "-f", str(tmp_path / "toolgate.toml")]).split()[0])
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                handshake(url, third[0]).close()
                break
            except ssl.SSLCertVerificationError:
                assert time.monotonic() < deadline, "SIGHUP did not reload the certificate"
                time.sleep(0.1)
        assert b" 200 " in healthz(kept)
        kept.close()
        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(third[0]))) as http:
            status = (await http.get(f"{admin}/status", headers=auth)).json()
        assert status["tls"]["last_reload_error"] is None, status


def served_by(address: str, ca: Path, within: float = 10) -> None:
    """Waits until the gateway at `address` serves a certificate that chains to `ca`."""
    deadline = time.monotonic() + within
    while True:
        try:
            handshake(address, ca).close()
            return
        except ssl.SSLCertVerificationError:
            assert time.monotonic() < deadline, f"not served within {within} s: a certificate from {ca}"
            time.sleep(0.05)


async def test_a_renewed_certificate_is_picked_up_from_the_files_alone(tmp_path):
    old, new, third = three_cas(tmp_path)
    with renewable_gateway(tmp_path, old) as (url, admin, cert, key):
        kept = handshake(admin, old[0])  # opened before the renewal, kept open
        # A renewal the way certbot's deploy step or a copy does it: the certificate, then the
        # key, each rewritten in place. No signal, no admin call.
        shutil.copy(new[1], cert)
        shutil.copy(new[2], key)
        served_by(url, new[0])
        served_by(admin, new[0])
        assert b" 200 " in healthz(kept)
        # A certificate whose key has not arrived: refused (the reason in /status), and the
        # renewed one keeps serving until the key comes.
        shutil.copy(third[1], cert)
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + 10
        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(new[0]))) as http:
            while True:
                status = (await http.get(f"{admin}/status", headers=auth)).json()
                if status["tls"]["last_reload_error"]:
                    break
                assert time.monotonic() < deadline, f"the mismatched pair was not reported: {status}"
                time.sleep(0.05)
        assert "does not fit" in status["tls"]["last_reload_error"], status
        handshake(url, new[0]).close()
        shutil.copy(third[2], key)
        served_by(url, third[0])
        async with connect(url, ssl.create_default_context(cafile=str(third[0]))) as gw:
            result = await gw.call_tool("echo", {"message": "watched"})
        assert result.content[0].text == "Echo: watched"
        async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(third[0]))) as http:
            status = (await http.get(f"{admin}/status", headers=auth)).json()
        assert status["tls"]["last_reload_error"] is None, status
        kept.close()
