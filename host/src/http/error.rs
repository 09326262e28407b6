//! Every refusal the gateway answers itself, and the one place that puts it on the wire.
//!
//! A handler returns a [`GatewayError`]; [`GatewayError::reply`] turns it into the HTTP
//! response: status, JSON-RPC error code, message and headers (`WWW-Authenticate`, `Allow`),
//! all read from one table ([`GatewayError::wire`]). The messages are the `Display` of each
//! variant, so the text a client reads, the text the session records when it abandons a
//! request, and the text in the logs are the same.
//!
//! What is not here: a policy's refusal (an MCP tool result from the session core, answered
//! with 200), and `Connection: close`, which depends on whether the request's body was read,
//! not on the refusal (see [`closing`]).

use super::upstream::BodyError;
use crate::jsonrpc;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

/// A request the gateway refuses, or an upstream exchange that failed, answered by the
/// gateway itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// A path other than `/mcp`.
    #[error("not found: the MCP endpoint is /mcp")]
    NotMcpEndpoint,
    /// A method `/mcp` does not serve (answered with an empty body and `Allow`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `Host` or `Origin` not allowed, or more than one `Origin`.
    #[error("forbidden: Host or Origin is not allowed (DNS rebinding protection)")]
    Forbidden,
    /// No `Authorization` header and no anonymous grant.
    #[error("unauthorized: send `Authorization: Bearer <token>`")]
    TokenMissing,
    /// A header that is not `Bearer <token>`, or a token no grant has.
    #[error("unauthorized: the bearer token is not valid")]
    TokenInvalid,
    /// A POST whose `Content-Type` is not JSON.
    #[error("unsupported media type: Content-Type must be application/json")]
    NotJson,
    /// A POST whose `Accept` does not list both reply forms.
    #[error("not acceptable: Accept must list both application/json and text/event-stream")]
    PostNotAcceptable,
    /// A GET whose `Accept` does not list SSE.
    #[error("not acceptable: Accept must list text/event-stream")]
    GetNotAcceptable,
    /// A body over `max_body_bytes` (declared or read).
    #[error("request body of {length} bytes exceeds the gateway's {max}-byte limit")]
    BodyTooLarge { length: usize, max: usize },
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    BodyUnreadable(String),
    /// The body did not arrive within `client_timeout_s`.
    #[error("request body not received within {seconds} s")]
    BodyTimeout { seconds: u64 },
    /// A body that is not one JSON-RPC message (the code says which fault: parse or shape).
    #[error("{message}")]
    Malformed { code: i64, message: String },
    /// A message with neither a method nor an id.
    #[error("invalid request: neither a request, a notification nor a reply")]
    NotAMessage,
    /// A request that needs a session and names none.
    #[error("bad request: Mcp-Session-Id header is required")]
    SessionIdMissing,
    /// A session that does not exist, or that another grant opened (they look the same).
    #[error("session not found: it expired or was deleted; send initialize again")]
    SessionNotFound,
    /// `max_sessions` open or opening.
    #[error("too many sessions: the gateway's limit of {max} is reached; retry later")]
    TooManySessions { max: usize },
    /// `server/discover` without a session, to a stdio upstream (which speaks only sessions).
    #[error("method not found: server/discover")]
    DiscoverUnsupported,
    /// A request without a session, to a stdio upstream.
    #[error("bad request: Mcp-Session-Id header is required (send initialize first)")]
    StdioNeedsSession,
    /// The HTTP upstream could not be reached, or the request could not be written.
    #[error("upstream MCP server unreachable: {0}")]
    UpstreamUnreachable(std::io::Error),
    /// The HTTP upstream sent no response head within `request_timeout_s`.
    #[error("upstream MCP server did not answer within {seconds} s")]
    UpstreamTimeout { seconds: u64 },
    /// The upstream's reply body could not be read whole.
    #[error(transparent)]
    UpstreamBody(#[from] BodyError),
    /// A reply body that is neither JSON nor SSE: it could carry a message the session never
    /// saw, so it is not relayed.
    #[error("the upstream answered HTTP {status} with a body of content type `{content_type}`, not JSON or SSE")]
    UpstreamContentType {
        status: StatusCode,
        content_type: String,
    },
    /// A JSON reply that answers no pending request; an upstream's HTTP error keeps its status.
    #[error("the upstream answered HTTP {status} without a reply to this request")]
    UpstreamNoReply { status: StatusCode },
    /// A stdio child that failed while a request was sent to it.
    #[error("{0}")]
    ChildRequest(std::io::Error),
    /// A stdio child that could not take a notification.
    #[error("upstream MCP server has exited: {0}")]
    ChildGone(std::io::Error),
    /// A stdio child that died before its `initialize` could be sent.
    #[error("upstream MCP server exited: {0}")]
    ChildExited(std::io::Error),
    /// The upstream command could not be started.
    #[error("cannot start the upstream MCP server: {0}")]
    ChildSpawn(std::io::Error),
    /// The admin endpoints without `admin_token_sha256` in the config.
    #[error("admin endpoints are off: set admin_token_sha256 in the config")]
    AdminOff,
    /// The admin endpoints without the admin token.
    #[error("unauthorized: send the admin bearer token")]
    AdminUnauthorized,
    /// The approvals API without an approver's token.
    #[error("an approver's token is required (`[[approvers]]`); a grant's token never approves")]
    ApproverUnauthorized,
    /// No approval request has this id.
    #[error("no approval request `{0}`")]
    ApprovalNotFound(String),
    /// The approver may not decide for the request's grant.
    #[error("approver `{approver}` may not decide for grant `{grant}`")]
    ApprovalForbidden {
        /// The approver.
        approver: String,
        /// The request's grant.
        grant: String,
    },
    /// The request was decided otherwise, or expired.
    #[error("{0}")]
    ApprovalConflict(String),
    /// A deny without a reason.
    #[error("a deny needs a reason: {{\"reason\": \"...\"}}")]
    ApprovalNeedsReason,
    /// An approval's `reuse` that cannot be.
    #[error("{0}")]
    ApprovalBadReuse(String),
    /// As many approvals event streams are open as the admin listener keeps for them.
    #[error(
        "{max} approvals event streams are open already; try again later, or poll `/approvals/api`"
    )]
    ApprovalStreamsFull {
        /// The most open at once.
        max: usize,
    },
    /// The approvals page's login with a token no approver has.
    #[error("that is not an approver's token")]
    PageLoginFailed,
    /// The approvals page without a live session cookie.
    #[error("not logged in, or the session expired: log in again at /approvals")]
    PageNoSession,
    /// A POST to the approvals page from another site (`Origin` or `Sec-Fetch-Site`).
    #[error("cross-site request refused: the Origin is not this admin listener")]
    PageCrossSite,
    /// A POST to the approvals page without the session's CSRF token.
    #[error("the CSRF token is missing or wrong: reload /approvals")]
    PageCsrf,
    /// A deny from the page without a reason.
    #[error("a deny needs a reason")]
    PageNeedsReason,
    /// The OS gave no random bytes for a session id.
    #[error("cannot make a session id: {0}")]
    PageRandom(String),
}

/// How a refusal's body is shaped.
enum Body {
    /// A JSON-RPC error reply with this code (the `/mcp` endpoint).
    JsonRpc(i64),
    /// `{"error": message}` (the admin listener, which speaks no JSON-RPC).
    Admin,
    /// No body.
    Empty,
}

/// A refusal on the wire, less its message.
struct Wire {
    status: StatusCode,
    body: Body,
    /// One more header: a challenge, or the methods allowed.
    header: Option<(HeaderName, &'static str)>,
}

impl GatewayError {
    /// The one table from refusal to status, JSON-RPC code and headers.
    fn wire(&self) -> Wire {
        use jsonrpc::{INVALID_REQUEST, METHOD_NOT_FOUND, UPSTREAM_GONE};
        use GatewayError as E;
        let (status, body) = match self {
            E::NotMcpEndpoint => (StatusCode::NOT_FOUND, Body::JsonRpc(INVALID_REQUEST)),
            E::MethodNotAllowed => {
                let allow = (header::ALLOW, "GET, POST, DELETE");
                return Wire {
                    status: StatusCode::METHOD_NOT_ALLOWED,
                    body: Body::Empty,
                    header: Some(allow),
                };
            }
            E::Forbidden => (StatusCode::FORBIDDEN, Body::JsonRpc(INVALID_REQUEST)),
            E::TokenMissing | E::TokenInvalid => {
                let challenge = match self {
                    E::TokenMissing => r#"Bearer realm="toolgate""#,
                    _ => r#"Bearer realm="toolgate", error="invalid_token""#,
                };
                return Wire {
                    status: StatusCode::UNAUTHORIZED,
                    body: Body::JsonRpc(INVALID_REQUEST),
                    header: Some((header::WWW_AUTHENTICATE, challenge)),
                };
            }
            E::NotJson => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Body::JsonRpc(INVALID_REQUEST),
            ),
            E::PostNotAcceptable | E::GetNotAcceptable => {
                (StatusCode::NOT_ACCEPTABLE, Body::JsonRpc(INVALID_REQUEST))
            }
            E::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Body::JsonRpc(INVALID_REQUEST),
            ),
            E::BodyUnreadable(_) => (StatusCode::BAD_REQUEST, Body::JsonRpc(INVALID_REQUEST)),
            E::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, Body::JsonRpc(INVALID_REQUEST)),
            E::Malformed { code, .. } => (StatusCode::BAD_REQUEST, Body::JsonRpc(*code)),
            E::NotAMessage | E::SessionIdMissing | E::StdioNeedsSession => {
                (StatusCode::BAD_REQUEST, Body::JsonRpc(INVALID_REQUEST))
            }
            E::SessionNotFound => (StatusCode::NOT_FOUND, Body::JsonRpc(INVALID_REQUEST)),
            E::TooManySessions { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Body::JsonRpc(UPSTREAM_GONE),
            ),
            // Answered as a server without the method would: a JSON-RPC error, HTTP 200.
            E::DiscoverUnsupported => (StatusCode::OK, Body::JsonRpc(METHOD_NOT_FOUND)),
            E::UpstreamTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, Body::JsonRpc(UPSTREAM_GONE))
            }
            E::UpstreamNoReply { status }
                if status.is_client_error() || status.is_server_error() =>
            {
                (*status, Body::JsonRpc(UPSTREAM_GONE))
            }
            E::UpstreamUnreachable(_)
            | E::UpstreamBody(_)
            | E::UpstreamContentType { .. }
            | E::UpstreamNoReply { .. }
            | E::ChildRequest(_)
            | E::ChildGone(_)
            | E::ChildExited(_)
            | E::ChildSpawn(_) => (StatusCode::BAD_GATEWAY, Body::JsonRpc(UPSTREAM_GONE)),
            E::AdminOff => (StatusCode::FORBIDDEN, Body::Admin),
            E::ApproverUnauthorized => (StatusCode::UNAUTHORIZED, Body::Admin),
            E::ApprovalNotFound(_) => (StatusCode::NOT_FOUND, Body::Admin),
            E::ApprovalForbidden { .. } => (StatusCode::FORBIDDEN, Body::Admin),
            E::ApprovalConflict(_) => (StatusCode::CONFLICT, Body::Admin),
            E::ApprovalNeedsReason | E::ApprovalBadReuse(_) => {
                (StatusCode::BAD_REQUEST, Body::Admin)
            }
            E::ApprovalStreamsFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, Body::Admin),
            E::PageLoginFailed | E::PageNoSession => (StatusCode::UNAUTHORIZED, Body::Admin),
            E::PageCrossSite | E::PageCsrf => (StatusCode::FORBIDDEN, Body::Admin),
            E::PageNeedsReason => (StatusCode::BAD_REQUEST, Body::Admin),
            E::PageRandom(_) => (StatusCode::INTERNAL_SERVER_ERROR, Body::Admin),
            E::AdminUnauthorized => {
                return Wire {
                    status: StatusCode::UNAUTHORIZED,
                    body: Body::Admin,
                    header: Some((header::WWW_AUTHENTICATE, r#"Bearer realm="toolgate-admin""#)),
                };
            }
        };
        Wire {
            status,
            body,
            header: None,
        }
    }

    /// The HTTP status this refusal is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        self.wire().status
    }

    /// Why, in a word, for `toolgate_http_refusals_total{reason}`: a bounded set of values,
    /// never the message. `None`: not counted (the approvals API's answers to approvers).
    fn reason(&self) -> Option<&'static str> {
        use GatewayError as E;
        Some(match self {
            E::Forbidden => "host",
            E::TokenMissing | E::TokenInvalid => "auth",
            E::NotMcpEndpoint => "not_found",
            E::MethodNotAllowed => "method_not_allowed",
            E::NotJson | E::PostNotAcceptable | E::GetNotAcceptable => "media_type",
            E::BodyTooLarge { .. } => "body_too_large",
            E::BodyUnreadable(_) | E::BodyTimeout { .. } => "body_unread",
            E::Malformed { .. } | E::NotAMessage => "malformed",
            E::SessionIdMissing | E::StdioNeedsSession => "session_missing",
            E::SessionNotFound => "session_not_found",
            E::TooManySessions { .. } => "too_many_sessions",
            E::DiscoverUnsupported => "method_not_found",
            E::UpstreamTimeout { .. } => "upstream_timeout",
            E::UpstreamUnreachable(_)
            | E::UpstreamBody(_)
            | E::UpstreamContentType { .. }
            | E::UpstreamNoReply { .. }
            | E::ChildRequest(_)
            | E::ChildGone(_)
            | E::ChildExited(_)
            | E::ChildSpawn(_) => "upstream_failed",
            E::AdminOff | E::AdminUnauthorized | E::ApproverUnauthorized | E::PageLoginFailed => {
                "admin_auth"
            }
            _ => return None,
        })
    }

    /// The response, as the reply to the request with `id` (`None`: the id is unknown or not
    /// read yet, and the reply's id is `null`). Counted by [`GatewayError::reason`].
    pub(crate) fn reply(&self, id: Option<&RawValue>) -> Response {
        if let Some(reason) = self.reason() {
            refusals::count(reason);
        }
        let Wire {
            status,
            body,
            header,
        } = self.wire();
        let mut response = match body {
            Body::JsonRpc(code) => {
                json_response(status, jsonrpc::error_line(id, code, &self.to_string()))
            }
            Body::Admin => {
                let body = serde_json::json!({ "error": self.to_string() });
                json_response(status, serde_json::to_vec(&body).unwrap_or_default())
            }
            Body::Empty => status.into_response(),
        };
        if let Some((name, value)) = header {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// Refusals answered since the process started, by reason (one gateway per process: the
/// metrics read them at scrape time, as they read the plugin runtime's counts).
pub(crate) mod refusals {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Every reason [`super::GatewayError::reason`] gives.
    const REASONS: [&str; 16] = [
        "host",
        "auth",
        "not_found",
        "method_not_allowed",
        "media_type",
        "body_too_large",
        "body_unread",
        "malformed",
        "session_missing",
        "session_not_found",
        "too_many_sessions",
        "method_not_found",
        "upstream_timeout",
        "upstream_failed",
        "admin_auth",
        "other",
    ];

    static COUNTS: [AtomicU64; REASONS.len()] = [const { AtomicU64::new(0) }; REASONS.len()];

    pub(super) fn count(reason: &str) {
        let index = REASONS.iter().position(|r| *r == reason);
        COUNTS[index.unwrap_or(REASONS.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Each reason and its count.
    pub(crate) fn counts() -> Vec<(&'static str, u64)> {
        REASONS
            .iter()
            .zip(&COUNTS)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
            .collect()
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.reply(None)
    }
}

/// A JSON body (a JSON-RPC reply line) with its status.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A response sent before the request's body was read whole ends the connection, and says so
/// (`Connection: close`). The rest of the body may still be on its way, so hyper cannot keep
/// the connection; without the header, a client could send its next request on it and lose
/// that request when it closes.
pub(crate) fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// An upstream exchange that failed: the refusal, and whether any of the request may have
/// reached the upstream (then a `tools/call`'s counter units stay spent).
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: GatewayError,
    pub(crate) written: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Each refusal is counted once, under its reason (counts are process-wide and other
    /// tests refuse too: only this test's too_many_sessions, so the count is exact).
    #[test]
    fn a_refusal_is_counted_by_its_reason() {
        let count = |reason: &str| {
            refusals::counts()
                .into_iter()
                .find(|(r, _)| *r == reason)
                .map(|(_, n)| n)
                .unwrap()
        };
        let before = count("too_many_sessions");
        let _ = GatewayError::TooManySessions { max: 1 }.reply(None);
        let _ = GatewayError::TooManySessions { max: 1 }.into_response();
        assert_eq!(count("too_many_sessions"), before + 2);
        assert!(refusals::counts().iter().all(|(r, _)| !r.contains(' ')));
        assert_eq!(GatewayError::ApprovalNeedsReason.reason(), None);
    }

    #[tokio::test]
    async fn refusals_keep_their_wire_form() {
        let refused = GatewayError::TokenInvalid.into_response();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="toolgate", error="invalid_token""#
        );
        assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body(refused).await,
            "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,\"message\":\"unauthorized: the bearer token is not valid\"}}\n"
        );
        let id = RawValue::from_string("7".into()).unwrap();
        let discover = GatewayError::DiscoverUnsupported.reply(Some(&id));
        assert_eq!(discover.status(), StatusCode::OK);
        assert!(body(discover)
            .await
            .starts_with(r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32601"#));
        let not_allowed = GatewayError::MethodNotAllowed.into_response();
        assert_eq!(not_allowed.headers()[header::ALLOW], "GET, POST, DELETE");
        assert!(body(not_allowed).await.is_empty());
        assert_eq!(
            body(GatewayError::AdminOff.into_response()).await,
            r#"{"error":"admin endpoints are off: set admin_token_sha256 in the config"}"#
        );
    }

    #[test]
    fn an_upstream_error_status_is_kept_and_any_other_is_a_bad_gateway() {
        let kept = GatewayError::UpstreamNoReply {
            status: StatusCode::TOO_MANY_REQUESTS,
        };
        assert_eq!(kept.status(), StatusCode::TOO_MANY_REQUESTS);
        let ok = GatewayError::UpstreamNoReply {
            status: StatusCode::OK,
        };
        assert_eq!(ok.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            ok.to_string(),
            "the upstream answered HTTP 200 OK without a reply to this request"
        );
    }
}
