//! The client side of an HTTP upstream: HTTP/1.1 keep-alive connections, pooled, read and
//! written by the task that serves the client's request.
//!
//! The first version used reqwest, the second hyper's connection API. Both run each
//! connection as a task of its own that hands the response over through a channel, chunk by
//! chunk: every upstream reply cost two task switches, and an SSE reply that arrived in one
//! read still went out to the client as one write per chunk plus one for its end. Here the
//! request's own task writes the request in one write and decodes the reply straight from the
//! socket (`httparse` for the head and chunk sizes, the parser hyper uses), so a reply read in
//! one `recv` is relayed in one write, end included. It does only what the gateway needs: one
//! fixed upstream, HTTP/1.1 with keep-alive, in plain text or over TLS (rustls, with the
//! bundled public roots or the config's own CA file).
//!
//! A connection goes back to the pool only once its response has been read to the end; a
//! response dropped half-read closes its connection. An idle connection that the upstream has
//! closed is noticed before reuse and replaced; a request whose write fails is retried once on
//! a new connection (the upstream cannot have acted on a request it did not receive whole), so
//! a `tools/call` is never sent twice.
//!
//! The bytes themselves (response heads, body framing, the chunked decoder) are read in
//! [`h1`], which never touches a socket.

mod h1;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use h1::{Framing, Head};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// Idle connections kept; more are closed when their exchange ends.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection older than this is checked with a syscall before reuse (a younger one
/// by the reactor's readiness alone): servers close idle keep-alive connections (Node after
/// 5 s), and a request written into such a connection is lost.
const CHECK_IDLE_AFTER: Duration = Duration::from_millis(500);

/// Connections to one upstream.
pub(crate) struct Pool {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header and the request path (`/mcp?...`).
    authority: String,
    path: String,
    /// For an `https://` upstream: the TLS client and the name its certificate must have.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// A request that got no response head.
#[derive(Debug)]
pub(crate) struct SendError {
    /// What went wrong.
    pub(crate) error: io::Error,
    /// Whether any of the request may have reached the upstream: only a failure to connect
    /// says for certain that it did not.
    pub(crate) written: bool,
}

impl SendError {
    fn written(error: io::Error) -> Self {
        Self {
            error,
            written: true,
        }
    }
}

/// One connection to the upstream.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP socket under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(stream) => stream,
            Conn::Tls(stream) => stream.get_ref().0,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(stream) => stream.write_all(data).await,
            Conn::Tls(stream) => {
                stream.write_all(data).await?;
                stream.flush().await
            }
        }
    }

    /// Reads what the connection has into `buffer`, waiting for at least one byte; `Ok(0)`
    /// at the end.
    fn poll_fill(&mut self, buffer: &mut BytesMut, cx: &mut Context) -> Poll<io::Result<usize>> {
        if buffer.capacity() - buffer.len() < 4096 {
            buffer.reserve(8192);
        }
        match self {
            Conn::Plain(stream) => loop {
                match stream.try_read_buf(buffer) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(stream.poll_read_ready(cx))?;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Conn::Tls(stream) => {
                tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut **stream), cx, buffer)
            }
        }
    }
}

/// An upstream response: its head, read; its body, still on the connection.
pub(crate) struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Response {
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    pub(crate) fn into_body(self) -> Body {
        self.body
    }
}

/// A response body being read from its connection.
pub(crate) struct Body {
    /// `None` once the body has ended (the connection went back to the pool or was closed).
    stream: Option<Conn>,
    buffer: BytesMut,
    framing: Framing,
    /// Whether the connection may carry another request once this body has ended.
    reusable: bool,
    pool: Option<Arc<Pool>>,
}

/// A body that could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("upstream reply exceeds the gateway's {0}-byte limit")]
    TooLarge(usize),
    #[error("upstream reply cut off: {0}")]
    Io(#[from] io::Error),
}

impl Body {
    /// Whether the body has been read to its end.
    pub(crate) fn is_end(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Moves the body data in the buffer to `out`, as far as the framing allows.
    fn decode(&mut self, out: &mut BytesMut) -> io::Result<()> {
        self.framing.decode(&mut self.buffer, out)
    }

    /// The body's end: the connection goes back to the pool if it can carry another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let stream = self.stream.take();
        if let (Some(stream), Some(pool), true) = (stream, &self.pool, self.reusable) {
            if self.buffer.is_empty() {
                pool.put(stream);
            }
        }
    }

