//! The admin listener: health, status and reload, on its own address with its own token.
//!
//! `GET /healthz` needs no token (for load balancers and supervisors). `GET /status` and
//! `POST /reload` need `Authorization: Bearer <admin token>`, checked against
//! `admin_token_sha256` in constant time; without that key in the config they are shut.
//! A reload reads every grant's policy and the listeners' `[tls]` certificate again.

use super::config::parse_sha256;
use super::error::GatewayError;
use super::gateway::Gateway;
use super::tls::ListenerCert;
use crate::reload::Reloadable;
use axum::extract::{Request, State};
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
}

/// The admin listener's routes, sharing the gateway's state.
pub(crate) fn router(
    gateway: Arc<Gateway>,
    cert: Option<Arc<ListenerCert>>,
    token_sha256: Option<&str>,
) -> anyhow::Result<Router> {
    let admin = Arc::new(Admin {
        gateway,
        cert,
        token_sha256: token_sha256.map(parse_sha256).transpose()?,
    });
    Ok(Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .with_state(admin))
}

fn authorized(admin: &Admin, request: &Request) -> Result<(), GatewayError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(|token| -> [u8; 32] { Sha256::digest(token.trim_ascii()).into() });
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
        "refused_auth": stats.refused_auth.load(Ordering::Relaxed),
        "refused_host": stats.refused_host.load(Ordering::Relaxed),
        "tls": admin.cert.as_ref().map(|cert| cert.status()),
    }))
    .into_response()
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
