"""`/metrics` (issue 21, part 2): the admin listener of `toolgate serve`, and
`toolgate run --metrics-listen`, read with the Prometheus project's own text-format parser.

server-everything is the upstream (on stdio: one child per session). The counters are read
before and after the calls, so each case sees them move; 10,000 calls to tools the upstream
does not have must leave the number of series where it was.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import connect, everything_cmd, free_port, serve, sha256_hex, toolgate_bin, wait_for_port, write_policy

TOKEN = "tg_metrics_grant_token"
ADMIN = "tg_metrics_admin_token"
GRANT = "python-sdk"
POLICY = {
    "version": "1",
    "default": "allow",
    "tools": {"get-sum": {"action": "deny", "reason": "sums are off"}},
}
PROTOCOL = "2025-06-18"


def admin_url(tmp_path: Path) -> str:
    log = (tmp_path / "toolgate.log").read_text(errors="replace")
    return re.search(r"\(admin (http://[^)]+)\)", log).group(1)


def scrape(url: str, token: str | None = ADMIN) -> tuple[int, str, str]:
    """(status, Content-Type, body) of GET `url`."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def samples(text: str) -> list:
    """Every sample, as the real parser reads the text (it raises on anything malformed)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def series(text: str) -> set:
    """Every series: a family and a label set (a histogram's buckets, sum and count are one)."""
    return {
        (family.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(all_samples: list, name: str, **labels) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when none)."""
    return sum(s.value for s in all_samples if s.name == name and labels.items() <= s.labels.items())


def metrics(tmp_path: Path, token: str | None = ADMIN) -> list:
    status, content_type, text = scrape(f"{admin_url(tmp_path)}/metrics", token)
    assert status == 200, text
    assert content_type.startswith("text/plain; version=0.0.4")
    return samples(text)


def gateway(tmp_path: Path, **top):
    return serve(
        tmp_path,
        {"command": everything_cmd()},
        [{"name": GRANT, "token": TOKEN, "policy": POLICY}],
        admin_token_sha256=sha256_hex(ADMIN),
        **top,
    )


class Raw:
    """One MCP session over raw HTTP/1.1 keep-alive: fast enough for thousands of calls."""

    def __init__(self, url: str):
        match = re.match(r"http://([^/]+)(/.*)", url)
        self.host, self.path = match.group(1), match.group(2)
        self.connection = http.client.HTTPConnection(self.host, timeout=30)
        self.session = None
        self.next_id = 0

    def post(self, message: dict) -> dict | None:
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        if self.session:
            headers |= {"Mcp-Session-Id": self.session, "MCP-Protocol-Version": PROTOCOL}
        self.connection.request("POST", self.path, json.dumps(message), headers)
        reply = self.connection.getresponse()
        body = reply.read().decode()
        assert reply.status in (200, 202), (reply.status, body)
        self.session = self.session or reply.getheader("Mcp-Session-Id")
        if "id" not in message:
            return None
        if reply.getheader("Content-Type", "").startswith("text/event-stream"):
            lines = [line[5:].strip() for line in body.splitlines() if line.startswith("data:")]
            replies = [json.loads(line) for line in lines if line]
            return next(r for r in replies if r.get("id") == message["id"])
        return json.loads(body)

    def request(self, method: str, params: dict) -> dict:
        self.next_id += 1
        return self.post({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})

    def open(self) -> "Raw":
        self.request(
            "initialize",
            {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "metrics-test", "version": "1"}},
        )
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self


def test_metrics_parse_and_count_allowed_and_denied_calls(tmp_path):
    with gateway(tmp_path) as url:
        before = metrics(tmp_path)
        assert value(before, "toolgate_build_info") == 1
        assert value(before, "toolgate_policy_info", grant=GRANT) == 1
        assert value(before, "toolgate_tool_calls_total", grant=GRANT) == 0
        raw = Raw(url).open()
        assert "echo" in [t["name"] for t in raw.request("tools/list", {})["result"]["tools"]]
        for _ in range(3):
            echoed = raw.request("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
            assert echoed["result"]["content"][0]["text"] == "Echo: hi"
        denied = raw.request("tools/call", {"name": "get-sum", "arguments": {"a": 1, "b": 2}})
        assert denied["result"]["isError"] is True
        after = metrics(tmp_path)
        allowed = dict(grant=GRANT, tool="echo", decision="allow", rule="default")
        assert value(after, "toolgate_tool_calls_total", **allowed) == 3
        refused = dict(grant=GRANT, tool="get-sum", decision="deny", rule="tools.get-sum")
        assert value(after, "toolgate_tool_calls_total", **refused) == 1
        assert value(after, "toolgate_policy_evaluation_duration_seconds_count") == 4
        assert value(after, "toolgate_tool_call_outcomes_total", outcome="ran") == 3
        upstream = dict(mcp_method_name="tools/call", gen_ai_tool_name="echo")
        assert value(after, "mcp_client_operation_duration_seconds_count", **upstream) == 3
        assert value(after, "toolgate_sessions_open") >= 1
        assert value(after, "toolgate_sessions_opened_total") >= 1
        assert value(after, "toolgate_http_refusals_total", reason="auth") == 0
        stranger = http.client.HTTPConnection(raw.host, timeout=10)
        stranger.request("POST", raw.path, "{}", {"Authorization": "Bearer not-a-grant", "Content-Type": "application/json"})
        assert stranger.getresponse().status == 401
        refused = metrics(tmp_path)
        assert value(refused, "toolgate_http_refusals_total", reason="auth") == 1
        assert "sums are off" not in json.dumps([s.labels for s in after]), "a reason is never a label"


def test_metrics_false_counts_no_call_and_changes_no_decision(tmp_path):
    with gateway(tmp_path, metrics=False) as url:
        raw = Raw(url).open()
        raw.request("tools/list", {})
        echoed = raw.request("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
        assert echoed["result"]["content"][0]["text"] == "Echo: hi"
        denied = raw.request("tools/call", {"name": "get-sum", "arguments": {"a": 1, "b": 2}})
        assert denied["result"]["isError"] is True
        after = metrics(tmp_path)
        assert value(after, "toolgate_build_info") == 1, "the process's own series stay"
        assert value(after, "toolgate_sessions_opened_total") >= 1
        assert value(after, "toolgate_tool_calls_total") == 0
        assert value(after, "toolgate_policy_evaluation_duration_seconds_count") == 0


def test_metrics_need_the_admin_token_unless_public(tmp_path):
    with gateway(tmp_path):
        admin = admin_url(tmp_path)
        assert scrape(f"{admin}/metrics", token=None)[0] == 401
        assert scrape(f"{admin}/metrics", token="not-the-admin-token")[0] == 401
        assert scrape(f"{admin}/metrics", token=TOKEN)[0] == 401, "a grant's token is not the admin's"
        assert scrape(f"{admin}/metrics")[0] == 200
    public = tmp_path / "public"
    public.mkdir()
    with gateway(public, metrics_public=True):
        admin = admin_url(public)
        status, _, text = scrape(f"{admin}/metrics", token=None)
        assert status == 200
        assert value(samples(text), "toolgate_build_info") == 1
        assert scrape(f"{admin}/status", token=None)[0] == 401, "only /metrics is made public"


def test_ten_thousand_unknown_tools_leave_the_series_bounded(tmp_path):
    with gateway(tmp_path) as url:
        raw = Raw(url).open()
        raw.request("tools/list", {})  # the catalogue: what is not in it is an unknown tool
        raw.request("tools/call", {"name": "echo", "arguments": {"message": "warm"}})
        series_before = len(series(scrape(f"{admin_url(tmp_path)}/metrics")[2]))
        for i in range(10_000):
            refused = raw.request("tools/call", {"name": f"no_such_tool_{i}", "arguments": {}})
            assert refused["result"]["isError"] is True
        text = scrape(f"{admin_url(tmp_path)}/metrics")[2]
        after = samples(text)
        unknown = dict(grant=GRANT, tool="unknown_tool", decision="deny", rule="unknown_tool")
        assert value(after, "toolgate_tool_calls_total", **unknown) == 10_000
        assert "no_such_tool_" not in text
        # A few new series (the unknown_tool counter, the refusals' server time under
        # unknown_tool), never one per name.
        assert len(series(text)) <= series_before + 5, (series_before, len(series(text)))


def test_run_metrics_listen_serves_parseable_metrics(tmp_path):
    import anyio

    policy = write_policy(tmp_path, POLICY)
    port = free_port()
    cmd = [toolgate_bin(), "run", "--policy", str(policy), "--grant", GRANT, "--metrics-listen", f"127.0.0.1:{port}", "--", *everything_cmd()]

    async def calls() -> list:
        async with connect(cmd) as session:
            echoed = await session.call_tool("echo", {"message": "over stdio"})
            assert echoed.content[0].text == "Echo: over stdio"
            denied = await session.call_tool("get-sum", {"a": 1, "b": 2})
            assert denied.is_error
            status, content_type, text = await anyio.to_thread.run_sync(scrape, f"http://127.0.0.1:{port}/metrics", None)
            assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
            return samples(text)

    found = anyio.run(calls)
    assert value(found, "toolgate_tool_calls_total", grant=GRANT, tool="echo", decision="allow") == 1
    assert value(found, "toolgate_tool_calls_total", grant=GRANT, tool="get-sum", decision="deny") == 1
    assert value(found, "toolgate_tool_call_outcomes_total", outcome="ran") == 1
    assert value(found, "toolgate_policy_info", grant=GRANT) == 1
    assert value(found, "toolgate_build_info") == 1


def test_metrics_and_the_decision_log_both_see_every_call(tmp_path):
    import time

    with gateway(tmp_path, decision_log="decisions.jsonl") as url:
        raw = Raw(url).open()
        raw.request("tools/list", {})
        raw.request("tools/call", {"name": "echo", "arguments": {"message": "both"}})
        raw.request("tools/call", {"name": "get-sum", "arguments": {"a": 1, "b": 2}})
        log = tmp_path / "decisions.jsonl"
        deadline = time.monotonic() + 10
        while True:
            lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            if len(lines) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        decisions = [(e["tool"], e["decision"]["verdict"]) for e in lines if e["event"] == "decision"]
        assert decisions == [("echo", "allow"), ("get-sum", "deny")], lines
        assert [e["outcome"] for e in lines if e["event"] == "outcome"] == ["ran"]
        found = metrics(tmp_path)
        assert value(found, "toolgate_tool_calls_total", grant=GRANT, tool="echo", decision="allow") == 1
        assert value(found, "toolgate_tool_calls_total", grant=GRANT, tool="get-sum", decision="deny") == 1
        assert value(found, "toolgate_decision_log_written_total") == 3
        assert value(found, "toolgate_decision_log_dropped_total") == 0
