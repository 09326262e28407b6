//! The client side of an HTTP upstream: HTTP/1.1 keep-alive connections, pooled, on hyper's
//! connection API directly.
//!
//! reqwest (used first) re-parsed the URL and ran IDNA on every request and added layers of
//! its own; in profiles of the benchmark those layers were a visible share of a call. This
//! pool does only what the gateway needs: one fixed upstream, plain HTTP, keep-alive.
//!
//! A request that a pooled connection could not send (the upstream closed it while idle) is
//! retried once on a new connection; hyper hands such a request back unsent, so a `tools/call`
//! is never sent twice.

use axum::body::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept; more are closed when their exchange ends.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Response = hyper::Response<hyper::body::Incoming>;

/// Connections to one upstream.
pub struct Pool {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header and the request path (`/mcp?...`).
    authority: String,
    path: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Pool {
    /// A pool for `url` (`http://host:port/path`; https is not supported).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("[upstream] url `{url}`: {e}"))?;
        if uri.scheme_str() != Some("http") {
            anyhow::bail!("[upstream] url `{url}`: only http:// upstreams are supported");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("[upstream] url `{url}` has no host"))?
            .to_string();
        let address = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            address,
            authority,
            path,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A request to the upstream's URL, with `Host` set.
    pub fn request(&self, method: hyper::Method) -> hyper::http::request::Builder {
        hyper::Request::builder()
            .method(method)
            .uri(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<Full<Bytes>>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection ready for a request: an idle one, else a new one.
    async fn connection(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        {
            let mut idle = self.idle();
            idle.retain(|c| !c.is_closed());
            if let Some(i) = idle.iter().rposition(SendRequest::is_ready) {
                return Ok(idle.swap_remove(i));
            }
        }
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.address))??;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `request`; the connection goes back to the pool (it takes a new request once the
    /// response body has been read).
    pub async fn send(&self, request: hyper::Request<Full<Bytes>>) -> anyhow::Result<Response> {
        let mut request = request;
        for attempt in 0..2 {
            let mut connection = self.connection().await?;
            match connection.try_send_request(request).await {
                Ok(response) => {
                    let mut idle = self.idle();
                    if idle.len() < MAX_IDLE {
                        idle.push(connection);
                    }
                    return Ok(response);
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if attempt == 0 => request = unsent,
                    _ => return Err(failed.into_error().into()),
                },
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}
