//! The admin listener: health, status and reload, on its own address with its own token.
//!
//! `GET /healthz` needs no token (for load balancers and supervisors). `GET /status`,
//! `GET /metrics` (Prometheus text; no token with `metrics_public = true`) and
//! `POST /reload` need `Authorization: Bearer <admin token>`, checked against
//! `admin_token_sha256` in constant time; without that key in the config they are shut.
//! `/approvals/api` (list, `/{id}`, `/{id}/approve`, `/{id}/deny` with `{"reason"}`) needs
//! an approver's token (`[[approvers]]`), and shows and decides only the grants it names;
//! `/approvals/api/events` is the same as server-sent events (`approval_events.rs`).
//! A reload reads every grant's policy and the listeners' `[tls]` certificate again.
//!
//! The approvers' web page (`approvals_page.rs`): `GET /approvals` (login form or the page),
//! `POST /approvals/login` and `/approvals/logout`, `GET /approvals/events` (the page's live
//! feed) and `GET /approvals/poll` (the same as one JSON answer),
//! `POST /approvals/{id}/approve` and `/approvals/{id}/deny`; a session cookie, a CSRF token
//! and an Origin check instead of a bearer token.

use super::approval_events;
use super::approvals_page::{self, Page};
use super::config::parse_sha256;
use super::error::GatewayError;
use super::gateway::{Approver, Gateway};
use super::tls::ListenerCert;
use crate::approvals::Reuse;
use crate::reload::Reloadable;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use subtle::ConstantTimeEq;

struct Admin {
    gateway: Arc<Gateway>,
    /// The listeners' certificate, reloaded with the policies.
    cert: Option<Arc<ListenerCert>>,
    token_sha256: Option<[u8; 32]>,
    /// `/metrics` without the token.
    metrics_public: bool,
}

/// The admin listener's routes, sharing the gateway's state.
pub(crate) fn router(
    gateway: Arc<Gateway>,
    cert: Option<Arc<ListenerCert>>,
    token_sha256: Option<&str>,
    metrics_public: bool,
) -> anyhow::Result<Router> {
    let page = Arc::new(Page::new(gateway.clone(), cert.is_some()));
    let admin = Arc::new(Admin {
        gateway,
        cert,
        token_sha256: token_sha256.map(parse_sha256).transpose()?,
        metrics_public,
    });
    Ok(Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/reload", post(reload))
        .route("/approvals/api", get(approvals_list))
        .route("/approvals/api/events", get(approvals_events))
        .route("/approvals/api/{id}", get(approvals_show))
        .route("/approvals/api/{id}/approve", post(approvals_approve))
        .route("/approvals/api/{id}/deny", post(approvals_deny))
        .with_state(admin)
        .merge(
            Router::new()
                .route("/approvals", get(approvals_page::show))
                .route("/approvals/login", post(approvals_page::login))
                .route("/approvals/logout", post(approvals_page::logout))
                .route("/approvals/events", get(approvals_page::events))
                .route("/approvals/poll", get(approvals_page::poll))
                .route("/approvals/{id}/approve", post(approvals_page::approve))
                .route("/approvals/{id}/deny", post(approvals_page::deny))
                .with_state(page),
        ))
}

/// The approver whose token the request carries (compared in constant time with every one).
fn approver<'a>(admin: &'a Admin, request: &Request) -> Result<&'a Approver, GatewayError> {
    let gw = &admin.gateway;
    bearer(request)
        .and_then(|token| gw.approver_index(token))
        .map(|index| &gw.approvers[index])
        .ok_or(GatewayError::ApproverUnauthorized)
}

/// The bearer token of the request, if it carries one.
fn bearer(request: &Request) -> Option<&[u8]> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
}

/// The request `id`, if `approver` may see and decide it.
fn request_for(
    admin: &Admin,
    approver: &Approver,
    id: &str,
) -> Result<crate::approvals::Request, GatewayError> {
    let request = admin
        .gateway
        .approvals
        .get(id)
        .ok_or_else(|| GatewayError::ApprovalNotFound(id.to_owned()))?;
    if !approver.grants.contains(&request.grant) {
        return Err(GatewayError::ApprovalForbidden {
            approver: approver.name.clone(),
            grant: request.grant,
        });
    }
    Ok(request)
}

async fn approvals_list(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    let approver = match approver(&admin, &request) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    let requests: Vec<_> = admin
        .gateway
        .approvals
        .list()
        .into_iter()
        .filter(|r| approver.grants.contains(&r.grant))
        .collect();
    Json(json!({"ok": true, "requests": requests})).into_response()
}

async fn approvals_events(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    match approver(&admin, &request) {
        Ok(approver) => approval_events::stream(&admin.gateway, approver, || true),
        Err(refused) => refused.into_response(),
    }
}

