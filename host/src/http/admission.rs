//! Who may talk to `/mcp` at all: `Host` and `Origin` (DNS rebinding protection), then the
//! bearer token. Both are checked before anything else is read, so a refused request costs
//! no body read and causes no upstream traffic.
//!
//! DNS rebinding: a web page on `evil.example` points its own name at 127.0.0.1 and then
//! calls the gateway from the victim's browser. The browser sends `Host: evil.example` and
//! `Origin: http://evil.example`; both are refused unless they are loopback names or listed in
//! `allowed_hosts` / `allowed_origins`. Clients that are not browsers send no `Origin`.

use super::error::GatewayError;
use super::grants::{AuthError, Grant, Grants, Remembered};
use axum::http::{header, HeaderMap, HeaderValue};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The `Host` and `Origin` values a request may carry besides loopback ones.
pub(crate) struct Admission {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Admission {
    /// `hosts` and `origins` as the config lists them (compared without regard to case).
    pub(crate) fn new(hosts: Vec<String>, origins: Vec<String>) -> Self {
        Self { hosts, origins }
    }

    /// `Host`/`Origin`, then the bearer token: the grant the request acts for.
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        grants: &Grants,
        remembered: &Remembered,
    ) -> Result<Arc<Grant>, GatewayError> {
        self.host_and_origin(headers)?;
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        grants
            .authenticate(authorization, remembered)
            .map_err(|why| match why {
                AuthError::Missing => GatewayError::TokenMissing,
                AuthError::Invalid => GatewayError::TokenInvalid,
            })
    }

    /// The DNS rebinding check.
    fn host_and_origin(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if self.host_ok(host) && self.origin_ok(headers) {
            return Ok(());
        }
        tracing::warn!(host, origin = ?headers.get(header::ORIGIN), "refused Host/Origin");
        Err(GatewayError::Forbidden)
    }

    fn host_ok(&self, host: &str) -> bool {
        is_loopback(host_of(host))
            || self
                .hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(host_of(host)))
    }

    /// No `Origin` (not a browser, or a same-origin request) is fine; one `Origin` must be a
    /// loopback origin or a listed one. Two or more are refused whatever they say: `Origin` is
    /// a single value, and a proxy or client that reads a different one of them than this
    /// check would act for an origin nobody checked.
    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = origins.next() else {
            return true;
        };
        if origins.next().is_some() {
            return false;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        is_loopback_origin(origin) || self.origins.iter().any(|a| a.eq_ignore_ascii_case(origin))
    }
}

/// The host part of a `Host` header (`[::1]:80` → `[::1]`).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn is_loopback(host: &str) -> bool {
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .any(|name| host.eq_ignore_ascii_case(name))
}

/// Whether an `Origin` names a loopback host. A browser's origin is `scheme://host[:port]`;
/// one with user info, a path, a query or a fragment is not a browser's and is not trusted
/// (`null`, the opaque origin, is not a URL at all).
fn is_loopback_origin(origin: &str) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let plain = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    plain
        && match url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip == Ipv4Addr::LOCALHOST,
            Some(url::Host::Ipv6(ip)) => ip == Ipv6Addr::LOCALHOST,
            None => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, origins: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        for origin in origins {
            headers.append(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    fn admitted(admission: &Admission, host: &str, origins: &[&str]) -> bool {
        admission.host_and_origin(&request(host, origins)).is_ok()
    }

    fn loopback_only() -> Admission {
        Admission::new(vec![], vec![])
    }

    #[test]
    fn host_parts() {
        assert_eq!(host_of("[::1]:7400"), "[::1]");
        assert_eq!(host_of("localhost:80"), "localhost");
        assert_eq!(host_of("evil.example.com"), "evil.example.com");
        assert!(is_loopback("LOCALHOST") && !is_loopback("localhost.evil.com"));
    }

    #[test]
    fn loopback_hosts_are_admitted() {
        let admission = loopback_only();
        for host in [
            "localhost",
            "localhost:7400",
            "127.0.0.1:9",
            "[::1]",
            "[::1]:7400",
        ] {
            assert!(admitted(&admission, host, &[]), "host {host}");
        }
    }

    #[test]
    fn other_hosts_only_when_listed() {
        let admission = Admission::new(vec!["mcp.example.com".into()], vec![]);
        assert!(admitted(&admission, "MCP.example.com:443", &[]));
        assert!(!admitted(&admission, "evil.example.com", &[]));
        assert!(!admitted(&admission, "localhost.evil.com", &[]));
        assert!(!admitted(&admission, "", &[]));
    }

    #[test]
    fn loopback_origins_are_admitted() {
        let admission = loopback_only();
        for origin in [
            "http://localhost:7400",
            "https://LOCALHOST",
            "http://127.0.0.1",
            "http://[::1]:7400",
        ] {
            assert!(admitted(&admission, "localhost", &[origin]), "{origin}");
        }
    }

    #[test]
    fn foreign_and_malformed_origins_are_refused() {
        let admission = loopback_only();
        for origin in [
            "http://evil.example.com",
            "http://localhost.evil.com",
            "http://127.0.0.1.evil.com",
            "http://[::1].evil.com",
            "http://localhost@evil.com",
            "http://evil.com@localhost",
            "http://localhost/path",
            "null",
            "localhost",
            "",
        ] {
            assert!(!admitted(&admission, "localhost", &[origin]), "{origin:?}");
        }
    }

    #[test]
    fn listed_origins_are_admitted_as_written() {
        let admission = Admission::new(vec![], vec!["https://app.example.com".into()]);
        assert!(admitted(
            &admission,
            "localhost",
            &["HTTPS://app.example.com"]
        ));
        assert!(!admitted(
            &admission,
            "localhost",
            &["https://app.example.com:8443"]
        ));
    }

    #[test]
    fn two_origins_are_refused_even_if_both_would_pass() {
        let admission = Admission::new(vec![], vec!["https://app.example.com".into()]);
        let loopback = "http://localhost:7400";
        assert!(admitted(&admission, "localhost", &[loopback]));
        assert!(!admitted(
            &admission,
            "localhost",
            &[loopback, "http://evil.example.com"]
        ));
        assert!(!admitted(&admission, "localhost", &[loopback, loopback]));
        assert!(!admitted(
            &admission,
            "localhost",
            &["https://app.example.com", loopback]
        ));
    }

    #[test]
    fn a_refusal_is_forbidden() {
        let refused = loopback_only()
            .host_and_origin(&request("evil.example.com", &[]))
            .unwrap_err();
        assert!(matches!(refused, GatewayError::Forbidden));
        assert_eq!(refused.status(), axum::http::StatusCode::FORBIDDEN);
    }
}