    /// The next body data: everything the socket has delivered, once there is any. `None` at
    /// the end. The end is noticed together with the last data when it arrived with it, so
    /// that [`Body::is_end`] is already true when that data is handed out.
    pub(crate) fn poll_data(&mut self, cx: &mut Context) -> Poll<io::Result<Option<Bytes>>> {
        let mut out = BytesMut::new();
        loop {
            self.decode(&mut out)?;
            if self.framing == Framing::Done {
                self.finish();
            }
            if !out.is_empty() {
                return Poll::Ready(Ok(Some(out.freeze())));
            }
            if self.framing == Framing::Done {
                return Poll::Ready(Ok(None));
            }
            let Some(stream) = &mut self.stream else {
                return Poll::Ready(Ok(None));
            };
            if ready!(stream.poll_fill(&mut self.buffer, cx))? == 0 {
                if self.framing == Framing::UntilClose {
                    self.framing = Framing::Done;
                    self.stream = None;
                    return Poll::Ready(Ok(None));
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof)).into();
            }
        }
    }

    /// The next body data (see [`Body::poll_data`]).
    pub(crate) async fn data(&mut self) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.poll_data(cx)).await
    }

    /// The whole body, if it is at most `max` bytes.
    pub(crate) async fn read_all(mut self, max: usize) -> Result<Bytes, BodyError> {
        let mut all = BytesMut::new();
        while let Some(data) = self.data().await? {
            if all.len() + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            all.extend_from_slice(&data);
        }
        Ok(all.freeze())
    }
}

impl Pool {
    /// A pool for `url` (`http://` or `https://host:port/path`); an https upstream's
    /// certificate must chain to a CA in `tls.ca_file` (PEM) or, without one, to a public root.
    pub(crate) fn new(url: &str, tls: &super::config::UpstreamTls) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("[upstream] url `{url}`: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("[upstream] url `{url}` has no host"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") if tls.is_set() => {
                anyhow::bail!(
                    "[upstream] ca_file or a client certificate is set but url `{url}` is not https://"
                )
            }
            Some("http") => (None, 80),
            Some("https") => {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| anyhow::anyhow!("[upstream] url `{url}`: {e}"))?;
                (Some((super::tls::connector(tls)?, name)), 443)
            }
            _ => anyhow::bail!("[upstream] url `{url}`: only http:// and https:// are supported"),
        };
        let authority = uri.authority().map(ToString::to_string).unwrap_or_default();
        let address = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:{default_port}")
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            address,
            authority,
            path,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, stream: Conn) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push((stream, Instant::now()));
        }
    }

    /// An idle connection that still looks open, if any.
    fn reuse(&self) -> Option<Conn> {
        loop {
            let (stream, since) = self.idle().pop()?;
            // The reactor's readiness costs no syscall. A peer's close (FIN, or RST) shows as
            // read-closed once an `epoll_wait` has seen it, and the one that woke this request
            // has. Readable alone is no news: it stays set from the last reply's read (no read
            // ended in `WouldBlock`). So a young connection is trusted unless closed; an old one
            // gets a real look (`MSG_PEEK`: no data, no end, no error).
            let open = match stream.tcp().ready(Interest::READABLE).now_or_never() {
                Some(Ok(ready)) if ready.is_read_closed() || ready.is_error() => false,
                Some(Err(_)) => false,
                _ => since.elapsed() < CHECK_IDLE_AFTER || peek_open(stream.tcp()),
            };
            if open {
                return Some(stream);
            }
        }
    }

    async fn connect(&self) -> io::Result<Conn> {
        let connect = async {
            let stream = TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            match &self.tls {
                None => Ok(Conn::Plain(stream)),
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("TLS with {}: {e}", self.address))
                    })?;
                    Ok(Conn::Tls(Box::new(tls)))
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {} timed out", self.address),
                )
            })?
    }

    /// Sends a request with `headers` (besides `Host` and `Content-Length`, which are set
    /// here) and `body` to the upstream's URL, and reads the response head.
    pub(crate) async fn send(
        self: &Arc<Self>,
        method: Method,
        headers: &[(&str, &HeaderValue)],
        body: &[u8],
    ) -> Result<Response, SendError> {
        let mut request = Vec::with_capacity(256 + body.len());
        request.extend_from_slice(method.as_str().as_bytes());
        request.push(b' ');
        request.extend_from_slice(self.path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        request.extend_from_slice(self.authority.as_bytes());
        request.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || method == Method::POST {
            use std::io::Write;
            // Into the request itself: no string on the way.
            let _ = write!(request, "content-length: {}\r\n", body.len());
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);

        let mut stream = match self.reuse() {
            Some(mut stream) => match stream.write_all(&request).await {
                Ok(()) => stream,
                // Not received whole, so not acted on: once more on a new connection.
                Err(_) => self.write_new(&request).await?,
            },
            None => self.write_new(&request).await?,
        };
        let mut buffer = BytesMut::with_capacity(8192);
        let (status, headers, framing, reusable) = loop {
            let head = poll_fn(|cx| read_head(&mut stream, &mut buffer, cx))
                .await
                .map_err(SendError::written)?;
            // 1xx (100 Continue, 103 Early Hints): the real response follows.
            if !head.0.is_informational() {
                break head;
            }
        };
        let mut body = Body {
            stream: Some(stream),
            buffer,
            framing,
            reusable,
            pool: Some(self.clone()),
        };
        if body.is_end() {
            body.finish();
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn write_new(&self, request: &[u8]) -> Result<Conn, SendError> {
        let mut stream = self.connect().await.map_err(|error| SendError {
            error,
            written: false,
        })?;
        stream
            .write_all(request)
            .await
            .map_err(SendError::written)?;
        Ok(stream)
    }
}

/// Whether a connection is still open, by a non-blocking `MSG_PEEK` (no data, no EOF).
fn peek_open(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut probe = [0u8; 1];
    // SAFETY: recv(2) into a valid one-byte buffer on a socket this function borrows.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            probe.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Reads and parses one response head from `stream`; the bytes after it stay in `buffer`.
fn read_head(stream: &mut Conn, buffer: &mut BytesMut, cx: &mut Context) -> Poll<io::Result<Head>> {
    loop {
        if !buffer.is_empty() {
            if let Some(head) = h1::parse_head(buffer)? {
                return Poll::Ready(Ok(head));
            }
        }
        if ready!(stream.poll_fill(buffer, cx))? == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before it answered",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::UpstreamTls;
    use super::*;

    #[test]
    fn urls_pick_plain_or_tls_and_the_default_port() {
        let none = UpstreamTls::default();
        let plain = Pool::new("http://127.0.0.1/mcp", &none).unwrap();
        assert_eq!(
            (plain.address.as_str(), plain.tls.is_none()),
            ("127.0.0.1:80", true)
        );
        let tls = Pool::new("https://mcp.example.com/mcp?x=1", &none).unwrap();
        assert_eq!(tls.address, "mcp.example.com:443");
        assert_eq!(
            (tls.authority.as_str(), tls.path.as_str()),
            ("mcp.example.com", "/mcp?x=1")
        );
        assert!(
            matches!(&tls.tls, Some((_, ServerName::DnsName(n))) if n.as_ref() == "mcp.example.com")
        );
        let ip = Pool::new("https://[::1]:8443/mcp", &none).unwrap();
        assert!(matches!(&ip.tls, Some((_, ServerName::IpAddress(_)))));
        assert_eq!(ip.address, "[::1]:8443");
    }

    #[test]
    fn bad_urls_and_ca_files_fail_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let error = |url: &str, ca: Option<&std::path::Path>| {
            let tls = UpstreamTls {
                ca_file: ca.map(Into::into),
                client: None,
            };
            format!("{:#}", Pool::new(url, &tls).err().expect(url))
        };
        assert!(error("ftp://h/mcp", None).contains("only http:// and https://"));
        assert!(error("http://h/mcp", Some(&empty)).contains("is not https://"));
        assert!(error("https://h/mcp", Some(&empty)).contains("holds no certificate"));
        let missing = dir.path().join("missing.pem");
        assert!(error("https://h/mcp", Some(&missing)).contains("missing.pem"));
    }
}
