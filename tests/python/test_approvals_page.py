"""The approvers' web page (`/approvals` on the admin listener of `toolgate serve`) in a real
headless Chromium driven by selenium: log in with an approver's token, watch a held
`session_delete` appear without reloading (pushed on the page's event stream, not polled), approve it, and see the held call complete in the
MCP client. Wrong tokens, cross-site POSTs and POSTs without the CSRF token are refused.
The screenshot goes to the test's folder (and, with TOOLGATE_UPDATE_SCREENSHOT=1, to
docs/approvals-page.png for the README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from conftest import ROOT, sha256_hex, toolgate_bin

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None)
CHROMEDRIVER = "/usr/bin/chromedriver"
selenium = pytest.importorskip("selenium", reason="selenium is not installed (tests/peers/requirements.txt)")
if CHROMIUM is None or not Path(CHROMEDRIVER).exists():
    pytest.skip(
        "chromium or chromedriver is missing: apt-get install -y chromium chromium-driver (scripts/test does)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

GRANT_TOKEN = "tg_page_agent_token"
APPROVER_TOKEN = "tg_page_approver_token"
OTHER_APPROVER = "tg_other_grants_approver"
POLICY = {
    "version": "1",
    "default": "allow",
    "tools": {
        "session_delete": {
            "action": "require_approval",
            "reason": "deleting a session needs a person",
            "approval": {"hold": "30s"},
        }
    },
}


@contextmanager
def serve_with_approver(tmp_path: Path):
    """`toolgate serve` in front of the stand-in, one grant and one approver for it; yields
    (the /mcp URL, the admin base URL)."""
    (tmp_path / "agent.policy.json").write_text(json.dumps(POLICY))
    config = tmp_path / "toolgate.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
        f"[upstream]\ncommand = {json.dumps([toolgate_bin(), 'standin'])}\n"
        f'[[grants]]\nname = "agent"\ntoken_sha256 = "{sha256_hex(GRANT_TOKEN)}"\npolicy = "agent.policy.json"\n'
        f'[[approvers]]\nname = "alice"\ntoken_sha256 = "{sha256_hex(APPROVER_TOKEN)}"\ngrants = ["agent"]\n'
        f'[[grants]]\nname = "other"\ntoken_sha256 = "{sha256_hex("tg_other_token")}"\npolicy = "agent.policy.json"\n'
        f'[[approvers]]\nname = "bob"\ntoken_sha256 = "{sha256_hex(OTHER_APPROVER)}"\ngrants = ["other"]\n'
    )
    log = tmp_path / "toolgate.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([toolgate_bin(), "serve", "--config", str(config)], stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            lines = [l for l in log.read_text(errors="replace").splitlines() if l.startswith("toolgate serve: listening on ")]
            if lines:
                words = lines[0].split()
                yield words[4], words[6].rstrip(")")
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"toolgate serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait()


class Mcp:
    """A raw Streamable HTTP MCP client (JSON or SSE replies)."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx2.Client(timeout=60, headers={"Authorization": f"Bearer {GRANT_TOKEN}"})
        self.session: str | None = None
        self.next_id = 0

    def post(self, message: dict) -> dict | None:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
            headers["MCP-Protocol-Version"] = "2025-06-18"
        response = self.http.post(self.url, json=message, headers=headers)
        assert response.status_code in (200, 202), response.text
        self.session = response.headers.get("mcp-session-id", self.session)
        if "id" not in message:
            return None
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for line in response.text.splitlines():
                if line.startswith("data:") and line[5:].strip():
                    reply = json.loads(line[5:])
                    if reply.get("id") == message["id"]:
                        return reply
            raise AssertionError(f"no reply in {response.text!r}")
        return response.json()

    def request(self, method: str, params: dict) -> dict:
        self.next_id += 1
        return self.post({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})

    def initialize(self) -> None:
        reply = self.request(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "page-test", "version": "1"}},
        )
        assert "result" in reply, reply
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(self, tool: str, arguments: dict) -> dict:
        return self.request("tools/call", {"name": tool, "arguments": arguments})


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver, admin: str, token: str) -> None:
    driver.get(f"{admin}/approvals")
    field = WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "token")))
    field.send_keys(token)
    driver.find_element(By.ID, "login").click()


