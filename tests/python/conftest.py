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


# --- toolgate serve (Streamable HTTP) -------------------------------------------------------

import hashlib
import socket
import subprocess
import time
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not listen on {port} within {timeout} s")


@contextmanager
def everything_http():
    """server-everything in streamableHttp mode; yields its /mcp URL."""
    port = free_port()
    proc = subprocess.Popen(
        ["node", str(PEERS / "mcp-server-everything"), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc, "server-everything")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


@contextmanager
def serve(tmp_path: Path, upstream: dict, grants: list[dict], **top):
    """`toolgate serve` with this upstream (`url` or `command`) and grants (`name`, `token`,
    `policy` as a dict); yields the /mcp URL. Tokens are written as their sha256."""
    lines = ["[upstream]"] + [f"{k} = {toml_value(v)}" for k, v in upstream.items()]
    with _serve(tmp_path, lines, grants, top) as url:
        yield url


@contextmanager
def serve_upstreams(tmp_path: Path, upstreams: list[dict], grants: list[dict], **top):
    """`serve` in front of several upstreams: each dict is one `[[upstreams]]` entry (`name`,
    `url` or `command`, optional `prefix`; `headers` as a dict). Top-level keys (such as
    `namespace_separator`) go in `top`, as for `serve`."""
    lines = []
    for upstream in upstreams:
        lines.append("[[upstreams]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in upstream.items() if k != "headers"]
        if "headers" in upstream:
            pairs = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in upstream["headers"].items())
            lines.append(f"headers = {{ {pairs} }}")
    with _serve(tmp_path, lines, grants, top) as url:
        yield url


@contextmanager
def _serve(tmp_path: Path, upstream_lines: list[str], grants: list[dict], top: dict):
    lines = ['listen = "127.0.0.1:0"', 'admin_listen = "127.0.0.1:0"']
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items() if not isinstance(v, dict)]
    lines += upstream_lines
    for grant in grants:
        lines.append("[[grants]]")
        lines.append(f"name = {toml_value(grant['name'])}")
        if "token" in grant:
            lines.append(f"token_sha256 = {toml_value(sha256_hex(grant['token']))}")
        if "policy" in grant:
            policy = tmp_path / f"{grant['name']}.policy.json"
            policy.write_text(json.dumps(grant["policy"]))
            lines.append(f"policy = {toml_value(policy.name)}")
    for table, values in top.items():  # [limits], [tls]
        if isinstance(values, dict):
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    config = tmp_path / "toolgate.toml"
    config.write_text("\n".join(lines) + "\n")
    log = tmp_path / "toolgate.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([toolgate_bin(), "serve", "--config", str(config)], stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("toolgate serve: listening on "):
                    url = line.split()[4]
            if url is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"toolgate serve did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait()


def make_certs(folder: Path, dns: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for these names signed by it: (ca.pem, cert.pem, key.pem).
    A client certificate (for mutual TLS) signed by the same CA goes to client.pem and
    client.key in the same folder."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool, usage=ExtendedKeyUsageOID.SERVER_AUTH) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
                ), critical=False
            ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("toolgate test CA", ca_key, "toolgate test CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert("localhost", key, "toolgate test CA", ca_key, ca=False)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = cert("toolgate", client_key, "toolgate test CA", ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (folder / "client.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    (folder / "client.key").write_bytes(
        client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths
