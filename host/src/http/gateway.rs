//! The gateway's shared state: grants, sessions, limits, the upstream and its connections,
//! and the counts the admin status reports. The `/mcp` handlers (`mcp.rs`) and the admin
//! listener read it; it knows neither.

use super::admission::Admission;
use super::config::{Limits, Upstream};
use super::error::{Failed, GatewayError};
use super::grants::{Grant, Grants, Remembered};
use super::headers::{LAST_EVENT_ID, MCP_METHOD, MCP_NAME, PROTOCOL_VERSION, SESSION_ID};
use super::sessions::{GwSession, Link, Sessions};
use super::upstream::{Pool, Response as UpstreamResponse, SendError};
use crate::session::{Identity, SchemaChecks, Session};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The most read of an upstream reply to a DELETE (which carries no message).
pub(crate) const SMALL_REPLY: usize = 64 * 1024;

/// Approvals event streams open at once, over every approver: half of the admin listener's 64
/// connections, so that watching can never lock out `/status`, `/healthz` and the decisions.
pub(crate) const MAX_APPROVAL_STREAMS: usize = 32;

/// Counts for the admin status.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) sessions_opened: AtomicU64,
    pub(crate) sessions_expired: AtomicU64,
    pub(crate) sessions_deleted: AtomicU64,
    /// Sessions another replica opened, served here since.
    pub(crate) sessions_adopted: AtomicU64,
    pub(crate) refused_auth: AtomicU64,
    pub(crate) refused_host: AtomicU64,
}

/// The gateway's shared state.
pub(crate) struct Gateway {
    pub(crate) grants: Grants,
    pub(crate) upstream: Upstream,
    /// Connections to an HTTP upstream.
    pool: Option<Arc<Pool>>,
    pub(crate) sessions: Sessions,
    pub(crate) limits: Limits,
    admission: Admission,
    pub(crate) stats: Stats,
    /// Whose arguments are checked against their `inputSchema`.
    schemas: SchemaChecks,
    /// Becomes true when the gateway stops: the listeners close, GET streams end.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Calls held for a person, over every grant and session.
    pub(crate) approvals: Arc<crate::approvals::Approvals>,
    /// Who may decide them (`[[approvers]]`); none: calls that need approval are refused.
    pub(crate) approvers: Vec<Approver>,
    /// The approvals event streams that may be open at once (`approval_events.rs`).
    pub(crate) approval_streams: Arc<tokio::sync::Semaphore>,
    /// The replicas' shared key (`session_key_file`): session ids are sealed with it, and a
    /// session another replica opened is adopted here.
    pub(crate) session_key: Option<super::sealed::SessionKey>,
    /// With `[[upstreams]]`: how each upstream is doing across the sessions (`/status`).
    pub(crate) upstreams: crate::upstreams::Board,
    /// `decision_log`: where every session reports its decisions and outcomes.
    pub(crate) audit: Option<Arc<crate::session::Audit>>,
    /// `inject_trace_context`: forwarded calls carry their span as `_meta.traceparent`.
    pub(crate) inject_trace: bool,
    /// The decision log itself, for its written and dropped counts (`/status`).
    pub(crate) decision_log: Option<Arc<crate::audit::DecisionLog>>,
    /// `/metrics` on the admin listener; always on, fed through [`Gateway::audit`].
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

/// One `[[approvers]]` entry, its token as a digest.
pub(crate) struct Approver {
    pub(crate) name: String,
    pub(crate) token_sha256: [u8; 32],
    pub(crate) grants: Vec<String>,
}

impl Gateway {
    /// A gateway with no sessions yet; `hosts` and `origins` are admitted besides loopback.
    pub(crate) fn new(
        grants: Grants,
        upstream: Upstream,
        limits: Limits,
        hosts: Vec<String>,
        origins: Vec<String>,
    ) -> anyhow::Result<Self> {
        let pool = match &upstream {
            Upstream::Http { url, tls, .. } => Some(Arc::new(Pool::new(url, tls)?)),
            Upstream::Stdio(_) | Upstream::Set(_) => None,
        };
        Ok(Self {
            grants,
            upstream,
            pool,
            sessions: Sessions::new(limits.max_sessions),
            limits,
            admission: Admission::new(hosts, origins),
            stopping: tokio::sync::watch::Sender::new(false),
            stats: Stats::default(),
            schemas: SchemaChecks::default(),
            approvals: Arc::new(crate::approvals::Approvals::new(Arc::new(
                crate::clock::SystemClock::new(),
            ))),
            approvers: Vec::new(),
            approval_streams: Arc::new(tokio::sync::Semaphore::new(MAX_APPROVAL_STREAMS)),
            session_key: None,
            upstreams: crate::upstreams::Board::default(),
            audit: None,
            inject_trace: false,
            decision_log: None,
            metrics: Arc::new(crate::metrics::Metrics::new()),
        })
    }

    /// Session ids are sealed under `key`, and any replica with the same key serves them
    /// (HTTP upstreams only: the config refuses a key with a stdio upstream).
    pub(crate) fn with_session_key(mut self, key: super::sealed::SessionKey) -> Self {
        self.session_key = Some(key);
        self
    }