def test_an_approver_approves_a_held_call_on_the_page(tmp_path, browser):
    with serve_with_approver(tmp_path) as (mcp_url, admin):
        wait = WebDriverWait(browser, 15)

        # A wrong token: the form again, with the error, and no cookie.
        log_in(browser, admin, "not-a-token")
        error = wait.until(EC.visibility_of_element_located((By.ID, "error")))
        assert "not an approver" in error.text
        assert browser.get_cookie("toolgate_approvals") is None
        refused = httpx2.post(f"{admin}/approvals/login", data={"token": "not-a-token"})
        assert refused.status_code == 401 and "<form" in refused.text
        assert httpx2.post(f"{admin}/approvals/login", data={"token": GRANT_TOKEN}).status_code == 401

        # The right token: the page, an HttpOnly SameSite=Strict cookie that is not the token.
        log_in(browser, admin, APPROVER_TOKEN)
        wait.until(EC.text_to_be_present_in_element((By.ID, "approver"), "alice"))
        cookie = browser.get_cookie("toolgate_approvals")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert APPROVER_TOKEN not in cookie["value"]
        browser.execute_script("window.__notReloaded = true")

        # The agent's held call, from another thread.
        mcp = Mcp(mcp_url)
        mcp.initialize()
        created = mcp.call("session_create", {"cli": "codex"})
        doomed = json.loads(created["result"]["content"][0]["text"])["session"]["id"]
        outcome: dict = {}
        started = time.monotonic()
        held = threading.Thread(target=lambda: outcome.update(mcp.call("session_delete", {"sessionId": doomed})))
        held.start()

        # It appears without a reload, with its tool, grant, rule, reason, arguments, countdown.
        card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#pending .card")))
        assert browser.execute_script("return window.__notReloaded === true"), "the page reloaded"
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert not [u for u in fetched if "/approvals/poll" in u], f"the page polled: {fetched}"
        text = card.text
        for expected in ("session_delete", "agent", "deleting a session needs a person", doomed, "expires in"):
            assert expected in text, (expected, text)
        request_id = card.get_attribute("data-id")
        screenshot = tmp_path / "approvals-page.png"
        assert browser.save_screenshot(str(screenshot))
        # The README's picture is refreshed only on request, so a test run leaves the tree clean.
        if os.environ.get("TOOLGATE_UPDATE_SCREENSHOT"):
            shutil.copyfile(screenshot, ROOT / "docs" / "approvals-page.png")

        # Cross-site and token-less POSTs are refused; the request stays pending.
        sid = cookie["value"]
        csrf = browser.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
        approve_url = f"{admin}/approvals/{request_id}/approve"
        with httpx2.Client(cookies={"toolgate_approvals": sid}) as http:
            evil = http.post(approve_url, data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
            assert evil.status_code == 403, evil.text
            cross = http.post(approve_url, data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
            assert cross.status_code == 403, cross.text
            no_csrf = http.post(approve_url, data={})
            assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
            wrong_csrf = http.post(approve_url, data={"csrf": "0" * 64})
            assert wrong_csrf.status_code == 403
            assert http.get(f"{admin}/approvals/poll").json()["pending"][0]["id"] == request_id
            # The page's event stream, with the cookie: it starts with what is pending.
            with http.stream("GET", f"{admin}/approvals/events") as events:
                assert events.status_code == 200
                assert events.headers["content-type"].startswith("text/event-stream")
                lines = events.iter_lines()
                assert next(lines) == "event: pending"
                first = json.loads(next(lines).removeprefix("data: "))
                assert [r["id"] for r in first["pending"]] == [request_id], first
        assert httpx2.get(f"{admin}/approvals/events").status_code == 401  # no session
        assert httpx2.post(approve_url, data={"csrf": csrf}).status_code == 401  # no session
        bearer = httpx2.post(approve_url, data={"csrf": csrf}, headers={"Authorization": f"Bearer {APPROVER_TOKEN}"})
        assert bearer.status_code == 401  # the page takes no bearer token
        # Another grant's approver, logged in (without a browser), may not decide it.
        with httpx2.Client() as bob:
            assert bob.post(f"{admin}/approvals/login", data={"token": OTHER_APPROVER}).status_code == 303
            page = bob.get(f"{admin}/approvals").text
            bob_csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
            assert bob.get(f"{admin}/approvals/poll").json()["pending"] == []
            forbidden = bob.post(approve_url, data={"csrf": bob_csrf})
            assert forbidden.status_code == 403 and "bob" in forbidden.text, forbidden.text
        assert held.is_alive()

        # Approve on the page: the held call completes in the client.
        card.find_element(By.CSS_SELECTOR, "button.approve").click()
        held.join(timeout=20)
        assert not held.is_alive(), "the held call did not complete"
        assert time.monotonic() - started < 25
        result = outcome["result"]
        assert not result.get("isError"), result
        assert json.loads(result["content"][0]["text"]) == {"success": True, "deleted": doomed}

        # The card goes, the decision shows below, still without a reload.
        wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, "#pending .card")))
        wait.until(EC.text_to_be_present_in_element((By.ID, "recent"), "alice (page)"))
        assert browser.execute_script("return window.__notReloaded === true")
        assert browser.save_screenshot(str(tmp_path / "approvals-page-decided.png"))


def test_a_deny_on_the_page_needs_a_reason_and_reaches_the_agent(tmp_path, browser):
    with serve_with_approver(tmp_path) as (mcp_url, admin):
        wait = WebDriverWait(browser, 15)
        log_in(browser, admin, APPROVER_TOKEN)
        wait.until(EC.text_to_be_present_in_element((By.ID, "approver"), "alice"))
        mcp = Mcp(mcp_url)
        mcp.initialize()
        kept = json.loads(mcp.call("session_create", {"cli": "codex"})["result"]["content"][0]["text"])["session"]["id"]
        outcome: dict = {}
        held = threading.Thread(target=lambda: outcome.update(mcp.call("session_delete", {"sessionId": kept})))
        held.start()
        card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#pending .card")))
        card.find_element(By.CSS_SELECTOR, 'input[name="reason"]').send_keys("not <today>")
        card.find_element(By.CSS_SELECTOR, "button.deny").click()
        held.join(timeout=20)
        assert not held.is_alive()
        result = outcome["result"]
        assert result.get("isError") and "not <today>" in result["content"][0]["text"], result
        wait.until(EC.text_to_be_present_in_element((By.ID, "recent"), "not <today>"))
