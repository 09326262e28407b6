//! The approvers' web page on the admin listener: `/approvals`, server-rendered HTML with a
//! little inline JavaScript and no build chain. The routes are listed in `admin.rs`.
//!
//! - **Login.** `POST /approvals/login` with an approver's token (`[[approvers]]`) creates a
//!   page session: a random id (32 bytes from the OS) in an `HttpOnly; SameSite=Strict` cookie
//!   scoped to `/approvals`, mapped server-side to the approver and a CSRF token of its own.
//!   The token itself is never stored in the browser. Sessions end after [`SESSION_TTL`], on
//!   logout, or when the gateway stops (they live in memory only).
//! - **Live.** The page listens to `GET /approvals/events` (cookie-authenticated) with an
//!   `EventSource`: the approvals event stream of `approval_events.rs`, which the registry's
//!   change feed pushes, so a request shows the moment it is made and nothing is asked while
//!   nothing happens. The stream ends with the session; the browser's reconnect is then
//!   refused (401), and one `GET /approvals/poll` (the same state as one JSON answer) tells
//!   the page to go to the login. When the stream is refused otherwise (503: too many open),
//!   the page shows that poll's answer and tries the stream again after 5 s. The countdowns
//!   run in the page, against the gateway's clock (`now_ms`).
//! - **Every POST** (login, logout, approve, deny) must come from the page itself: an `Origin`
//!   other than the listener's own (`scheme://Host`) or a `Sec-Fetch-Site` other than
//!   `same-origin` is refused with 403. Logout, approve and deny also carry the session's CSRF
//!   token (form field `csrf` or header `X-CSRF-Token`), compared in constant time.
//! - **Deciding.** `POST /approvals/{id}/approve|deny` (deny with a `reason`) decides as the
//!   session's approver through the channel `page`, only for the grants it names (403).
//!   A form post is answered with a redirect to the page; a `fetch` asking for JSON gets JSON.
//!
//! Every dynamic value in the HTML goes through [`escape`]; the script writes only with
//! `textContent` and DOM nodes, and runs under a nonce'd Content-Security-Policy.

use super::approval_events::{self, RECENT};
use super::error::GatewayError;
use super::gateway::{Approver, Gateway};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name.
const COOKIE: &str = "toolgate_approvals";
/// Over TLS the cookie is `__Host-` prefixed (so Secure, Path=/ and no Domain): a sibling
/// host cannot plant (toss) a session of its own choosing.
const HOST_COOKIE: &str = "__Host-toolgate_approvals";

/// The cookie's name and path: `__Host-` over TLS.
fn cookie_name_and_path(tls: bool) -> (&'static str, &'static str) {
    if tls {
        (HOST_COOKIE, "/")
    } else {
        (COOKIE, "/approvals")
    }
}
/// How long a page session lasts after login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The most page sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 1024;
/// The most of a form body read.
const MAX_FORM: usize = 16 << 10;

/// One logged-in browser.
struct PageSession {
    /// Index into `gateway.approvers`.
    approver: usize,
    csrf: String,
    expires: Instant,
}

/// The page's state: the gateway, and the sessions keyed by the sha256 of their id.
pub(crate) struct Page {
    gateway: Arc<Gateway>,
    sessions: Mutex<HashMap<[u8; 32], PageSession>>,
    /// The admin listener speaks TLS: the cookie is `Secure` and the origin `https`.
    tls: bool,
}

impl Page {
    pub(crate) fn new(gateway: Arc<Gateway>, tls: bool) -> Self {
        Self {
            gateway,
            sessions: Mutex::new(HashMap::new()),
            tls,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], PageSession>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The approver and CSRF token of the request's session cookie, if it is live.
    fn session(&self, headers: &HeaderMap) -> Option<(&Approver, String)> {
        let sid = cookie(headers, cookie_name_and_path(self.tls).0)?;
        let key: [u8; 32] = Sha256::digest(sid.as_bytes()).into();
        let mut sessions = self.lock();
        let session = sessions.get(&key)?;
        if session.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        let approver = self.gateway.approvers.get(session.approver)?;
        Some((approver, session.csrf.clone()))
    }

    /// A new session for approver `index`; its id (for the cookie).
    fn open(&self, index: usize) -> Result<String, GatewayError> {
        let (sid, csrf) = (random_hex()?, random_hex()?);
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k);
            oldest.map(|k| sessions.remove(&k));
        }
        let key: [u8; 32] = Sha256::digest(sid.as_bytes()).into();
        let session = PageSession {
            approver: index,
            csrf,
            expires: now + SESSION_TTL,
        };
        sessions.insert(key, session);
        Ok(sid)
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(sid) = cookie(headers, cookie_name_and_path(self.tls).0) {
            let key: [u8; 32] = Sha256::digest(sid.as_bytes()).into();
            self.lock().remove(&key);
        }
    }

    /// The listener's own origin, as a browser on it would send it.
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        if let Some(site) = headers.get("sec-fetch-site") {
            if site.as_bytes() != b"same-origin" {
                return false;
            }
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true; // not a browser (curl, scripts): the CSRF token still decides
        };
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let scheme = if self.tls { "https" } else { "http" };
        origin.as_bytes() == format!("{scheme}://{host}").as_bytes()
    }
}