    /// New approval requests are announced by `announce` (the webhook). Before any session.
    pub(crate) fn with_announce(
        mut self,
        announce: impl Fn(&crate::approvals::Request) + Send + Sync + 'static,
    ) -> Self {
        self.approvals = Arc::new(
            crate::approvals::Approvals::new(Arc::new(crate::clock::SystemClock::new()))
                .with_announce(announce),
        );
        self
    }

    /// The approver whose token is `token` (its index), compared in constant time with every
    /// approver's, so that the time taken says nothing of which one nearly matched.
    pub(crate) fn approver_index(&self, token: &[u8]) -> Option<usize> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let presented: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        let mut found = None;
        for (index, a) in self.approvers.iter().enumerate() {
            if bool::from(a.token_sha256.ct_eq(&presented)) {
                found = Some(index);
            }
        }
        found
    }

    /// Held calls may be decided by these approvers (on the admin listener).
    pub(crate) fn with_approvers(mut self, approvers: Vec<Approver>) -> Self {
        self.approvers = approvers;
        self
    }

    /// Which tools' arguments are checked against their `inputSchema` (all, by default).
    pub(crate) fn with_schema_checks(mut self, schemas: SchemaChecks) -> Self {
        self.schemas = schemas;
        self
    }

    /// Says that the gateway is stopping: to the listeners, and to the GET streams.
    pub(crate) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Sees the gateway stop: it becomes true once [`Gateway::stop`] is called.
    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Open sessions.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.count()
    }

    /// `Host`/`Origin` (DNS rebinding), then the bearer token; a refusal is counted.
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        remembered: &Remembered,
    ) -> Result<Arc<Grant>, GatewayError> {
        let admitted = self.admission.admit(headers, &self.grants, remembered);
        match &admitted {
            Err(GatewayError::Forbidden) => &self.stats.refused_host,
            Err(_) => &self.stats.refused_auth,
            Ok(_) => return admitted,
        }
        .fetch_add(1, Ordering::Relaxed);
        admitted
    }

    /// The session a request names, if it exists and belongs to `grant`.
    pub(crate) fn find(
        &self,
        headers: &HeaderMap,
        grant: &Arc<Grant>,
    ) -> Result<Arc<GwSession>, GatewayError> {
        let Some(id) = headers.get(&SESSION_ID).and_then(|v| v.to_str().ok()) else {
            return Err(GatewayError::SessionIdMissing);
        };
        match self.sessions.find(id, grant) {
            Some(session) => Ok(session),
            None => self.adopt(id, grant),
        }
    }

    /// A session this replica does not know, opened by another that shares the session key:
    /// adopted if its id opens under the key and was sealed for `grant`; anything else is a
    /// session that does not exist, whatever the reason. Its core learns the upstream's tools
    /// before it decides anything (`super::adopted::catch_up`).
    fn adopt(&self, id: &str, grant: &Arc<Grant>) -> Result<Arc<GwSession>, GatewayError> {
        let sealed = self
            .session_key
            .as_ref()
            .and_then(|key| key.open(id))
            .filter(|sealed| sealed.grant == grant.name)
            .ok_or(GatewayError::SessionNotFound)?;
        let upstream = match sealed.upstream.as_deref().map(HeaderValue::from_str) {
            None => None,
            Some(Ok(value)) => Some(value),
            Some(Err(_)) => return Err(GatewayError::SessionNotFound),
        };
        let Some(slot) = self.sessions.take_slot() else {
            let max = self.sessions.max();
            return Err(GatewayError::TooManySessions { max });
        };
        let core = self
            .session_core(grant, &sealed.session)
            .resumed(sealed.client_elicits);
        let session = GwSession::adopted(id.to_owned(), grant.clone(), core, Link::Http(upstream));
        let session = self.sessions.open_or_existing(slot, session);
        self.stats.sessions_adopted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(grant = %grant.name, "session adopted from another replica");
        Ok(session)
    }

    /// A new session core: the grant's policy and counters, counting as session `id`.
    pub(crate) fn session_core(&self, grant: &Grant, id: &str) -> Session {
        Session::live(
            grant.policy.clone(),
            grant.counters.clone(),
            Identity {
                grant: grant.name.clone(),
                session: id.to_owned(),
            },
        )
        .with_schema_checks(self.schemas.clone())
        // An approver decides, or the agent's own client, asked on the held POST's stream.
        .with_approvals(self.approvals.clone(), !self.approvers.is_empty(), true)
        .with_audit(self.audit.clone())
        .with_shadow_policy(grant.shadow.as_ref().map(|live| live.cell()))
        .with_trace_injection(self.inject_trace)
    }

    /// The headers for an upstream request: the MCP headers the client sent, the upstream
    /// session, and the config's own.
    fn upstream_headers<'a>(
        &'a self,
        client: &'a HeaderMap,
        upstream_session: Option<&'a HeaderValue>,
    ) -> Vec<(&'a str, &'a HeaderValue)> {
        let mut headers = Vec::with_capacity(8);
        for name in [
            &header::ACCEPT,
            &header::CONTENT_TYPE,
            &LAST_EVENT_ID,
            &PROTOCOL_VERSION,
            &MCP_METHOD,
            &MCP_NAME,
        ] {
            if let Some(value) = client.get(name) {
                headers.push((name.as_str(), value));
            }
        }
        if let Some(id) = upstream_session {
            headers.push((SESSION_ID.as_str(), id));
        }
        if let Upstream::Http { headers: own, .. } = &self.upstream {
            headers.extend(own.iter().map(|(n, v)| (n.as_str(), v)));
        }
        headers
    }

    /// Sends a request to the HTTP upstream, copying the MCP headers the client sent.
    pub(crate) async fn send_upstream(
        &self,
        method: Method,
        upstream_session: Option<&HeaderValue>,
        client: &HeaderMap,
        body: &[u8],
    ) -> Result<UpstreamResponse, Failed> {
        let Some(pool) = &self.pool else {
            unreachable!("only HTTP upstreams are sent requests")
        };
        let headers = self.upstream_headers(client, upstream_session);
        let sent = pool.send(method, &headers, body);
        match tokio::time::timeout(self.limits.request_timeout(), sent).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(SendError { error, written })) => {
                tracing::warn!(%error, written, "upstream request failed");
                Err(Failed {
                    error: GatewayError::UpstreamUnreachable(error),
                    written,
                })
            }
            // The request may be running upstream: its counter units stay spent.
            Err(_) => Err(Failed {
                error: GatewayError::UpstreamTimeout {
                    seconds: self.limits.request_timeout_s,
                },
                written: true,
            }),
        }
    }

    /// Closes sessions idle for longer than the limit; returns how many.
    pub(crate) fn expire_idle(self: &Arc<Self>) -> usize {
        let expired = self.sessions.take_idle(self.limits.idle());
        self.stats
            .sessions_expired
            .fetch_add(expired.len() as u64, Ordering::Relaxed);
        for session in &expired {
            tracing::info!(session = %session.id, grant = %session.grant.name, "session expired (idle)");
            self.close_upstream(session);
        }
        expired.len()
    }

    /// Ends every session when the gateway stops, after the connections have finished: the
    /// HTTP upstream's sessions get their DELETEs, all at once and for at most `within`, so
    /// that the upstream frees them now instead of at its own idle expiry; stdio children are
    /// stopped as their sessions drop. Returns how many sessions there were. With a session
    /// key, no DELETE: the sessions live on, served by the other replicas.
    pub(crate) async fn close_all(self: &Arc<Self>, within: Duration) -> usize {
        let closed = self.sessions.take_all();
        if self.session_key.is_some() {
            // Other replicas serve these sessions: they live on upstream.
            return closed.len();
        }
        let mut deletes = tokio::task::JoinSet::new();
        for session in &closed {
            if let Link::Http(Some(upstream_id)) = &session.link {
                deletes.spawn(self.clone().delete_upstream(upstream_id.clone()));
            }
        }
        let all_sent = async { while deletes.join_next().await.is_some() {} };
        if tokio::time::timeout(within, all_sent).await.is_err() {
            tracing::warn!(
                left = deletes.len(),
                "stopping: the upstream did not answer every session DELETE in time"
            );
        }
        closed.len()
    }

    /// Ends the upstream side of a session that is gone: DELETE for HTTP (in the
    /// background), the child is killed when the last reference drops.
    /// With a session key, other replicas may be serving the session right now (this copy is
    /// idle because they are): only this replica forgets it, and the upstream session ends by
    /// the client's DELETE or the upstream's own expiry.
    fn close_upstream(self: &Arc<Self>, session: &GwSession) {
        if self.session_key.is_some() {
            return;
        }
        if let Link::Http(Some(upstream_id)) = &session.link {
            tokio::spawn(self.clone().delete_upstream(upstream_id.clone()));
        }
    }

    /// DELETEs one upstream session; the upstream's answer does not matter.
    async fn delete_upstream(self: Arc<Self>, upstream_id: HeaderValue) {
        let no_client = HeaderMap::new();
        let sent = self.send_upstream(Method::DELETE, Some(&upstream_id), &no_client, b"");
        if let Ok(response) = sent.await {
            let _ = response.into_body().read_all(SMALL_REPLY).await;
        }
    }
}

/// A stream that carries only what happens later (an MCP GET stream, the approvals events)
/// never ends by itself. When the gateway stops, it ends at once (the client reconnects, to
/// the next gateway) instead of holding the stop for the whole grace period. POST replies are
/// requests in flight: they keep the grace period to finish.
pub(crate) fn ends_when_stopping(gw: &Gateway, response: Response) -> Response {
    use futures_util::StreamExt;
    let mut stopping = gw.stopping();
    let stopped = async move {
        // An error means the gateway is gone: the stream ends then too.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    response.map(|body| Body::from_stream(body.into_data_stream().take_until(stopped)))
}
