//! The MCP headers by name, and what a request's `Content-Type` and `Accept` say.

use axum::http::{header, HeaderMap, HeaderName};

// Looked up as `HeaderName`s: a lookup by `&str` parses the name again each time.
/// The session id: the gateway's own towards the client, the upstream's towards the upstream.
pub(crate) static SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// The negotiated protocol version, passed both ways as it is.
pub(crate) static PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// Where a resumed SSE stream picks up.
pub(crate) static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// The 2026-07-28 routing headers: the request's method, and the name it acts on (a tool's,
/// for `tools/call`). Servers of that protocol refuse a request without them.
pub(crate) static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// See [`MCP_METHOD`].
pub(crate) static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// The media type of `Content-Type`, without its parameters (`""` if none).
pub(crate) fn media_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map_or("", str::trim)
}

/// What `Accept` lists, each media type by name or by a wildcard covering it.
pub(crate) struct Accepts {
    pub(crate) json: bool,
    pub(crate) sse: bool,
}

/// Reads every `Accept` header; parameters (`q=`) are ignored, as a gateway that can answer
/// in either form need not rank them.
pub(crate) fn accepts(headers: &HeaderMap) -> Accepts {
    let mut out = Accepts {
        json: false,
        sse: false,
    };
    for value in headers.get_all(header::ACCEPT) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.split(|&b| b == b';').next().unwrap_or_default();
            let item = item.trim_ascii();
            let any = item == b"*/*";
            out.json |= any
                || item.eq_ignore_ascii_case(b"application/json")
                || item.eq_ignore_ascii_case(b"application/*");
            out.sse |= any
                || item.eq_ignore_ascii_case(b"text/event-stream")
                || item.eq_ignore_ascii_case(b"text/*");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accept_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;q=0.9, text/*"),
        );
        let both = accepts(&h);
        assert!(both.json && both.sse);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("image/png, text/html"),
        );
        let neither = accepts(&h);
        assert!(!neither.json && !neither.sse);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("Text/Event-Stream"),
        );
        h.append(
            header::ACCEPT,
            HeaderValue::from_static(" application/JSON ; q=1"),
        );
        let split = accepts(&h);
        assert!(split.json && split.sse);
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&h).json && accepts(&h).sse);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/jsonx, text/event"),
        );
        let near = accepts(&h);
        assert!(!near.json && !near.sse);
    }

    #[test]
    fn media_types_drop_their_parameters() {
        let mut h = HeaderMap::new();
        assert_eq!(media_type(&h), "");
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(media_type(&h), "application/json");
    }
}