async fn approvals_show(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    match approver(&admin, &request).and_then(|a| request_for(&admin, a, &id)) {
        Ok(found) => Json(json!({"ok": true, "request": found})).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn approvals_approve(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let approver = match approver(&admin, &request) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    // `{"reuse": "1h"}`: the approver chooses how far the approval reaches.
    let reuse = body_field(request, "reuse")
        .await
        .map(|r| r.parse::<Reuse>());
    let reuse = match reuse.transpose() {
        Ok(reuse) => reuse,
        Err(e) => return GatewayError::ApprovalBadReuse(e).into_response(),
    };
    decide_as(&admin, &id, approver, Decision::Approve(reuse))
        .unwrap_or_else(IntoResponse::into_response)
}

/// The string member `name` of a decision's JSON body (at most 64 KiB), if it has one.
async fn body_field(request: Request, name: &str) -> Option<String> {
    let body = axum::body::to_bytes(request.into_body(), 64 << 10)
        .await
        .ok()?;
    let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
    body[name].as_str().map(str::to_owned)
}

/// What an approver decides.
enum Decision<'a> {
    Approve(Option<Reuse>),
    Deny(&'a str),
}

async fn approvals_deny(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let approver = match approver(&admin, &request) {
        Ok(a) => a,
        Err(refused) => return refused.into_response(),
    };
    let reason = body_field(request, "reason")
        .await
        .filter(|r| !r.trim().is_empty());
    let Some(reason) = reason else {
        return GatewayError::ApprovalNeedsReason.into_response();
    };
    decide_as(&admin, &id, approver, Decision::Deny(&reason))
        .unwrap_or_else(IntoResponse::into_response)
}

/// Records `approver`'s decision on `id` (idempotent: the same decision again changes
/// nothing; the other one is refused).
fn decide_as(
    admin: &Admin,
    id: &str,
    approver: &Approver,
    decision: Decision<'_>,
) -> Result<Response, GatewayError> {
    request_for(admin, approver, id)?;
    let approvals = &admin.gateway.approvals;
    let decided = match decision {
        Decision::Approve(None) => approvals.approve(id, &approver.name, "http"),
        Decision::Approve(Some(reuse)) => {
            approvals.approve_reusing(id, &approver.name, "http", reuse)
        }
        Decision::Deny(reason) => approvals.deny(id, &approver.name, "http", reason),
    };
    let request = decided.map_err(|e| GatewayError::ApprovalConflict(e.to_string()))?;
    Ok(Json(json!({"ok": true, "request": request})).into_response())
}

fn authorized(admin: &Admin, request: &Request) -> Result<(), GatewayError> {
    let presented =
        bearer(request).map(|token| -> [u8; 32] { Sha256::digest(token.trim_ascii()).into() });
    match (admin.token_sha256, presented) {
        (Some(expected), Some(presented)) if bool::from(expected.ct_eq(&presented)) => Ok(()),
        (None, _) => Err(GatewayError::AdminOff),
        _ => Err(GatewayError::AdminUnauthorized),
    }
}

async fn status(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    if let Err(refused) = authorized(&admin, &request) {
        return refused.into_response();
    }
    let gw = &admin.gateway;
    let grants: Vec<_> = gw
        .grants
        .all()
        .iter()
        .map(|g| json!({"name": g.name, "policy": g.status()}))
        .collect();
    let stats = &gw.stats;
    Json(json!({
        "grants": grants,
        "sessions": gw.session_count(),
        "sessions_opened": stats.sessions_opened.load(Ordering::Relaxed),
        "sessions_expired": stats.sessions_expired.load(Ordering::Relaxed),
        "sessions_deleted": stats.sessions_deleted.load(Ordering::Relaxed),
        "sessions_adopted": stats.sessions_adopted.load(Ordering::Relaxed),
        "refused_auth": stats.refused_auth.load(Ordering::Relaxed),
        "refused_host": stats.refused_host.load(Ordering::Relaxed),
        "tls": admin.cert.as_ref().map(|cert| cert.status()),
        "counters": gw.grants.all().first().map(|g| g.counters.status()),
        // With `[[upstreams]]`: each upstream's sessions by state and its last failure.
        "upstreams": gw.upstreams.snapshot(),
        "decision_log": gw.decision_log.as_ref().map(|log| log.stats()),
    }))
    .into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    if !admin.metrics_public {
        if let Err(refused) = authorized(&admin, &request) {
            return refused.into_response();
        }
    }
    let text = admin.gateway.metrics.encode();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// What `/metrics` reads at each scrape: the counts `/status` shows.
pub(crate) fn snapshot(gw: &Gateway) -> crate::metrics::Snapshot {
    let stats = &gw.stats;
    let policies = gw.grants.all().iter().filter_map(|g| {
        g.status().map(|s| crate::metrics::PolicyState {
            grant: g.name.clone(),
            digest: s.digest,
            reloads: s.reloads,
            failed_reloads: s.failed_reloads,
        })
    });
    let counters = gw.grants.all().first().map(|g| g.counters.status());
    crate::metrics::Snapshot {
        sessions_open: Some(gw.session_count() as u64),
        sessions_opened: Some(stats.sessions_opened.load(Ordering::Relaxed)),
        refusals: super::error::refusals::counts(),
        policies: policies.collect(),
        decision_log: gw.decision_log.as_ref().map(|log| log.stats()),
        counter_store_degraded: counters.map(|c| c["state"] == "degraded"),
    }
}

async fn reload(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    if let Err(refused) = authorized(&admin, &request) {
        return refused.into_response();
    }
    let lives = admin.gateway.grants.live_policies();
    let cert = admin.cert.clone();
    let results = tokio::task::spawn_blocking(move || {
        let mut results: Vec<_> = lives
            .iter()
            .map(|live| {
                let status = live.status();
                match live.reload("admin") {
                    Ok(changed) => json!({"policy": status.policy, "ok": true, "changed": changed}),
                    Err(error) => {
                        json!({"policy": status.policy, "ok": false, "error": error.to_string()})
                    }
                }
            })
            .collect();
        if let Some(cert) = cert {
            results.push(match cert.reload("admin") {
                Ok(changed) => json!({"tls": true, "ok": true, "changed": changed}),
                Err(error) => json!({"tls": true, "ok": false, "error": error.to_string()}),
            });
        }
        results
    })
    .await
    .unwrap_or_default();
    let ok = results.iter().all(|r| r["ok"] == true);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (code, Json(json!({"ok": ok, "results": results}))).into_response()
}