/// 32 random bytes as hex.
fn random_hex() -> Result<String, GatewayError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| GatewayError::PageRandom(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// The session cookie's value (`name` as [`cookie_name_and_path`] gives it).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

/// Text made safe for HTML content and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills `{{name}}` slots of a template with escaped values, in one pass (a value that looks
/// like a slot stays text).
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            rest = &rest[start..];
            break;
        };
        let name = &after[..end];
        match values.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => out.push_str(&escape(value)),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// An HTML page with its headers: no caching, no framing, scripts and styles by nonce only.
/// `Referrer-Policy: same-origin`, not `no-referrer`: under `no-referrer` a browser sends
/// `Origin: null` with the page's own form posts, which the origin check would refuse.
fn html(status: StatusCode, template: &str, values: &[(&str, &str)]) -> Response {
    let nonce = random_hex().unwrap_or_default();
    let mut all = values.to_vec();
    all.push(("nonce", &nonce));
    let body = render(template, &all);
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
        (header::CACHE_CONTROL, "no-store".to_owned()),
        (header::X_FRAME_OPTIONS, "DENY".to_owned()),
        (header::REFERRER_POLICY, "same-origin".to_owned()),
        (header::CONTENT_SECURITY_POLICY, csp),
    ];
    for (name, value) in set {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let hidden = if error.is_empty() { "hidden" } else { "" };
    html(status, LOGIN, &[("error", error), ("hidden", hidden)])
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// The form fields of a POST body.
async fn form(request: Request) -> HashMap<String, String> {
    let body = axum::body::to_bytes(request.into_body(), MAX_FORM)
        .await
        .unwrap_or_default();
    url::form_urlencoded::parse(&body).into_owned().collect()
}

/// `GET /approvals`: the login form, or the page of the session's approver.
pub(crate) async fn show(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    match page.session(&headers) {
        None => login_page(StatusCode::OK, ""),
        Some((approver, csrf)) => {
            let grants = approver.grants.join(", ");
            html(
                StatusCode::OK,
                PAGE,
                &[
                    ("approver", &approver.name),
                    ("grants", &grants),
                    ("csrf", &csrf),
                    ("recent", &RECENT.to_string()),
                ],
            )
        }
    }
}

/// `POST /approvals/login`: `token=<approver token>`.
pub(crate) async fn login(State(page): State<Arc<Page>>, request: Request) -> Response {
    if !page.same_origin(request.headers()) {
        return GatewayError::PageCrossSite.into_response();
    }
    let fields = form(request).await;
    let token = fields.get("token").map(|t| t.trim()).unwrap_or_default();
    let Some(index) = page.gateway.approver_index(token.as_bytes()) else {
        let refused = GatewayError::PageLoginFailed;
        return login_page(refused.status(), &refused.to_string());
    };
    let sid = match page.open(index) {
        Ok(sid) => sid,
        Err(refused) => return refused.into_response(),
    };
    let secure = if page.tls { "; Secure" } else { "" };
    let (name, path) = cookie_name_and_path(page.tls);
    let cookie = format!(
        "{name}={sid}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut response = redirect("/approvals");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The approver of a state-changing POST, after the origin, session and CSRF checks.
fn authorized_post<'a>(
    page: &'a Page,
    headers: &HeaderMap,
    fields: &HashMap<String, String>,
) -> Result<&'a Approver, GatewayError> {
    if !page.same_origin(headers) {
        return Err(GatewayError::PageCrossSite);
    }
    let (approver, csrf) = page.session(headers).ok_or(GatewayError::PageNoSession)?;
    let presented = headers
        .get("x-csrf-token")
        .map(|v| v.as_bytes())
        .or_else(|| fields.get("csrf").map(|v| v.as_bytes()))
        .unwrap_or_default();
    if !bool::from(csrf.as_bytes().ct_eq(presented)) {
        return Err(GatewayError::PageCsrf);
    }
    Ok(approver)
}

/// `POST /approvals/logout` (with the CSRF token).
pub(crate) async fn logout(State(page): State<Arc<Page>>, request: Request) -> Response {
    let headers = request.headers().clone();
    let fields = form(request).await;
    if let Err(refused) = authorized_post(&page, &headers, &fields) {
        return refused.into_response();
    }
    page.close(&headers);
    let mut response = redirect("/approvals");
    let (name, path) = cookie_name_and_path(page.tls);
    let secure = if page.tls { "; Secure" } else { "" };
    let gone = format!("{name}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    if let Ok(value) = HeaderValue::from_str(&gone) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /approvals/events`: the approvals event stream of the session's approver; it ends
/// when the session does (logout, or [`SESSION_TTL`]).
pub(crate) async fn events(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    let Some((approver, _)) = page.session(&headers) else {
        return GatewayError::PageNoSession.into_response();
    };
    let watching = page.clone();
    let alive = move || watching.session(&headers).is_some();
    approval_events::stream(&page.gateway, approver, alive)
}

/// `GET /approvals/poll`: the approver's pending requests and recent decisions.
pub(crate) async fn poll(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    let Some((approver, _)) = page.session(&headers) else {
        return GatewayError::PageNoSession.into_response();
    };
    let (pending, decided): (Vec<_>, Vec<_>) = page
        .gateway
        .approvals
        .list()
        .into_iter()
        .filter(|r| approver.grants.contains(&r.grant))
        .partition(|r| r.state == crate::approvals::State::Pending);
    let recent: Vec<_> = decided.into_iter().take(RECENT).collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut response = Json(json!({
        "ok": true, "approver": approver.name, "now_ms": now_ms,
        "pending": pending, "recent": recent,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /approvals/{id}/approve`.
pub(crate) async fn approve(
    State(page): State<Arc<Page>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    decide(&page, &id, request, false).await
}

/// `POST /approvals/{id}/deny` with a `reason`.
pub(crate) async fn deny(
    State(page): State<Arc<Page>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    decide(&page, &id, request, true).await
}

async fn decide(page: &Page, id: &str, request: Request, deny: bool) -> Response {
    let headers = request.headers().clone();
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let fields = form(request).await;
    let decided = authorized_post(page, &headers, &fields).and_then(|approver| {
        let approvals = &page.gateway.approvals;
        let found = approvals
            .get(id)
            .ok_or_else(|| GatewayError::ApprovalNotFound(id.to_owned()))?;
        if !approver.grants.contains(&found.grant) {
            return Err(GatewayError::ApprovalForbidden {
                approver: approver.name.clone(),
                grant: found.grant,
            });
        }
        let decided = if deny {
            let reason = fields.get("reason").map(|r| r.trim()).unwrap_or_default();
            if reason.is_empty() {
                return Err(GatewayError::PageNeedsReason);
            }
            approvals.deny(id, &approver.name, "page", reason)
        } else {
            approvals.approve(id, &approver.name, "page")
        };
        decided.map_err(|e| GatewayError::ApprovalConflict(e.to_string()))
    });
    match decided {
        Ok(request) if wants_json => Json(json!({"ok": true, "request": request})).into_response(),
        Ok(_) => redirect("/approvals"),
        Err(refused) => refused.into_response(),
    }
}

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>toolgate approvals: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{{nonce}}">
body{font:15px/1.4 system-ui,sans-serif;background:#f4f5f7;color:#1d2330;display:grid;place-items:center;min-height:90vh;margin:0}
form{background:#fff;padding:2em;border-radius:10px;box-shadow:0 2px 12px #0002;width:22em}
h1{font-size:1.3em;margin-top:0}label{display:block;margin-bottom:.4em}
input{width:100%;box-sizing:border-box;padding:.6em;font:inherit;border:1px solid #bbc;border-radius:6px}
button{margin-top:1em;padding:.6em 1.4em;font:inherit;border:0;border-radius:6px;background:#2456c7;color:#fff;cursor:pointer}
.error{background:#fde8e8;color:#9b1c1c;padding:.6em;border-radius:6px}
</style></head><body>
<form method="post" action="/approvals/login" autocomplete="off">
<h1>toolgate approvals</h1>
<p id="error" class="error" role="alert" {{hidden}}>{{error}}</p>
<label for="token">Approver token</label>
<input id="token" name="token" type="password" required autofocus>
<button id="login" type="submit">Log in</button>
</form></body></html>
"#;

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>toolgate approvals</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{{csrf}}">
<style nonce="{{nonce}}">
body{font:15px/1.4 system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
header{background:#1d2330;color:#fff;padding:.8em 1.5em;display:flex;gap:1em;align-items:center}
header h1{font-size:1.2em;margin:0;flex:1}header form{margin:0}
main{max-width:60em;margin:1.5em auto;padding:0 1em}
h2{font-size:1.1em;border-bottom:2px solid #d5d8e0;padding-bottom:.3em}
.card{background:#fff;border-left:6px solid #e0a100;border-radius:8px;box-shadow:0 1px 6px #0001;padding:1em 1.2em;margin:.8em 0}
.card h3{margin:0 0 .4em;font-size:1.15em}.meta{color:#555;margin:.2em 0}
.countdown{float:right;font-weight:bold;font-variant-numeric:tabular-nums;color:#9b5c00}
pre{background:#f0f2f5;padding:.6em;border-radius:6px;overflow:auto;max-height:14em}
.actions{display:flex;gap:.6em;align-items:center;flex-wrap:wrap}.actions form{margin:0;display:flex;gap:.4em}
button{padding:.5em 1.2em;font:inherit;border:0;border-radius:6px;cursor:pointer;color:#fff}
.approve{background:#1f8a4c}.deny{background:#c0392b}.logout{background:#555}
input[type=text]{padding:.45em;font:inherit;border:1px solid #bbc;border-radius:6px;width:18em}
.empty{color:#777;font-style:italic}#status{min-height:1.4em;color:#9b1c1c}
table{width:100%;border-collapse:collapse;background:#fff}td,th{text-align:left;padding:.4em .6em;border-bottom:1px solid #e3e5ea}
.s-approved,.s-consumed{color:#1f8a4c;font-weight:bold}.s-denied{color:#c0392b;font-weight:bold}.s-expired,.s-cancelled{color:#777;font-weight:bold}
</style></head><body>
<header><h1>toolgate approvals</h1>
<span>Signed in as <strong id="approver">{{approver}}</strong> (grants: {{grants}})</span>
<form method="post" action="/approvals/logout"><input type="hidden" name="csrf" value="{{csrf}}">
<button class="logout" type="submit">Log out</button></form></header>
<main>
<p id="status" role="status"></p>
<h2>Pending <span id="pending-count">0</span></h2>
<div id="pending"><p class="empty">Nothing is waiting for you.</p></div>
<noscript><p>This page needs JavaScript to list requests live.</p></noscript>
<h2>Recent decisions</h2>
<table><thead><tr><th>When</th><th>Tool</th><th>Grant</th><th>State</th><th>By</th><th>Note</th></tr></thead>
<tbody id="recent"></tbody></table>
</main>
<script nonce="{{nonce}}">
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const rows = new Map();
let skew = 0;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function say(text) { document.getElementById("status").textContent = text; }
function decisionForm(r, kind) {
  const f = el("form");
  f.method = "post";
  f.action = "/approvals/" + encodeURIComponent(r.id) + "/" + kind;
  const token = el("input"); token.type = "hidden"; token.name = "csrf"; token.value = csrf;
  f.appendChild(token);
  if (kind === "deny") {
    const reason = el("input"); reason.type = "text"; reason.name = "reason";
    reason.placeholder = "reason (required to deny)"; reason.required = true;
    f.appendChild(reason);
  }
  const b = el("button", kind, kind === "approve" ? "Approve" : "Deny");
  b.type = "submit";
  f.appendChild(b);
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    b.disabled = true;
    try {
      const res = await fetch(f.action, {method: "POST", credentials: "same-origin",
        headers: {"Accept": "application/json", "X-CSRF-Token": csrf},
        body: new URLSearchParams(new FormData(f))});
      const body = await res.json().catch(() => ({}));
      say(res.ok ? "" : (body.error || ("HTTP " + res.status)));
    } finally { b.disabled = false; }
  });
  return f;
}
function card(r) {
  const c = el("div", "card");
  c.dataset.id = r.id;
  c.dataset.expires = r.expires_ms;
  const cd = el("span", "countdown"); c.appendChild(cd);
  c.appendChild(el("h3", "tool", r.tool));
  const meta = (label, value) => { const p = el("p", "meta"); p.appendChild(el("strong", "", label + ": ")); p.appendChild(el("span", "", value)); c.appendChild(p); };
  meta("Grant", r.grant); meta("Rule", r.rule); meta("Reason", r.reason); meta("Request", r.id);
  c.appendChild(el("pre", "args", JSON.stringify(r.arguments, null, 2)));
  const actions = el("div", "actions");
  actions.appendChild(decisionForm(r, "approve"));
  actions.appendChild(decisionForm(r, "deny"));
  c.appendChild(actions);
  return c;
}
function tick() {
  const now = Date.now() + skew;
  for (const c of rows.values()) {
    const left = Math.max(0, Math.round((Number(c.dataset.expires) - now) / 1000));
    c.querySelector(".countdown").textContent = left > 0 ? ("expires in " + Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0")) : "expired";
  }
}
function counts() {
  const empty = document.getElementById("pending").querySelector(".empty");
  if (empty) empty.hidden = rows.size > 0;
  document.getElementById("pending-count").textContent = "(" + rows.size + ")";
  document.title = (rows.size ? "(" + rows.size + ") " : "") + "toolgate approvals";
}
function add(r) {
  if (!rows.has(r.id)) { const c = card(r); rows.set(r.id, c); document.getElementById("pending").appendChild(c); }
}
function remove(id) { const c = rows.get(id); if (c) { c.remove(); rows.delete(id); } }
let recent = [];
function showRecent() {
  document.getElementById("recent").replaceChildren(...recent.map((r) => {
    const tr = el("tr");
    tr.appendChild(el("td", "", new Date(r.created_ms).toLocaleTimeString()));
    tr.appendChild(el("td", "", r.tool)); tr.appendChild(el("td", "", r.grant));
    tr.appendChild(el("td", "s-" + r.state, r.state));
    tr.appendChild(el("td", "", r.decided_by ? r.decided_by + " (" + r.channel + ")" : ""));
    tr.appendChild(el("td", "", r.note || ""));
    return tr;
  }));
}
// A whole state: the stream's `pending` event, or /approvals/poll's answer.
function show(data) {
  skew = data.now_ms - Date.now();
  const ids = new Set(data.pending.map((r) => r.id));
  for (const id of [...rows.keys()]) if (!ids.has(id)) remove(id);
  for (const r of data.pending) add(r);
  recent = data.recent;
  showRecent(); counts(); tick();
}
function decided(r) {
  remove(r.id);
  recent = [r, ...recent.filter((x) => x.id !== r.id)];
  recent.sort((a, b) => b.created_ms - a.created_ms);
  recent.length = Math.min(recent.length, {{recent}});
  showRecent(); counts();
}
function watch() {
  const events = new EventSource("/approvals/events");
  events.addEventListener("pending", (e) => { say(""); show(JSON.parse(e.data)); });
  events.addEventListener("request", (e) => { add(JSON.parse(e.data)); counts(); tick(); });
  events.addEventListener("decided", (e) => decided(JSON.parse(e.data)));
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) fallback();
    else say("the gateway is unreachable; reconnecting");
  };
}
// The stream was refused: one poll says why (401: the session ended) and shows the state.
async function fallback() {
  try {
    const res = await fetch("/approvals/poll", {credentials: "same-origin", cache: "no-store"});
    if (res.status === 401) { location.reload(); return; }
    if (res.ok) { show(await res.json()); say("live updates paused; retrying"); }
  } catch (e) { say("the gateway is unreachable; retrying"); }
  setTimeout(watch, 5000);
}
watch();
setInterval(tick, 250);
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_html_and_attributes() {
        assert_eq!(
            escape(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        let page = render(
            LOGIN,
            &[("error", "<script>"), ("hidden", ""), ("nonce", "n")],
        );
        assert!(page.contains("&lt;script&gt;") && !page.contains("{{"));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_static("a=1; toolgate_approvals=abc; b=2");
        headers.insert(header::COOKIE, value);
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, HOST_COOKIE), None);
        assert_eq!(
            cookie_name_and_path(true),
            ("__Host-toolgate_approvals", "/")
        );
    }
}
